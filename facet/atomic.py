"""Files that readers see whole or not at all: written under a temporary name beside the
target (``.<name>.<random>.tmp``, same folder, so same file system), then renamed over it with
``os.replace``; the temporary file is removed when writing fails.

Every atomic write of facet goes through :func:`atomic_path`. No third-party imports: the
serving path, training and export all use it.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def atomic_path(path: str | Path, tmp_name: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (by name: any library that
    takes a file name); renamed to ``path`` when the block ends, removed if it raises.

    The temporary file is created empty, with the permissions a plain ``open`` gives (the
    umask applies). ``tmp_name``: a fixed name instead of a fresh one, for a writer that
    records its file's name inside the file (``torch.save`` names its archive after it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create(path, tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """:func:`atomic_path` opened in ``mode`` (``"w"`` text, newlines as given; ``"wb"``)."""
    with atomic_path(path) as tmp, open(tmp, mode, newline=None if "b" in mode else "") as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: str | Path, data, indent: int | None = 2) -> None:
    """``json.dumps(data, indent=indent)``, no newline at the end."""
    write_text(path, json.dumps(data, indent=indent))


def write_csv(path: str | Path, frame: "pd.DataFrame | Iterable[pd.DataFrame]") -> None:
    """A CSV without the index. ``frame`` may be a stream of frames with the same columns,
    written one after another (one header)."""
    import pandas as pd

    with atomic_file(path) as f:
        for k, piece in enumerate([frame] if isinstance(frame, pd.DataFrame) else frame):
            piece.to_csv(f, index=False, header=k == 0)


def _create(path: Path, tmp_name: str | None) -> Path:
    if tmp_name is not None:  # a fixed name: a leftover of a crashed write is overwritten
        tmp = path.with_name(tmp_name)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        return tmp
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")
