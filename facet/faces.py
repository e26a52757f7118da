"""Faces in a photo: the detector, the choice of the primary face, and the one crop rule.

The crop rule is used by training (the decoded-image cache), export and serving alike, through
``preprocess.decode_faces``. Numpy and OpenCV only: the serving path must not import torch.

The default detector is YuNet-n (``assets/face_detection_yunet_n.onnx``); the smaller YuNet-s
(``assets/face_detection_yunet_2023mar.onnx``, the default of earlier models) ships beside it.
Both Apache-2.0 (``assets/LICENSE-yunet``), run on onnxruntime or by OpenCV's
``cv2.FaceDetectorYN``. Another detector only has to satisfy :class:`Detector`.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facet import privacy

YUNET = Path(__file__).parent / "assets" / "face_detection_yunet_n.onnx"
YUNET_S = YUNET.with_name("face_detection_yunet_2023mar.onnx")
PRIMARY_RULES = ("largest", "center")
PRIMARY_RULE = "largest"  # the face that answers for a photo unless another rule is asked for
FALLBACKS = ("frame", "whole", "center")
ENGINES = ("auto", "onnxruntime", "opencv")
FACE_SCORE = 0.75  # the best detection F1 on street photos: BENCHMARKS.md, "Faces in photos"


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixels of the image it was found in."""

    box: tuple[float, float, float, float]  # x, y, width, height
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()  # eyes, nose tip, mouth corners

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks]}


class Detector(Protocol):
    """What facet needs from a face detector: RGB uint8 HWC in, faces out, best first."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...

    def describe(self) -> dict: ...


class DetectorError(ValueError):
    """A detector file that cannot be loaded."""


class YuNet:
    """YuNet, on onnxruntime (``engine="onnxruntime"``: faster end to end than OpenCV here,
    BENCHMARKS.md "Faces in photos"; and it can share a GPU with the classifiers) or on
    OpenCV's ``cv2.FaceDetectorYN`` (``"opencv"``); ``"auto"`` takes onnxruntime when it (and
    onnx, which frees the file's fixed input size) is installed. The same network and box
    decoding; the two NMS implementations differ only on a few overlapping low-score boxes.

    Photos larger than ``max_side`` are detected on a scaled-down copy (the boxes are mapped
    back), which bounds the cost of a 12 MP photo; faces are then cropped from the full-size
    image. ``upscale`` > 1 enlarges smaller photos (up to ``max_side``) so that small faces are
    found: more recall for more time (BENCHMARKS.md, "Faces in photos"). Safe to call from
    several threads (batches are decoded in a thread pool).
    """

    name = "yunet"
    STRIDES = (8, 16, 32)
    OUTPUTS = [f"{k}_{s}" for s in STRIDES for k in ("cls", "obj", "bbox", "kps")]

    def __init__(self, path: str | Path | None = None, score_threshold: float = FACE_SCORE,
                 nms_threshold: float = 0.3, max_side: int = 640, engine: str = "auto",
                 upscale: float = 1.0):
        self.path = Path(path) if path else YUNET
        if not 0 < score_threshold < 1:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {max_side}")
        if not 1 <= upscale <= 4:
            raise ValueError(f"upscale must be between 1 and 4, got {upscale}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.score_threshold, self.nms_threshold, self.max_side, self.upscale = (
            score_threshold, nms_threshold, max_side, upscale)
        self.sha256 = _sha256(self.path)
        self._local = threading.local()  # OpenCV: one detector per thread (setInputSize mutates)
        self._session = None
        if engine != "opencv":
            self._session = _ort_session(self.path, required=engine == "onnxruntime")
        self.engine = "onnxruntime" if self._session is not None else "opencv"
        if self._session is None:
            self._opencv()  # fail here, not on the first photo

    def _opencv(self):
        det = getattr(self._local, "det", None)
        if det is None:
            level = cv2.utils.logging.getLogLevel()  # OpenCV 5 warns about targets on create
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            try:
                det = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320),
                                                self.score_threshold, self.nms_threshold, 5000)
            except cv2.error as exc:
                raise DetectorError(f"{self.path}: not a YuNet ONNX file ({exc.err})") from None
            finally:
                cv2.utils.logging.setLogLevel(level)
            self._local.det = det
        return det

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(self.upscale, self.max_side / max(h, w))
        small = rgb if scale == 1 else cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        bgr = np.ascontiguousarray(small[:, :, ::-1])  # YuNet was trained on BGR
        rows = self._run_onnxruntime(bgr) if self._session is not None else self._run_opencv(bgr)
        faces = [Face(tuple(float(v) / scale for v in r[:4]), float(r[14]),
                      tuple((float(r[4 + 2 * k]) / scale, float(r[5 + 2 * k]) / scale)
                            for k in range(5)))
                 for r in rows]
        return sorted(faces, key=lambda f: -f.score)

    def _run_opencv(self, bgr: np.ndarray) -> np.ndarray:
        det = self._opencv()
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = det.detect(bgr)
        return rows if rows is not None else np.zeros((0, 15), np.float32)

    def _run_onnxruntime(self, bgr: np.ndarray) -> np.ndarray:
        """The network on onnxruntime, then OpenCV's own decoding (``face_detect.cpp``): rows
        of x, y, w, h, five landmarks (x, y), score."""
        h, w = bgr.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32  # the input padded to whole strides
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = bgr.transpose(2, 0, 1)
        out = dict(zip(self.OUTPUTS, self._session.run(self.OUTPUTS, {"input": blob})))
        parts = []
        for stride in self.STRIDES:
            cols = pw // stride
            cls, obj = out[f"cls_{stride}"][0, :, 0], out[f"obj_{stride}"][0, :, 0]
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            keep = np.flatnonzero(score >= self.score_threshold)
            if not len(keep):
                continue
            c, r = (keep % cols).astype(np.float32), (keep // cols).astype(np.float32)
            box, kps = out[f"bbox_{stride}"][0, keep], out[f"kps_{stride}"][0, keep]
            cx, cy = (c + box[:, 0]) * stride, (r + box[:, 1]) * stride
            bw, bh = np.exp(box[:, 2]) * stride, np.exp(box[:, 3]) * stride
            points = np.empty((len(keep), 10), np.float32)
            points[:, 0::2] = (kps[:, 0::2] + c[:, None]) * stride
            points[:, 1::2] = (kps[:, 1::2] + r[:, None]) * stride
            parts.append(np.column_stack([cx - bw / 2, cy - bh / 2, bw, bh, points, score[keep]]))
        if not parts:
            return np.zeros((0, 15), np.float32)
        rows = np.concatenate(parts).astype(np.float32)
        kept = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(),
                                self.score_threshold, self.nms_threshold, top_k=5000)
        return rows[np.asarray(kept, int).reshape(-1)]

    def describe(self) -> dict:
        return {"name": self.name, "engine": self.engine, "file": self.path.name,
                "sha256": self.sha256, "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "max_side": self.max_side,
                "upscale": self.upscale}


def _ort_session(path: Path, required: bool):
    """An onnxruntime session of YuNet with its input's height and width left free (the file
    fixes them at 640x640), or None where onnxruntime is not installed and not required."""
    privacy.apply_defaults()  # before onnxruntime is imported
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        if required:
            raise DetectorError("engine=onnxruntime needs onnxruntime and onnx installed") from None
        return None
    try:
        model = onnx.load(str(path))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
        for output in model.graph.output:  # anchors per stride follow the input size
            output.type.tensor_type.shape.dim[1].dim_param = f"{output.name}_anchors"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # photos are detected in parallel by the decode threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        # a wrong file fails here, not on every photo
        session.run(YuNet.OUTPUTS, {"input": np.zeros((1, 3, 32, 32), np.float32)})
        return session
    except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise their own classes
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DetectorError(f"{path}: not a YuNet ONNX file ({reason})") from None


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise DetectorError(f"{path}: detector file not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()


_DEFAULT: YuNet | None = None
_DEFAULT_LOCK = threading.Lock()


def default_detector() -> YuNet:
    """The shipped YuNet with facet's default thresholds, created once per process."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = YuNet()
        return _DEFAULT


def primary(faces: list[Face], width: int, height: int, rule: str = PRIMARY_RULE) -> int:
    """Index of the face that answers for the photo: the largest box, or the box whose centre
    is nearest the photo's centre. -1 when there is none."""
    if rule not in PRIMARY_RULES:
        raise ValueError(f"primary face rule must be one of {PRIMARY_RULES}, got {rule!r}")
    if not faces:
        return -1
    if rule == "largest":
        return max(range(len(faces)), key=lambda i: faces[i].box[2] * faces[i].box[3])
    cx, cy = width / 2, height / 2
    return min(range(len(faces)), key=lambda i: (faces[i].box[0] + faces[i].box[2] / 2 - cx) ** 2
               + (faces[i].box[1] + faces[i].box[3] / 2 - cy) ** 2)


def crop_box(face: Face, margin: float) -> tuple[int, int, int]:
    """The crop rule: a square ``margin`` times the face box's longer side, centred on the box.
    Returns (left, top, side) in image pixels; it may reach past the image border."""
    x, y, w, h = face.box
    side = max(1, round(max(w, h) * margin))
    return round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side


def image_face(width: int, height: int) -> Face:
    """An image taken as one face filling it: a face crop, or an image where no face is found.
    The crop rule around it frames the image as training frames a face (fallback ``frame``)."""
    return Face((0.0, 0.0, float(width), float(height)), 0.0)


def fallback_box(width: int, height: int, fallback: str) -> tuple[int, int, int, int]:
    """(left, top, width, height) used when no face is found, for the fallbacks that are not
    the crop rule (``frame`` is :func:`image_face` cut by it): the whole image, stretched to the
    input, or the centred square of its short side."""
    if fallback == "whole":
        return 0, 0, width, height
    if fallback != "center":
        raise ValueError(f"fallback_box: {fallback!r} is not whole or center")
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def cut_square(rgb: np.ndarray, left: int, top: int, side: int, max_side: int) -> np.ndarray:
    """The square crop, at most ``max_side`` pixels a side: a crop much larger than the model
    input (a face filling a 40 MP photo) is scaled down before it is padded, so its black
    canvas is never allocated at full size."""
    f = max_side / side
    if f >= 1:
        return cut(rgb, left, top, side, side)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    region = cv2.resize(rgb[y0:y1, x0:x1], (max(1, round((x1 - x0) * f)),
                                            max(1, round((y1 - y0) * f))), interpolation=cv2.INTER_AREA)
    small = max(1, round(side * f))
    return cut(region, round((left - x0) * f), round((top - y0) * f), small, small)


def cut(rgb: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """The region, padded with black where it reaches past the image border, so the face
    keeps its place and scale in the crop (clamping would shift or squash it)."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(w, left + width), min(h, top + height)
    inside = rgb[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else rgb[:0, :0]
    if (x0, y0, x1, y1) == (left, top, left + width, top + height):
        return inside
    out = np.zeros((height, width, 3), np.uint8)
    if inside.size:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = inside
    return out
