"""Run folders in an object store (``s3://``, ``gs://``: what pyarrow opens, as for the Ray
inference engine) for `facet train --engine ray`. A run trains in a folder on its node's disk
that mirrors its place in the store: pulled before it starts (a resumed run's last.pt), pushed
after every epoch and at its end, so a stopped command resumes from the store. The command
keeps its own files (runs.json, cv.json, oof.csv) in a local mirror of the root the same way.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from facet.serve.storage import Filesystems


class Mirror:
    """A temporary local folder (``local``, removed by :meth:`close` or at exit) that mirrors
    ``uri``: :meth:`pull` copies a file or folder of it from the store, :meth:`push` back."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.root = Filesystems().locate(self.uri)
        self.disk = pafs.LocalFileSystem()
        self._scratch = tempfile.TemporaryDirectory(prefix="facet-run-")
        self.local = Path(self._scratch.name)

    def where(self, path: Path) -> str:
        """The place in the store of a path in the mirror."""
        relative = path.relative_to(self.local).as_posix()
        return self.uri if relative == "." else f"{self.uri}/{relative}"

    def _remote(self, path: Path) -> str:
        relative = path.relative_to(self.local).as_posix()
        return self.root.rstrip("/") + ("" if relative == "." else f"/{relative}")

    def pull(self, path: Path | None = None) -> None:
        """The store's copy of ``path`` (default: all of the mirror), when it has one."""
        path = path or self.local
        kind = self.fs.get_file_info(self._remote(path)).type
        if kind == pafs.FileType.NotFound:
            return
        (path if kind == pafs.FileType.Directory else path.parent).mkdir(parents=True,
                                                                        exist_ok=True)
        pafs.copy_files(self._remote(path), str(path), source_filesystem=self.fs,
                        destination_filesystem=self.disk)

    def push(self, path: Path | None = None) -> None:
        """``path`` (default: all of the mirror) copied to the store, when it exists."""
        path = path or self.local
        if path.exists():
            pafs.copy_files(str(path), self._remote(path), source_filesystem=self.disk,
                            destination_filesystem=self.fs)

    def close(self) -> None:
        self._scratch.cleanup()
