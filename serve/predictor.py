"""The inference engine: exported ONNX models on onnxruntime, numpy in, probabilities out.

Imports numpy, OpenCV/Pillow (via facet.preprocess) and onnxruntime only: no torch.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facet import privacy
from facet.combine import ATTRIBUTES, class_names, combine_probs
from facet.preprocess import DEFAULT_MAX_PIXELS, PreprocessSpec, normalize, read_image, resize

from .metadata import ModelFileError, parse

privacy.apply_defaults()  # before onnxruntime is imported: ORT >= 1.29 reports usage otherwise
import onnxruntime as ort  # noqa: E402

log = logging.getLogger(__name__)
MANIFEST = "facet.json"
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
    return ort.InferenceSession(str(path), opts, providers=providers(device))


@dataclass
class Prediction:
    """Per-image outputs of a batch: attribute probabilities, 18-class probabilities, labels."""

    attributes: dict[str, np.ndarray]  # name -> (N, k) probabilities
    probs: np.ndarray  # (N, 18)

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(1)

    def attribute_labels(self, name: str) -> np.ndarray:
        return self.attributes[name].argmax(1)

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
    attribute, ``auto`` takes what `facet export` measured to be faster on the export machine.
    spinning: onnxruntime's worker threads busy-wait between runs (its default). Fastest when
    the models have the cores to themselves; where other processes share them (the HTTP
    service's front end), the spinning takes cores they need.
    """

    def __init__(self, model_dir: str | Path, mode: str = "auto", device: str = "auto",
                 threads: int | None = None, tta: bool = False, variant: str = "fp32",
                 max_pixels: int = DEFAULT_MAX_PIXELS, spinning: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.model_dir = Path(model_dir)
        manifest_path = self.model_dir / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} not found: point at a folder written by "
                                    "`facet export`")
        self.manifest = json.loads(manifest_path.read_text())
        files = self.manifest["models"].get(variant)
        if files is None:
            raise ValueError(f"no {variant} models in {self.model_dir}; exported: "
                             f"{list(self.manifest['models'])}")
        if mode == "auto":
            mode = self.manifest.get("default_mode", "separate") if variant == "fp32" else "separate"
        if mode == "ensemble" and (variant != "fp32" or not (self.model_dir / ENSEMBLE).exists()):
            raise FileNotFoundError(f"no fp32 {ENSEMBLE} in {self.model_dir} (export with --ensemble)")
        self.mode, self.variant, self.tta, self.max_pixels = mode, variant, tta, max_pixels
        if mode == "ensemble":  # one session; the members' metadata rides in its own
            path = self.model_dir / ENSEMBLE
            self.sessions = {"ensemble": _session(path, device, threads, spinning)}
            self.info = parse(self.sessions["ensemble"].get_modelmeta().custom_metadata_map,
                              str(path))["members"]
        else:
            self.sessions = {a: _session(self.model_dir / files[a], device, threads, spinning)
                             for a in ATTRIBUTES}
            self.info = {a: parse(s.get_modelmeta().custom_metadata_map, files[a])
                         for a, s in self.sessions.items()}
        for attribute, classes in ATTRIBUTES.items():
            meta = self.info.get(attribute, {})
            if meta.get("attribute") != attribute or meta.get("classes") != list(classes):
                raise ModelFileError(f"{self.model_dir}: the {attribute} model holds "
                                     f"{meta.get('attribute')} {meta.get('classes')}, expected "
                                     f"{attribute} {list(classes)}")
        self.specs = {a: PreprocessSpec.from_dict(m["preprocess"]) for a, m in self.info.items()}
        self.provider = next(iter(self.sessions.values())).get_providers()[0]
        # The merged graph has one input, so all three models share one spec there.
        self.distinct_specs = list(dict.fromkeys(self.specs.values()))
        self.min_side = max(min(s.height, s.width) for s in self.distinct_specs)

    # ---- images -----------------------------------------------------------------------
    def load(self, source) -> dict[PreprocessSpec, np.ndarray]:
        """Decode once, resize once per distinct spec: {spec: uint8 HWC}. Raises ImageError."""
        rgb = read_image(source, min_side=self.min_side, max_pixels=self.max_pixels)
        return {spec: resize(rgb, spec) for spec in self.distinct_specs}

    @staticmethod
    def stack(loaded: list[dict]) -> dict[PreprocessSpec, np.ndarray]:
        return {spec: np.stack([item[spec] for item in loaded]) for spec in loaded[0]}

    # ---- models -----------------------------------------------------------------------
    def predict(self, batches: dict[PreprocessSpec, np.ndarray]) -> Prediction:
        """``batches``: uint8 NHWC per spec (see :meth:`stack`)."""
        attributes = self._run(batches)
        if self.tta:
            flipped = self._run({s: b[:, :, ::-1] for s, b in batches.items()})
            attributes = {a: (attributes[a] + flipped[a]) / 2 for a in attributes}
        return Prediction(attributes, combine_probs(attributes["mask"], attributes["gender"],
                                                     attributes["age"]))

    def _run(self, batches) -> dict[str, np.ndarray]:
        inputs = {spec: normalize(b, spec) for spec, b in batches.items()}
        if self.mode == "ensemble":
            outputs = self.sessions["ensemble"].run(
                [f"{a}_probs" for a in ATTRIBUTES], {"image": inputs[self.distinct_specs[0]]})
            return dict(zip(ATTRIBUTES, outputs))
        return {a: self.sessions[a].run(None, {"image": inputs[self.specs[a]]})[0]
                for a in ATTRIBUTES}

    def model_info(self) -> dict:
        return {
            "mode": self.mode, "variant": self.variant, "provider": self.provider, "tta": self.tta,
            "classes": class_names(),
            "attributes": {a: {"classes": m["classes"], "val_macro_f1": m["val_macro_f1"],
                               "backbone": m["backbone"], "checkpoint_sha256": m["checkpoint_sha256"],
                               "exported": m["exported"], "preprocess": m["preprocess"],
                               "age_rule": m["age_rule"]}
                           for a, m in self.info.items()},
        }

    def versions(self) -> dict[str, str]:
        return {a: m["checkpoint_sha256"][:12] for a, m in self.info.items()}
