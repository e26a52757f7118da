"""Object stores for the Ray engine: manifests, images and output parts under URIs (``s3://``,
``gs://``, anything ``pyarrow.fs.FileSystem.from_uri`` opens), read and written through pyarrow's
filesystems. No torch here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from facet.atomic import atomic_file
from facet.image_files import ImageError, read_limited
from facet.preprocess import SUFFIXES

from .inputs import (InputError, Inputs, folder_inputs, is_uri, manifest_inputs,
                     read_input_manifest, read_inputs, split_uri)

PART = re.compile(r"part-(\d+)\.parquet")


class Filesystems:
    """One pyarrow filesystem per URI root (``s3://bucket``), opened once. The driver's instance
    travels to the tasks that read images, so they reach the store with the driver's settings
    (endpoint, region; ``AWS_ENDPOINT_URL`` for an S3-compatible store); credentials are each
    node's own, as pyarrow finds them. A root first met in a task is opened there."""

    def __init__(self):
        self.roots: dict[str, tuple[pafs.FileSystem, str]] = {}

    def locate(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path on it) of ``uri``."""
        root, key = split_uri(uri)
        if root not in self.roots:
            try:  # the path pyarrow gives a probe name tells how keys map to its paths
                fs, probe = pafs.FileSystem.from_uri(root + "/x")
            except (ValueError, OSError) as exc:  # ArrowInvalid: an unknown scheme
                raise InputError(f"{uri}: cannot open ({exc})") from None
            self.roots[root] = (fs, probe[:-1])
        fs, prefix = self.roots[root]
        return fs, prefix + key.lstrip("/")

    def read_image(self, uri: str, max_bytes: int) -> bytes:
        """An image's bytes, with the local loader's messages and size limit."""
        fs, path = self.locate(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ImageError("file not found")
        if info.type == pafs.FileType.Directory:
            raise ImageError("is a folder, not an image")
        with fs.open_input_stream(path) as f:
            return read_limited(f, info.size, max_bytes)


def read_source(source: str | Path, images: str | Path | None, path_column: str | None,
                allow_outside: bool, filesystems: Filesystems) -> Inputs:
    """What ``batch.read_inputs`` reads, also under a URI: the competition's eval folder, a CSV
    or Parquet manifest, a folder of images, or one image."""
    if images and is_uri(str(images)):
        filesystems.locate(str(images))  # opened here, so tasks read with the driver's settings
    if not is_uri(str(source)):
        return read_inputs(Path(source), images, path_column, allow_outside)
    source = str(source).rstrip("/")
    fs, path = filesystems.locate(source)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        index = f"{source}/info.csv"
        if fs.get_file_info(filesystems.locate(index)[1]).type == pafs.FileType.File:
            return read_source(index, images or f"{source}/images", path_column, allow_outside,
                               filesystems)
        listing = fs.get_file_info(pafs.FileSelector(path))
        entries = {f"{source}/{os.path.basename(i.path)}": i.type == pafs.FileType.File
                   for i in listing}
        return folder_inputs(source, list(entries), entries.get)
    if kind != pafs.FileType.File:
        raise InputError(f"{source} does not exist")
    if os.path.splitext(source)[1].lower() in SUFFIXES:  # one photo
        return Inputs(pd.DataFrame({"path": [source]}), [source])
    with fs.open_input_file(path) as f:
        frame = read_input_manifest(f, source)
    return manifest_inputs(frame, source, images or source.rsplit("/", 1)[0], path_column,
                           allow_outside)


class PartStore:
    """Numbered Parquet parts (``part-00000.parquet``, ...) under a folder or a URI. A part is
    whole or absent: on a local disk it is written under a temporary name and renamed; in an
    object store it is one object, which appears only once it is complete."""

    def __init__(self, location: str | Path, filesystems: Filesystems):
        self.location = str(location)
        self.local = not is_uri(self.location)
        if self.local:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.location)
            self.fs.create_dir(self.root, recursive=True)
        else:
            self.fs, self.root = filesystems.locate(self.location)

    @staticmethod
    def name(k: int) -> str:
        return f"part-{k:05d}.parquet"

    def _path(self, k: int) -> str:
        return f"{self.root.rstrip('/')}/{self.name(k)}"

    def written(self) -> list[int]:
        """The parts there, by number (temporary files of a killed run are not parts)."""
        listing = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        found = (PART.fullmatch(os.path.basename(i.path)) for i in listing
                 if i.type == pafs.FileType.File)
        return sorted(int(m[1]) for m in found if m)

    def metadata(self, k: int) -> dict[str, str]:
        """A part's key-value metadata (read from its footer only)."""
        meta = pq.read_schema(self._path(k), filesystem=self.fs).metadata or {}
        return {key.decode(): value.decode() for key, value in meta.items()}

    def read(self, k: int, columns: list[str] | None = None) -> pd.DataFrame:
        return pq.read_table(self._path(k), columns=columns, filesystem=self.fs).to_pandas()

    def write(self, k: int, frame: pd.DataFrame, metadata: dict[str, str]) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        with (atomic_file(self._path(k), "wb") if self.local
              else self.fs.open_output_stream(self._path(k))) as f:
            f.write(data)
