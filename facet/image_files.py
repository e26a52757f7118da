"""Opening image files: only regular files are read (never a pipe, device or folder), never more
than a byte limit, and a header is read without the rest of the file. Shared by the loader
(:mod:`facet.preprocess`), the manifests' box checks and the photo peek of `facet predict`."""
from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

from PIL import Image

MAX_BYTES = 50 * 1024 * 1024  # the largest image file read (ImageRules.max_bytes)
HEADER_BYTES = 64 * 1024  # holds the size of a PNG, WebP or BMP, and of most JPEGs (after EXIF)
# Pillow's own bomb check raises inside Image.open (from ~179 MP) before a caller can look at
# the header; ImageRules.max_pixels is checked from the header instead, for every image.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An input that is not a usable image; the message says why."""


class ImageTooLarge(ImageError):
    """More bytes or pixels than allowed: refused before decoding (decompression bombs)."""


def read_bytes(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A regular file's bytes. FIFOs, devices and folders are refused without reading (a named
    pipe would block, /dev/zero never ends); links are followed to what they name."""
    with _regular_file(path) as (f, size):
        return read_limited(f, size, max_bytes)


def header_size(path: str | Path) -> tuple[int, int] | None:
    """An image file's (width, height) as the loader gives it (EXIF orientation
    applied), from the first ``HEADER_BYTES`` alone, under the same file rules as
    ``read_bytes``; None when that is not a readable header."""
    try:
        with _regular_file(path) as (f, _):
            head = f.read(HEADER_BYTES)
        image = Image.open(io.BytesIO(head))
    except Exception:  # noqa: BLE001 - unreadable: decoding it names why
        return None
    try:  # a JPEG's EXIF is in its header; another format may keep it after the pixels
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001
        turned = False
    width, height = image.size
    return (height, width) if turned else (width, height)


@contextlib.contextmanager
def _regular_file(path: str | Path):
    """(open binary file, its size) for a regular file; ImageError for anything else."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}") from None
    except ValueError:  # a NUL byte in the path
        raise ImageError("not a valid path") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("is a folder, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file (a pipe, device or socket): refused")
        with open(fd, "rb", closefd=False) as f:
            yield f, st.st_size
    finally:
        os.close(fd)


def read_limited(stream, size: int, max_bytes: int = MAX_BYTES) -> bytes:
    """An open file's bytes, refused from its ``size`` before reading when over ``max_bytes``,
    and never more than ``max_bytes`` read (a file may grow while it is read)."""
    if size > max_bytes:
        raise ImageTooLarge(f"file is {size:,} bytes, over the limit of {max_bytes:,}")
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"file is over the limit of {max_bytes:,} bytes")
    return data
