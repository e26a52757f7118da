"""The inference engine: exported ONNX models on onnxruntime, numpy in, probabilities out.

Imports numpy, OpenCV/Pillow (via facet.preprocess) and onnxruntime only: no torch.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facet import privacy
from facet.combine import ATTRIBUTES, class_names, combine_probs
from facet.faces import PRIMARY_RULES, Detector, default_detector
from facet.preprocess import (DEFAULT_RULES, ImageRules, Photo, PreprocessSpec, decode_faces,
                              normalize)

from .metadata import ModelFileError, parse

privacy.apply_defaults()  # before onnxruntime is imported: ORT >= 1.29 reports usage otherwise
import onnxruntime as ort  # noqa: E402

log = logging.getLogger(__name__)
INDEX = "facet.json"  # the model folder's index of files, written by `facet export`
ENSEMBLE = "ensemble.onnx"
MODES = ("auto", "ensemble", "separate")


def providers(device: str = "auto") -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, CPU always as the fallback."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError("device=cuda but onnxruntime has no CUDAExecutionProvider: "
                           "install facet[gpu] (onnxruntime-gpu) instead of facet[cpu]")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, device: str, threads: int | None, spinning: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = providers(device)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found (re-run `facet export`)")
    try:
        return ort.InferenceSession(str(path), opts, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error classes, one per cause
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFileError(f"{path}: not a valid ONNX model ({reason})") from None


def read_index(model_dir: Path) -> dict:
    """The model folder's ``facet.json``: which files hold which variant."""
    path = model_dir / INDEX
    if not path.is_file():
        raise ModelFileError(f"{path} not found: point at a folder written by `facet export`")
    try:
        index = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable facet.json ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise ModelFileError(f"{path}: has no 'models' table (re-run `facet export`)")
    return index


@dataclass
class Prediction:
    """Per-image outputs of a batch: attribute probabilities, 18-class probabilities, labels."""

    attributes: dict[str, np.ndarray]  # name -> (N, k) probabilities
    probs: np.ndarray  # (N, 18)

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(1)

    def row(self, i: int) -> dict:
        """One image's answer as plain JSON-able data."""
        names = class_names()
        label = int(self.labels[i])
        return {
            "label": label, "class": names[label], "confidence": float(self.probs[i, label]),
            "attributes": {
                a: {"label": ATTRIBUTES[a][int(p[i].argmax())],
                    "code": int(p[i].argmax()),
                    "probs": {c: round(float(v), 6) for c, v in zip(ATTRIBUTES[a], p[i])}}
                for a, p in self.attributes.items()},
        }


class Predictor:
    """Loads ``model_dir`` (written by `facet export`) and predicts batches of images.

    mode: ``ensemble`` runs the merged graph (one session), ``separate`` runs one session per
    attribute, ``auto`` times both here, on the machine that predicts, and keeps the faster.
    The three models may each have their own input spec (size, resize mode, normalisation):
    an image is read once and resized once per distinct spec (see ``preprocess.decode_faces``).
    spinning: onnxruntime's worker threads busy-wait between runs (its default). Fastest when
    the models have the cores to themselves; where other processes share them (the HTTP
    service's front end), the spinning takes cores they need.
    Models exported with ``crop: face`` get a face detector (``detector``, else the shipped
    YuNet); ``primary_rule`` picks the face that answers for a photo, ``max_faces`` bounds
    how many faces of one photo are answered.
    """

    def __init__(self, model_dir: str | Path, mode: str = "auto", device: str = "auto",
                 threads: int | None = None, tta: bool = False, variant: str = "fp32",
                 rules: ImageRules = DEFAULT_RULES, spinning: bool = True,
                 detector: Detector | None = None, primary_rule: str = "largest",
                 max_faces: int = 64):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.model_dir = Path(model_dir)
        self.index = read_index(self.model_dir)
        files = self.index["models"].get(variant)
        if files is None:
            raise ValueError(f"no {variant} models in {self.model_dir}; exported: "
                             f"{list(self.index['models'])}")
        if not isinstance(files, dict) or set(files) != set(ATTRIBUTES):
            raise ModelFileError(f"{self.model_dir / INDEX}: the {variant} entry must name one "
                                 f"file for each of {list(ATTRIBUTES)} (re-run `facet export`)")
        merged = variant == "fp32" and (self.model_dir / ENSEMBLE).exists()
        if mode == "ensemble" and not merged:
            raise FileNotFoundError(
                f"no {ENSEMBLE} in {self.model_dir} (the models' specs differ, or it was not "
                "exported)" if variant == "fp32" else f"{variant} models run as separate sessions")
        self.variant, self.tta, self.rules = variant, tta, rules
        modes = ("separate", "ensemble") if mode == "auto" and merged else (
            ("separate",) if mode == "auto" else (mode,))
        opened = {m: self._open(m, files, device, threads, spinning) for m in modes}
        self.timing_ms = _time_modes(opened) if len(opened) > 1 else {}
        self.mode = min(self.timing_ms, key=self.timing_ms.get) if self.timing_ms else modes[0]
        self.sessions, self.info, self.specs = opened[self.mode]
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        self.distinct_specs = list(dict.fromkeys(self.specs.values()))
        if primary_rule not in PRIMARY_RULES:
            raise ValueError(f"primary face rule must be one of {PRIMARY_RULES}, got {primary_rule!r}")
        self.crops_faces = any(s.crop == "face" for s in self.distinct_specs)
        self.detector = (detector or default_detector()) if self.crops_faces else None
        self.primary_rule, self.max_faces = primary_rule, max_faces
        trained = {m["detector"]["sha256"] for m in self.info.values() if m.get("detector")}
        if self.detector and trained and trained != {self.detector.sha256}:
            log.warning("the models were trained with crops from another detector file than %s: "
                        "their faces may be cut differently", self.detector.path)

    def _open(self, mode: str, files: dict, device: str, threads: int | None, spinning: bool):
        """(sessions, per-attribute info, per-attribute spec) of ``mode``, checked."""
        if mode == "ensemble":  # one session; the members' metadata rides in its own
            path = self.model_dir / ENSEMBLE
            sessions = {"ensemble": _session(path, device, threads, spinning)}
            info = parse(sessions["ensemble"].get_modelmeta().custom_metadata_map,
                         str(path))["members"]
        else:
            sessions = {a: _session(self.model_dir / files[a], device, threads, spinning)
                        for a in ATTRIBUTES}
            info = {a: parse(s.get_modelmeta().custom_metadata_map, files[a])
                    for a, s in sessions.items()}
        for attribute, classes in ATTRIBUTES.items():
            meta = info.get(attribute, {})
            if meta.get("attribute") != attribute or meta.get("classes") != list(classes):
                raise ModelFileError(f"{self.model_dir}: the {attribute} model holds "
                                     f"{meta.get('attribute')} {meta.get('classes')}, expected "
                                     f"{attribute} {list(classes)}")
        specs = {a: PreprocessSpec.from_dict(m["preprocess"]) for a, m in info.items()}
        return sessions, info, specs

    # ---- images -----------------------------------------------------------------------
    def load(self, source, every: bool = False) -> Photo:
        """The photo's faces and, for the primary face (or each face when ``every``), {spec:
        uint8 HWC} for each distinct spec. Raises ImageError."""
        return decode_faces(source, self.distinct_specs, self.rules, self.detector, every,
                            self.primary_rule, self.max_faces)

    @staticmethod
    def stack(loaded: list[dict]) -> dict[PreprocessSpec, np.ndarray]:
        return {spec: np.stack([item[spec] for item in loaded]) for spec in loaded[0]}

    # ---- models -----------------------------------------------------------------------
    def predict(self, batches: dict[PreprocessSpec, np.ndarray]) -> Prediction:
        """``batches``: uint8 NHWC per spec (see :meth:`stack`)."""
        attributes = _run(self.mode, self.sessions, self.specs, batches)
        if self.tta:
            flipped = _run(self.mode, self.sessions, self.specs,
                           {s: b[:, :, ::-1] for s, b in batches.items()})
            attributes = {a: (attributes[a] + flipped[a]) / 2 for a in attributes}
        return Prediction(attributes, combine_probs(attributes["mask"], attributes["gender"],
                                                     attributes["age"]))

    def model_info(self) -> dict:
        return {
            "mode": self.mode, "mode_timing_ms": self.timing_ms, "variant": self.variant,
            "provider": self.provider, "tta": self.tta,
            "detector": self.detector.describe() if self.detector else None,
            "primary_face": self.primary_rule if self.crops_faces else None,
            "classes": class_names(),
            "attributes": {a: {"classes": m["classes"], "val_macro_f1": m["val_macro_f1"],
                               "backbone": m["backbone"], "checkpoint_sha256": m["checkpoint_sha256"],
                               "exported": m["exported"], "preprocess": m["preprocess"],
                               "age_rule": m["age_rule"], "temperature": m.get("temperature", 1.0)}
                           for a, m in self.info.items()},
        }

    def versions(self) -> dict[str, str]:
        return {a: m["checkpoint_sha256"][:12] for a, m in self.info.items()}


def pack(images: dict[PreprocessSpec, np.ndarray]) -> np.ndarray:
    """Each spec's uint8 HWC image, flattened end to end: one array per image, so images with
    several specs travel (and batch) as one row."""
    return np.concatenate([image.reshape(-1) for image in images.values()])


def unpack(rows: np.ndarray, specs: list[PreprocessSpec]) -> dict[PreprocessSpec, np.ndarray]:
    """Inverse of :func:`pack` for a batch: (N, L) uint8 -> {spec: (N, H, W, 3)}."""
    sizes = [s.height * s.width * 3 for s in specs]
    if rows.ndim != 2 or rows.shape[1] != sum(sizes):
        raise ValueError(f"expected (N, {sum(sizes)}) packed images, got {rows.shape}")
    parts = np.split(rows, np.cumsum(sizes)[:-1], axis=1)
    return {s: p.reshape(len(rows), s.height, s.width, 3) for s, p in zip(specs, parts)}


def _run(mode: str, sessions: dict, specs: dict[str, PreprocessSpec],
         batches: dict[PreprocessSpec, np.ndarray]) -> dict[str, np.ndarray]:
    inputs = {spec: normalize(b, spec) for spec, b in batches.items()}
    if mode == "ensemble":  # one input: its members share one spec (export checks)
        outputs = sessions["ensemble"].run([f"{a}_probs" for a in ATTRIBUTES],
                                           {"image": inputs[specs["mask"]]})
        return dict(zip(ATTRIBUTES, outputs))
    return {a: sessions[a].run(None, {"image": inputs[specs[a]]})[0] for a in ATTRIBUTES}


def _time_modes(opened: dict, batch: int = 16, repeats: int = 3) -> dict[str, float]:
    """Median ms per batch of each mode, interleaved, on this machine: the merged graph's gain
    over three sessions depends on the cores and the provider, so it is measured where it runs."""
    rng = np.random.default_rng(0)
    specs = {s for _, _, per in opened.values() for s in per.values()}
    batches = {s: rng.integers(0, 256, (batch, s.height, s.width, 3), dtype=np.uint8) for s in specs}
    times: dict[str, list[float]] = {m: [] for m in opened}
    for i in range(repeats + 1):  # the first round warms up
        for mode, (sessions, _, per) in opened.items():
            start = time.perf_counter()
            _run(mode, sessions, per, batches)
            if i:
                times[mode].append((time.perf_counter() - start) * 1000)
    return {m: round(float(np.median(v)), 2) for m, v in times.items()}
