"""Uploads to the HTTP service: a request's body read within its limits, its image files, and
their decoding off the event loop (the same decoder as `facet predict`)."""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from starlette.requests import ClientDisconnect, Request

from facet.faces import YuNet
from facet.image_files import ImageError, ImageTooLarge, read_bytes
from facet.preprocess import Photo, pixel_count

from .config import ServeConfig
from .http_errors import CLIENT_CLOSED, HTTPError, log
from .options import Decoder
from .predictor import pack

RAW_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp",
             "application/octet-stream"}
LARGE_NICE = 10  # added to the process's nice value


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request's body, at most ``limit`` bytes, arriving within ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"upload is {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    try:  # a body shorter than its Content-Length, or a trickle, must not hold a connection
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():  # also bounds chunked uploads with no length
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"upload is over the limit of {limit:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, f"the upload did not arrive within {timeout_s:g} s "
                             f"({size:,} bytes received)") from None
    except ClientDisconnect:  # the client's doing, not a server error: no traceback, no 5xx
        log.info("client disconnected during the upload on %s %s (%s bytes received)",
                 request.method, request.url.path, f"{size:,}")
        raise HTTPError(CLIENT_CLOSED, "the client disconnected before the upload was complete"
                        ) from None
    return b"".join(chunks)


async def uploads(request: Request, many: bool, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The uploaded files as (name, bytes): multipart parts, or the raw body for one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data" and (many or content_type not in RAW_TYPES):
        allowed = "multipart/form-data" + ("" if many else ", " + ", ".join(sorted(RAW_TYPES)))
        raise HTTPError(415, f"content type {content_type or '(none)'!r} is not accepted; "
                             f"send {allowed}")
    body = await read_body(request, config.max_upload_bytes, config.body_timeout_s)
    if not body:
        raise HTTPError(400, "empty body: no image was sent")
    if content_type != "multipart/form-data":
        return [("body", body)]
    request._body = body  # Starlette parses the form from this cached body
    try:
        form = await request.form(max_files=config.max_batch_files, max_fields=config.max_batch_files)
    except Exception as exc:  # malformed multipart, too many parts
        raise HTTPError(400, f"could not parse the multipart form: {exc}") from None
    files = [(part.filename or key, await part.read()) for key, part in form.multi_items()
             if hasattr(part, "read")]
    if not files:
        raise HTTPError(400, "the form holds no file: attach the image as a file part")
    if not many and len(files) > 1:
        raise HTTPError(400, f"{len(files)} files sent to /v1/predict; use /v1/predict/batch")
    return files


def read_upload(path: Path, limit: int) -> bytes:
    """An upload BentoML saved to a file, within the upload limit (413 over it). The file is
    deleted once read: BentoML would only empty its request folder after the answer."""
    try:
        return read_bytes(path, limit)
    except ImageTooLarge as exc:
        raise HTTPError(413, f"{path.name}: {exc}") from None
    except ImageError as exc:
        raise HTTPError(422, f"{path.name}: {exc}") from None
    finally:
        path.unlink(missing_ok=True)


class Decoding:
    """Uploads decoded off the event loop, on threads of their own; photos over
    ``large_pixels`` on threads of lower priority, so they take only the CPU the other
    requests leave; with ``offload_pixels`` set, smaller ones without detection inline."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="facet-decode")
        self.large_pool = ThreadPoolExecutor(config.decode_threads,
                                             thread_name_prefix="facet-decode-large",
                                             initializer=_lower_priority)

    async def __call__(self, name: str, data: bytes, decoder: Decoder,
                       detector: YuNet | None) -> tuple[Photo, np.ndarray]:
        """One upload -> its faces and their packed model inputs, one row per answered face
        (the ``max_faces`` largest; ``Decoder.decode``, as `facet predict --faces all`)."""
        if not data:
            raise HTTPError(400, f"{name}: empty file")
        pixels = pixel_count(data)
        if detector is None and pixels <= self.config.offload_pixels:
            return decode_now(name, data, decoder, detector)
        pool = self.large_pool if pixels > self.config.large_pixels else self.pool
        return await asyncio.get_running_loop().run_in_executor(
            pool, decode_now, name, data, decoder, detector)


def decode_now(name: str, data: bytes, decoder: Decoder,
               detector: YuNet | None) -> tuple[Photo, np.ndarray]:
    try:
        photo = decoder.decode(data, detector, every=True)
    except ImageTooLarge as exc:
        raise HTTPError(413, f"{name}: {exc}") from None
    except ImageError as exc:
        raise HTTPError(422, f"{name}: {exc}") from None
    return photo, np.stack([pack(inputs) for inputs in photo.inputs])


def _lower_priority() -> None:
    """A large photo's decoding takes only the CPU that the other requests leave (Linux: a
    thread has its own nice value)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread,
                       min(19, os.getpriority(os.PRIO_PROCESS, thread) + LARGE_NICE))
    except (AttributeError, OSError):  # elsewhere: the same threads at normal priority
        pass
