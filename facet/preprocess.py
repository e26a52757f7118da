"""The one definition of image preprocessing, shared by training, export and serving.

Only numpy, OpenCV and Pillow: the serving path must not import torch.
Images are RGB uint8 HWC until :func:`normalize`, which yields float32 NCHW.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Decompression-bomb guard: images with more pixels than this are refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
RESIZE_MODES = ("stretch", "letterbox")

# OpenCV decodes JPEG ~2x faster than Pillow and can decode at 1/2, 1/4, 1/8 scale for free.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
            (2, cv2.IMREAD_REDUCED_COLOR_2))


class ImageError(ValueError):
    """An input that is not a usable image; the message says why."""


class ImageTooLarge(ImageError):
    """More pixels than allowed: refused before decoding (decompression bombs)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input: size (height, width), resize mode, mean, std."""

    height: int = 128
    width: int = 128
    resize_mode: str = "stretch"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(int(d["height"]), int(d["width"]), str(d["resize_mode"]),
                   tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))


def read_image(source: bytes | str | Path, min_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/... bytes or a file into RGB uint8 HWC, EXIF orientation applied.

    ``min_side``: the caller only needs this many pixels on the short side, so large JPEGs may
    be decoded at a reduced scale. Raises :class:`ImageError` for empty, non-image, truncated
    or oversized input.
    """
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if not data:
        raise ImageError("empty input: no image bytes")
    try:
        header = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ImageError("not a recognised image (JPEG, PNG, WebP, BMP, ...)") from None
    except OSError as exc:  # a header cut short
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    width, height = header.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height:,} pixels, "
                         f"over the limit of {max_pixels:,}")
    if header.format == "JPEG" and header.mode in ("RGB", "L"):
        return _decode_jpeg(data, header, min_side)
    return _decode_pillow(header)


def _decode_jpeg(data: bytes, header: Image.Image, min_side: int | None) -> np.ndarray:
    # libjpeg fills a cut-off JPEG with grey and only warns; the end-of-image marker tells.
    if not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise ImageError("truncated JPEG: no end-of-image marker")
    flags = cv2.IMREAD_COLOR
    if min_side:
        short = min(header.size)
        flags = next((f for k, f in _REDUCED if short // k >= min_side), cv2.IMREAD_COLOR)
    # Orientation is applied below from Pillow's reading of EXIF, the same for every decoder.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ImageError("corrupt JPEG: could not be decoded")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _orient(rgb, header.getexif().get(0x0112, 1))


def _decode_pillow(image: Image.Image) -> np.ndarray:
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, rgba)
        return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for broken files
        raise ImageError(f"corrupt or truncated image: {exc}") from None


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to an HWC array."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 1)[::-1], 8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(rgb)) if op else rgb


def resize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 HWC -> (spec.height, spec.width, 3) uint8."""
    h, w = rgb.shape[:2]
    if spec.resize_mode == "stretch":
        return _resize_to(rgb, spec.height, spec.width)
    scale = min(spec.height / h, spec.width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((spec.height, spec.width, 3), np.uint8)
    top, left = (spec.height - nh) // 2, (spec.width - nw) // 2
    out[top:top + nh, left:left + nw] = _resize_to(rgb, nh, nw)
    return out


def _resize_to(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = height < rgb.shape[0] or width < rgb.shape[1]
    # cv2 takes (width, height): the H/W swap the competition's baseline got wrong.
    return cv2.resize(rgb, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalize(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N)HWC RGB -> float32 (N)CHW, (x / 255 - mean) / std."""
    std, mean = np.asarray(spec.std, np.float32), np.asarray(spec.mean, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
    bias = (-mean / std).astype(np.float32).reshape(3, 1, 1)
    # Transpose the uint8 pixels, then convert: transposing the 4x larger float array instead
    # was 5-6x slower (benchmarks/preprocess_bench.py), for the same values.
    chw = np.ascontiguousarray(images.transpose((0, 3, 1, 2) if images.ndim == 4 else (2, 0, 1)))
    out = np.multiply(chw, scale, dtype=np.float32)
    out += bias
    return out


def load(source: bytes | str | Path, spec: PreprocessSpec,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and resize: the uint8 model-sized image that training caches and serving batches."""
    return resize(read_image(source, min_side=min(spec.height, spec.width),
                             max_pixels=max_pixels), spec)
