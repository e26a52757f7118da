"""What `facet predict` reads: the competition's eval folder or info.csv, a CSV or Parquet
manifest, a folder (local or an object store's), one image; and whether the output can be
written before any work is done. No torch here.
"""
from __future__ import annotations

import mimetypes
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from facet.csvfile import read_csv
from facet.preprocess import SUFFIXES


class InputError(ValueError):
    """The inputs cannot be read at all (as opposed to one bad image)."""


@dataclass
class Inputs:
    frame: pd.DataFrame  # the rows to write back, in their order
    paths: list[Path | str]  # one image per row: a local path, or a URI (str)
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
    chosen = set(images)  # a set: a folder may hold a hundred thousand photos
    skipped = [e for e in entries if e not in chosen and is_file(e)]
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
