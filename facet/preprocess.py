"""The one definition of image loading and preprocessing, shared by training, export and serving.

Only numpy, OpenCV, Pillow and simplejpeg: the serving path must not import torch.
Images are RGB uint8 HWC until :func:`normalize`, which yields float32 NCHW.

:func:`read_image` is the one image loader, and :class:`ImageRules` its bad-input rules:
training skips (and counts) exactly the files that `facet predict` and the HTTP service refuse.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from .faces import (FALLBACKS, PRIMARY_RULE, Detector, Face, crop_box, cut, cut_square,
                    default_detector, fallback_box, image_face, primary)
from .image_files import MAX_BYTES, ImageError, ImageTooLarge, read_bytes

RESIZE_MODES = ("stretch", "letterbox")
CROPS = ("none", "face")
#: What the loader decodes. MPO is the multi-picture JPEG that many phone cameras write.
FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP"}
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# faces answered per photo (the largest): one value for `facet predict`, Ray and HTTP, so a
# crowded photo gets the same answers everywhere
MAX_FACES = 64


@dataclass(frozen=True)
class ImageRules:
    """What the loader accepts. Sizes come from the header, before any pixel is decoded.

    ``min_side`` and ``max_aspect`` refuse what cannot be a face (a 1x1 pixel, a 3x5000 strip)
    instead of stretching it into a confident answer.
    """

    max_bytes: int = MAX_BYTES
    max_pixels: int = 40_000_000
    min_side: int = 16
    max_aspect: float = 5.0

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} = {width * height:,} pixels, over "
                                f"the pixel limit of {self.max_pixels:,}")
        if 0 < min(width, height) and max(width, height) > self.max_aspect * min(width, height):
            raise ImageError(f"image is {width}x{height}: aspect ratio "
                             f"{max(width, height) / min(width, height):.1f} is over the "
                             f"maximum of {self.max_aspect:g} for a face")
        if min(width, height) < self.min_side:
            raise ImageError(f"image is {width}x{height}: under the minimum side of "
                             f"{self.min_side} px for a face")


DEFAULT_RULES = ImageRules()
#: The crop rule's square, in face-box sides: 2.0 gave the best photo -> mask F1 of 1.4, 1.6
#: and 2.0 (BENCHMARKS.md); the recipes' ``crop_margin`` defaults to it.
CROP_MARGIN = 2.0


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input: the crop, size (height, width), resize mode, mean, std.

    ``crop``: ``none`` takes the image as a face crop already; ``face`` detects faces and cuts
    each one out by the crop rule (``faces.crop_box``: a square ``margin`` x the face box),
    or, when none is found, the ``fallback``: ``frame`` (the image as one face filling it, cut
    by the same rule: framed as training frames faces), the ``whole`` image stretched to the
    input, or its ``center`` square. Models exported before ``frame`` existed keep ``whole``.
    """

    height: int = 128
    width: int = 128
    resize_mode: str = "stretch"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop: str = "none"
    margin: float = CROP_MARGIN
    fallback: str = "frame"

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if not 0.5 <= self.margin <= 4:
            raise ValueError(f"margin must be between 0.5 and 4 (x the face box), got {self.margin}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """Models exported before faces were cropped have no crop fields (crop=none); every
        crop=face model's metadata names its fallback (``whole`` before ``frame`` existed)."""
        return cls(int(d["height"]), int(d["width"]), str(d["resize_mode"]),
                   tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]),
                   str(d.get("crop", "none")), float(d.get("margin", CROP_MARGIN)),
                   str(d.get("fallback", "whole")))


def read_image(source: bytes | str | Path, rules: ImageRules = DEFAULT_RULES,
               decode_side: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes or a file into RGB uint8 HWC, EXIF orientation applied.

    ``decode_side``: the caller needs only this many pixels on the short side, so a large JPEG
    may be decoded at 1/2, 1/4 or 1/8 scale. Raises :class:`ImageError` (or
    :class:`ImageTooLarge`) for anything that breaks ``rules``, is not an image, or is
    truncated or corrupt: never a guess from a partial decode.
    """
    return _read_scales(source, rules, [decode_side])[decode_side]


@dataclass
class Photo:
    """A decoded photo's faces and the model inputs cut from it.

    ``inputs[k]`` ({spec: uint8 HWC}) answers for face ``answered[k]`` (an index into
    ``faces``), or, when ``answered[k]`` is -1, for the fallback region (no face was found) or
    the whole image (no model crops faces: ``face_found`` is None, no detection ran).
    """

    width: int
    height: int
    faces: list[Face]
    primary: int
    answered: list[int]
    inputs: list[dict[PreprocessSpec, np.ndarray]]
    face_found: bool | None

    def face(self, k: int) -> Face | None:
        """Face ``k`` (an index into ``faces``; -1: none, the fallback region answers)."""
        return self.faces[k] if k >= 0 else None


def decode_faces(source: bytes | str | Path, specs: list[PreprocessSpec],
                 rules: ImageRules = DEFAULT_RULES, detector: Detector | None = None,
                 every: bool = False, primary_rule: str = PRIMARY_RULE,
                 max_faces: int = MAX_FACES) -> Photo:
    """Decode once, detect once (when a spec crops faces), and cut each spec's input for the
    primary face, or for each of the ``max_faces`` largest faces when ``every``.

    A spec with ``crop: none`` sees the whole image for every face, exactly what :func:`load`
    gives it (the pixels it was trained on); such specs whose size allows the same JPEG
    reduction share one decode. Faces are listed best score first; with no face each cropping
    spec gets its ``fallback`` region and ``face_found`` is False, never a silent guess.
    """
    cropping = [s for s in specs if s.crop == "face"]
    whole = [min(s.height, s.width) for s in specs if s.crop == "none"]
    rgb = _read_scales(source, rules, [None, *whole] if cropping else whole)
    if not cropping:
        inputs = {s: resize(rgb[min(s.height, s.width)], s) for s in specs}
        full = rgb[whole[0]]
        return Photo(full.shape[1], full.shape[0], [], -1, [-1], [inputs], None)
    full = rgb[None]
    height, width = full.shape[:2]
    faces = (detector or default_detector()).detect(full)
    if len(faces) > max_faces:  # keep the largest; the order stays best score first
        keep = set(sorted(range(len(faces)), key=lambda i: -faces[i].box[2] * faces[i].box[3])
                   [:max_faces])
        faces = [f for i, f in enumerate(faces) if i in keep]
    first = primary(faces, width, height, primary_rule)
    answered = (list(range(len(faces))) if every else [first]) if faces else [-1]
    fixed = {s: resize(rgb[min(s.height, s.width)], s) for s in specs if s.crop == "none"}

    def cut_for(spec: PreprocessSpec, k: int) -> np.ndarray:
        if k < 0 and spec.fallback == "frame":
            return cut_face(full, image_face(width, height), spec)
        if k < 0:
            return resize(cut(full, *fallback_box(width, height, spec.fallback)), spec)
        return cut_face(full, faces[k], spec)

    inputs = [{s: fixed[s] if s.crop == "none" else cut_for(s, k) for s in specs}
              for k in answered]
    return Photo(width, height, faces, first, answered, inputs, bool(faces))


def cut_face(rgb: np.ndarray, face: Face, spec: PreprocessSpec) -> np.ndarray:
    """The model input for one face of a decoded photo: the crop rule's square (``spec.margin``
    times the face box), padded past the border, resized. Serving cuts detected faces with it,
    training the faces a manifest's boxes name."""
    left, top, side = crop_box(face, spec.margin)
    return resize(cut_square(rgb, left, top, side, 2 * max(spec.height, spec.width)), spec)


def _read_scales(source: bytes | str | Path, rules: ImageRules,
                 sides: list[int | None]) -> dict[int | None, np.ndarray]:
    if isinstance(source, (str, Path)):
        data = read_bytes(source, rules.max_bytes)
    else:
        data = bytes(source)
        if len(data) > rules.max_bytes:
            raise ImageTooLarge(f"{len(data):,} bytes, over the limit of {rules.max_bytes:,}")
    if not data:
        raise ImageError("empty input: no image bytes")
    header = _open(data)
    rules.check_size(*header.size)
    try:
        if FORMATS[header.format] != "JPEG":
            rgb = _decode_pillow(header)
            return {side: rgb for side in sides}
        factors = {side: _reduction(header.size, side) for side in sides}
        by_factor = {k: _decode_jpeg(data, header, k) for k in set(factors.values())}
        return {side: by_factor[k] for side, k in factors.items()}
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes a decoder throw
        raise ImageError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def _reduction(size: tuple[int, int], side: int | None) -> int:
    """The largest JPEG scale-down (8, 4, 2 or 1) that keeps ``side`` pixels on the short side."""
    return next((k for k in (8, 4, 2) if side and min(size) // k >= side), 1)


def pixel_count(data: bytes) -> int:
    """Width x height from the header alone (0 if it is not readable: decoding will say why)."""
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001
        return 0
    return width * height


def _open(data: bytes) -> Image.Image:
    """Pillow reads the header only; the size is checked before any decoding."""
    try:
        header = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a recognised image (JPEG, PNG, WebP or BMP)") from None
    except Exception as exc:  # noqa: BLE001 - a header cut short or malformed
        raise ImageError(f"corrupt or truncated image header: {exc}") from None
    if header.format not in FORMATS:
        raise ImageError(f"{header.format} images are not accepted (JPEG, PNG, WebP or BMP)")
    return header


def _decode_jpeg(data: bytes, header: Image.Image, k: int) -> np.ndarray:
    """Decoded at 1/k scale, whole: a truncated or corrupt JPEG raises."""
    width, height = header.size
    colorspace = "CMYK" if header.mode == "CMYK" else "RGB"
    try:  # strict: libjpeg's "premature end" warnings (it fills the rest with grey) are errors
        rgb = simplejpeg.decode_jpeg(data, colorspace, strict=True, min_height=-(-height // k),
                                     min_width=-(-width // k))
    except ValueError as exc:
        if "extraneous bytes" not in str(exc):  # junk between segments: the image is whole
            raise ImageError(f"truncated or corrupt JPEG: {exc}") from None
        rgb = simplejpeg.decode_jpeg(data, colorspace, strict=False, min_height=-(-height // k),
                                     min_width=-(-width // k))
    if colorspace == "CMYK":  # checked whole above; Pillow knows Adobe's inverted CMYK
        return _decode_pillow(header)
    return _orient(rgb, header.getexif().get(0x0112, 1))


def _decode_pillow(image: Image.Image) -> np.ndarray:
    image.load()  # raises on truncated data (Pillow's LOAD_TRUNCATED_IMAGES stays off)
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grey: Pillow's convert("RGB") clips at 255 and would make it all white
        grey = np.asarray(image).astype(np.uint32).clip(0, 65535)
        return np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return np.asarray(image.convert("RGB"))


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


def normalize_factors(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias), float32 (3,): ``x * scale + bias`` is (x / 255 - mean) / std, the
    arithmetic of :func:`normalize` and of training's normalisation on the device."""
    std, mean = np.asarray(spec.std, np.float32), np.asarray(spec.mean, np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalize(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N)HWC RGB -> float32 (N)CHW, (x / 255 - mean) / std."""
    scale, bias = (f.reshape(3, 1, 1) for f in normalize_factors(spec))
    # Transpose the uint8 pixels, then convert: transposing the 4x larger float array instead
    # was 5-6x slower (benchmarks/preprocess_bench.py), for the same values.
    chw = np.ascontiguousarray(images.transpose((0, 3, 1, 2) if images.ndim == 4 else (2, 0, 1)))
    out = np.multiply(chw, scale, dtype=np.float32)
    out += bias
    return out


def load(source: bytes | str | Path, spec: PreprocessSpec,
         rules: ImageRules = DEFAULT_RULES, detector: Detector | None = None) -> np.ndarray:
    """Decode, crop and resize for one model: the uint8 image that training caches, export
    checks and (through :func:`decode_faces`) serving batches. With ``crop: face`` it is the
    largest face (the training rule: a training image shows one person)."""
    return decode_faces(source, [spec], rules, detector).inputs[0][spec]
