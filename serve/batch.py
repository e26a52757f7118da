"""Batch CSV inference: decode in a thread pool while onnxruntime runs the previous batch.

No torch here: numpy, OpenCV/Pillow and onnxruntime only.
"""
from __future__ import annotations

import mimetypes
import os
import posixpath
import re
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from facet.atomic import write_csv
from facet.combine import ATTRIBUTES, class_names
from facet.csvfile import read_csv
from facet.faces import Face
from facet.preprocess import SUFFIXES, ImageError
from facet.progress import progress_bar

from .predictor import Predictor
from .results import BatchResult, Collector, FaceAnswer


class InputError(ValueError):
    """The inputs cannot be read at all (as opposed to one bad image)."""


@dataclass
class Inputs:
    frame: pd.DataFrame  # the rows to write back, in their order
    paths: list[Path | str]  # one image per row: a local path, or a URI (str)
    answer_column: str = "ans"
    refused: dict[int, str] = field(default_factory=dict)  # row -> why it is not even read
    skipped: list[Path | str] = field(default_factory=list)  # a folder's files that are not images


def read_inputs(source: Path, images: Path | str | None = None, path_column: str | None = None,
                allow_outside: bool = False) -> Inputs:
    """The competition's eval folder or info.csv, any CSV or Parquet manifest with a path
    column, a folder, or one image file.

    A manifest's relative paths must stay inside the images folder (``../../etc/passwd`` is
    refused per row) unless ``allow_outside``; absolute paths are explicit and allowed.
    ``images`` may be an object-store URI (``s3://bucket/images``).
    """
    source = Path(source)
    if source.is_dir() and (source / "info.csv").exists():
        return read_inputs(source / "info.csv", images or source / "images", path_column,
                           allow_outside)
    if source.is_dir():
        return folder_inputs(source, list(source.iterdir()), Path.is_file)
    if not source.is_file():
        raise InputError(f"{source} does not exist")
    if source.suffix.lower() in SUFFIXES:  # one photo
        return Inputs(pd.DataFrame({"path": [str(source)]}), [source])
    return manifest_inputs(read_input_manifest(source), source, images or source.parent,
                           path_column, allow_outside)


def folder_inputs(source, entries: list, is_file: Callable[[Path | str], bool]) -> Inputs:
    """A folder's images in name order. Images in a format the loader does not read (GIF, TIFF,
    HEIC, ...) are rows with an error, as a manifest row naming them is; other files are listed
    as skipped, not read. ``entries``: the folder's paths (local or URIs); ``is_file(entry)``
    says which are files."""
    entries = sorted(e for e in entries if not _name(e).startswith("."))
    images = [e for e in entries
              if _suffix(e) in SUFFIXES or (_other_image(e) is not None and is_file(e))]
    if not images:
        raise InputError(f"{source} holds no images ({', '.join(SUFFIXES)})")
    refused = {i: f"{kind} is not read: convert it to JPEG, PNG, WebP or BMP"
               for i, e in enumerate(images) if (kind := _other_image(e))}
    skipped = [e for e in entries if e not in images and is_file(e)]
    return Inputs(pd.DataFrame({"path": [str(f) for f in images]}), images, refused=refused,
                  skipped=skipped)


def _other_image(path) -> str | None:
    """'a GIF image' for an image file (by its name) that the loader does not read; else None."""
    if _suffix(path) in SUFFIXES:
        return None
    kind = mimetypes.guess_type(_name(path))[0] or ""
    return f"a {_suffix(path)[1:].upper()} image" if kind.startswith("image/") else None


def read_input_manifest(source, name: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet manifest (a path or an open file; ``name`` for messages) with every
    column as text, so that the rows are written back as they were read."""
    name = str(name or source)
    if not name.lower().endswith(".parquet"):
        return read_csv(source, InputError, name=name, dtype=str, keep_default_na=False)
    try:
        frame = pd.read_parquet(source)
    except ImportError:
        raise InputError(f"{name}: reading Parquet needs pyarrow: "
                         "pip install 'facet[ray]'") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{name}: not a readable Parquet file ({exc})") from None
    return frame.astype(object).where(frame.notna(), "").astype(str)


def manifest_inputs(frame: pd.DataFrame, source, base: Path | str, path_column: str | None = None,
                    allow_outside: bool = False) -> Inputs:
    """A manifest's rows, each image resolved against ``base`` (a folder or a URI prefix)."""
    column = path_column or next((c for c in ("ImageID", "path", "image", "file")
                                  if c in frame.columns), None)
    if column is None or column not in frame.columns:
        raise InputError(f"{source}: no image column (ImageID, path, image or file; or give "
                         f"--path-column); columns are {list(frame.columns)}")
    base = base if is_uri(base) else Path(base)
    names = frame[column]
    refused = {i: f"{name!r} leads outside the images folder {base} (--allow-outside allows it)"
               for i, name in enumerate(names) if not allow_outside and _leaves(base, name)}
    refused.update({i: "empty path" for i, name in enumerate(names) if not name.strip()})
    return Inputs(frame, [_join(base, name) for name in names], refused=refused)


_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_uri(path) -> bool:
    """``s3://...``, ``gs://...``: anything with a scheme (local paths are never given one)."""
    return isinstance(path, str) and _URI.match(path) is not None


def _name(path) -> str:
    return posixpath.basename(str(path))


def _suffix(path) -> str:
    return posixpath.splitext(_name(path))[1].lower()


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``s3://bucket``, ``/a/b``)."""
    scheme, _, rest = uri.partition("://")
    authority, slash, key = rest.partition("/")
    return f"{scheme}://{authority}", "/" + key.strip("/") if slash else "/"


def _join(base: Path | str, name: str) -> Path | str:
    if is_uri(name):
        return name
    if is_uri(base) and not os.path.isabs(name):
        root, key = split_uri(base)
        return root + posixpath.normpath(posixpath.join(key, name))
    return Path(base) / name


def _leaves(base: Path | str, name: str) -> bool:
    """Whether a relative ``name`` leads outside ``base`` (URIs and absolute paths are explicit)."""
    if is_uri(name) or os.path.isabs(name):
        return False
    inside = split_uri(base)[1] if is_uri(base) else os.path.abspath(base)
    return os.path.commonpath([inside, os.path.normpath(os.path.join(inside, name))]) != inside


def predict_paths(predictor: Predictor, paths: list[Path], batch_size: int = 64,
                  workers: int = 2, progress: bool = True,
                  refused: dict[int, str] | None = None, every: bool = False) -> BatchResult:
    """Predict every path; a row that cannot be read (or is in ``refused``) gets an error.

    A row's answer is its photo's primary face (or the fallback region when no face is
    found); with ``every``, each face of each photo is answered too (``BatchResult.faces``).
    """
    n, refused = len(paths), refused or {}
    collected = Collector(n)

    def load_chunk(start: int):
        stop, loaded = min(start + batch_size, n), []
        for i in range(start, stop):
            if i in refused:
                collected.fail(i, refused[i])
                continue
            try:
                loaded.append((i, predictor.load(paths[i], every)))
            except (ImageError, OSError) as exc:
                collected.fail(i, str(exc))
        return stop - start, loaded

    bar = progress_bar(total=n, unit="img", desc="predicting", disable=not progress,
                       dynamic_ncols=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        starts = iter(range(0, n, batch_size))
        for start in starts:  # keep a few batches decoding ahead of the models
            pending.append(pool.submit(load_chunk, start))
            if len(pending) > workers + 1:
                break
        while pending:
            size, loaded = pending.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(load_chunk, nxt))
            if loaded:
                # one model row per answered face; a row's answer is its primary face's
                owners = [(i, photo, k) for i, photo in loaded for k in photo.answered]
                out = predictor.predict(Predictor.stack(
                    [inputs for _, photo in loaded for inputs in photo.inputs]))
                first = [j for j, (_, photo, k) in enumerate(owners) if k == photo.primary]
                photos = [owners[j][1] for j in first]
                collected.put([owners[j][0] for j in first],
                              {a: p[first] for a, p in out.attributes.items()}, out.probs[first],
                              [photo.face_found for photo in photos],
                              [photo.face(photo.primary) for photo in photos])
                if every:
                    collected.faces += [
                        FaceAnswer(i, k, photo.face(k), k == photo.primary,
                                   {a: p[j] for a, p in out.attributes.items()}, out.probs[j])
                        for j, (i, photo, k) in enumerate(owners)]
            bar.update(size)
    bar.close()
    return collected.result(paths)


def check_writable(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written (a folder, a parent that is a file,
    no permission, an existing file that is read-only or immutable), instead of after
    predicting every image. Checked the way ``facet.atomic`` writes: a temporary file beside
    ``path``, then (when ``path`` exists) replacing it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder: give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"cannot write {path}: {path.parent} is not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    if path.is_file() and not path.is_symlink():  # the rename replaces a link, not its target
        try:  # opened for append, not truncated: an immutable (chattr +i) file refuses this
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as exc:
            raise InputError(f"cannot write {path}: the file exists and cannot be replaced "
                             f"({exc.strerror or exc}); is it read-only or immutable?") from None


def write_atomic(frame: pd.DataFrame | Iterable[pd.DataFrame], path: Path) -> None:
    """Write a CSV so that readers see the old file or the whole new one, never half
    (:func:`facet.atomic.write_csv`, frame first). ``frame`` may be a stream of frames with
    the same columns, written one after another."""
    write_csv(path, frame)


def submission(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    """The input rows with the answer column filled; failed rows are left empty, never guessed."""
    out = inputs.frame.copy()
    out[inputs.answer_column] = [str(v) if v >= 0 else "" for v in result.labels]
    return out


def details(inputs: Inputs, result: BatchResult, faces: bool | None = None) -> pd.DataFrame:
    """One line per row: its answer, probabilities, primary face (when faces are detected, or
    when ``faces`` says so: the columns of a part of the rows must not depend on its rows)
    and error."""
    out = pd.DataFrame({"path": [str(p) for p in inputs.paths]})
    if faces if faces is not None else any(found is not None for found in result.face_found):
        out["face_found"] = [_flag(found) for found in result.face_found]
        out = pd.concat([out, _face_columns(result.primary)], axis=1)
    out = pd.concat([out, _answers(result.labels, result.probs, result.attributes)], axis=1)
    out["error"] = ""
    for i, _, message in result.errors:
        out.loc[i, "error"] = message
    return out


def face_details(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    """One line per answered face (``face`` -1: no face found, the fallback region answered),
    and one per failed row with its error."""
    answers = sorted(result.faces, key=lambda f: (f.row, f.index))
    rows = [f.row for f in answers]
    out = pd.DataFrame({"path": [str(inputs.paths[i]) for i in rows],
                        "face": [f.index for f in answers],
                        "primary": [_flag(f.primary) for f in answers],
                        "face_found": [_flag(result.face_found[i]) for i in rows]})
    probs = np.array([f.probs for f in answers], np.float32).reshape(len(answers), len(class_names()))
    attributes = {a: np.array([f.attributes[a] for f in answers], np.float32).reshape(len(answers), len(c))
                  for a, c in ATTRIBUTES.items()}
    errors = [f.error for f in answers]  # a face the models answered NaN: no label
    labels = np.where([bool(e) for e in errors], -1, np.nan_to_num(probs).argmax(1)).astype(int)
    out = pd.concat([out, _face_columns([f.face for f in answers], landmarks=True),
                     _answers(labels, probs, attributes)], axis=1)
    out["error"] = errors
    failed = pd.DataFrame({"path": [p for _, p, _ in result.errors], "face": -1,
                           "error": [m for _, _, m in result.errors]})
    order = rows + [i for i, _, _ in result.errors]
    merged = pd.concat([out, failed], ignore_index=True) if len(failed) else out
    return merged.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _flag(found: bool | None) -> str:
    """Booleans as JSON spells them (true/false), in every CSV; empty: not applicable."""
    return "" if found is None else str(bool(found)).lower()


def _face_columns(faces: list[Face | None], landmarks: bool = False) -> pd.DataFrame:
    """Box (x, y, w, h in the photo's pixels), detector score and, optionally, the five
    landmarks; empty where there is no face."""
    names = ["face_x", "face_y", "face_w", "face_h", "face_score"]
    values = [[*f.box, f.score] if f else [np.nan] * 5 for f in faces]
    if landmarks:
        names += [f"{p}_{c}" for p in ("right_eye", "left_eye", "nose", "mouth_right",
                                       "mouth_left") for c in "xy"]
        values = [v + ([c for point in f.landmarks for c in point]
                       if f and len(f.landmarks) == 5 else [np.nan] * 10)
                  for v, f in zip(values, faces)]
    return pd.DataFrame(np.array(values, np.float64).reshape(len(faces), len(names)),
                        columns=names).round(2)


def _answers(labels: np.ndarray, probs: np.ndarray, attributes: dict[str, np.ndarray]
             ) -> pd.DataFrame:
    names = class_names()
    ok = labels >= 0
    out = pd.DataFrame({"label": np.where(ok, labels, -1)})
    out["class"] = [names[v] if v >= 0 else "" for v in labels]
    out["confidence"] = np.where(ok, probs[np.arange(len(ok)), labels.clip(0)], np.nan)
    for a, classes in ATTRIBUTES.items():
        p = attributes[a]
        out[a] = [classes[int(row.argmax())] if good else "" for row, good in zip(p, ok)]
        for k, c in enumerate(classes):
            out[f"p_{a}_{c}"] = p[:, k].round(6)
    return out


def errors_frame(errors: list[tuple[int, str, str]]) -> pd.DataFrame:
    """One line per failed image (``BatchResult.errors``); ``row`` counts data rows from 1, as
    a spreadsheet shows them."""
    return pd.DataFrame([(i + 1, p, m) for i, p, m in errors], columns=["row", "path", "error"])
