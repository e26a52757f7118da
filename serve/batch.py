"""Batch CSV inference: decode in a thread pool while onnxruntime runs the previous batch.

No torch here: numpy, OpenCV/Pillow and onnxruntime only.
"""
from __future__ import annotations

import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from facet.combine import ATTRIBUTES, class_names
from facet.csvfile import read_csv
from facet.preprocess import SUFFIXES, ImageError

from .predictor import Predictor


class InputError(ValueError):
    """The inputs cannot be read at all (as opposed to one bad image)."""


@dataclass
class Inputs:
    frame: pd.DataFrame  # the rows to write back, in their order
    paths: list[Path]  # one image per row
    answer_column: str = "ans"
    refused: dict[int, str] = field(default_factory=dict)  # row -> why it is not even read
    skipped: list[Path] = field(default_factory=list)  # files in a folder that are not images


def read_inputs(source: Path, images: Path | None = None, path_column: str | None = None,
                allow_outside: bool = False) -> Inputs:
    """The competition's eval folder or info.csv, any CSV with a path column, or a folder.

    A CSV's relative paths must stay inside the images folder (``../../etc/passwd`` is refused
    per row) unless ``allow_outside``; absolute paths are explicit and allowed.
    """
    source = Path(source)
    if source.is_dir() and (source / "info.csv").exists():
        return read_inputs(source / "info.csv", images or source / "images", path_column,
                           allow_outside)
    if source.is_dir():
        entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        files = [p for p in entries if p.suffix.lower() in SUFFIXES]
        if not files:
            raise InputError(f"{source} holds no images ({', '.join(SUFFIXES)})")
        skipped = [p for p in entries if p.suffix.lower() not in SUFFIXES and p.is_file()]
        return Inputs(pd.DataFrame({"path": [str(f) for f in files]}), files, skipped=skipped)
    if not source.is_file():
        raise InputError(f"{source} does not exist")
    frame = read_csv(source, InputError, dtype=str, keep_default_na=False)
    column = path_column or next((c for c in ("ImageID", "path", "image", "file")
                                  if c in frame.columns), None)
    if column is None or column not in frame.columns:
        raise InputError(f"{source}: no image column (ImageID, path, image or file; or give "
                         f"--path-column); columns are {list(frame.columns)}")
    base = Path(images or source.parent)
    paths = [base / p for p in frame[column]]
    inside = os.path.abspath(base)
    refused = {i: f"{name!r} leads outside the images folder {base} (--allow-outside allows it)"
               for i, name in enumerate(frame[column])
               if not allow_outside and not os.path.isabs(name)
               and os.path.commonpath([inside, os.path.abspath(base / name)]) != inside}
    refused.update({i: "empty path" for i, name in enumerate(frame[column]) if not name.strip()})
    return Inputs(frame, paths, refused=refused)



@dataclass
class BatchResult:
    labels: np.ndarray  # (N,) int, -1 where the image failed
    attributes: dict[str, np.ndarray]  # name -> (N, k), NaN rows for failures
    probs: np.ndarray  # (N, 18)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (row, path, message)


def predict_paths(predictor: Predictor, paths: list[Path], batch_size: int = 64,
                  workers: int = 2, progress: bool = True,
                  refused: dict[int, str] | None = None) -> BatchResult:
    """Predict every path; a row that cannot be read (or is in ``refused``) gets an error."""
    n, refused = len(paths), refused or {}
    labels = np.full(n, -1, np.int64)
    attributes = {a: np.full((n, len(c)), np.nan, np.float32) for a, c in ATTRIBUTES.items()}
    probs = np.full((n, len(class_names())), np.nan, np.float32)
    errors: list[tuple[int, str, str]] = []

    def load_chunk(start: int):
        stop, loaded = min(start + batch_size, n), []
        for i in range(start, stop):
            if i in refused:
                errors.append((i, str(paths[i]), refused[i]))
                continue
            try:
                loaded.append((i, predictor.load(paths[i])))
            except (ImageError, OSError) as exc:
                errors.append((i, str(paths[i]), str(exc)))
        return stop - start, loaded

    bar = tqdm(total=n, unit="img", desc="predicting", disable=not progress, dynamic_ncols=True)
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
                rows = np.array([i for i, _ in loaded])
                out = predictor.predict(Predictor.stack([item for _, item in loaded]))
                labels[rows] = out.labels
                probs[rows] = out.probs
                for a in attributes:
                    attributes[a][rows] = out.attributes[a]
            bar.update(size)
    bar.close()
    return BatchResult(labels, attributes, probs, sorted(errors))


def check_writable(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written (a folder, a parent that is a file,
    no permission), instead of after predicting every image."""
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


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV so that readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            frame.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def submission(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    """The input rows with the answer column filled; failed rows are left empty, never guessed."""
    out = inputs.frame.copy()
    out[inputs.answer_column] = [str(v) if v >= 0 else "" for v in result.labels]
    return out


def details(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    names = class_names()
    ok = result.labels >= 0
    out = pd.DataFrame({"path": [str(p) for p in inputs.paths]})
    out["label"] = np.where(ok, result.labels, -1)
    out["class"] = [names[v] if v >= 0 else "" for v in result.labels]
    out["confidence"] = np.where(ok, result.probs[np.arange(len(ok)), result.labels.clip(0)], np.nan)
    for a, classes in ATTRIBUTES.items():
        p = result.attributes[a]
        out[a] = [classes[int(row.argmax())] if good else "" for row, good in zip(p, ok)]
        for k, c in enumerate(classes):
            out[f"p_{a}_{c}"] = p[:, k].round(6)
    out["error"] = ""
    for i, _, message in result.errors:
        out.loc[i, "error"] = message
    return out


def errors_frame(result: BatchResult) -> pd.DataFrame:
    """One line per failed image; ``row`` counts data rows from 1, as a spreadsheet shows them."""
    return pd.DataFrame([(i + 1, p, m) for i, p, m in result.errors],
                        columns=["row", "path", "error"])
