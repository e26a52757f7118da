"""Trained attribute checkpoints -> ONNX files with their preprocessing inside as metadata."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from facet.models.checkpoint import file_sha256, find_checkpoint, load_model
from facet.preprocess import PreprocessSpec, load, normalize
from facet.serve.metadata import METADATA_KEY, read_metadata

OPSET = 18
PARITY_ATOL = 1e-4


class ParityError(AssertionError):
    """The ONNX model does not reproduce the PyTorch model."""


class _Probabilities(torch.nn.Module):
    """Ship probabilities, not logits: the combiner and the HTTP answers need them. The logits
    are divided by the model's temperature first, so every caller gets calibrated ones."""

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, image):
        logits = self.model(image)
        return (logits / self.temperature if self.temperature != 1.0 else logits).softmax(-1)


def export_attribute(run: str | Path, out: str | Path, parity_images: list[str],
                     calibration: dict | None = None) -> dict:
    """Export one run's best checkpoint to ``out``; returns the parity report.

    ``calibration``: {"temperature": T, "val_ece": {...}} from ``pipeline.fit_calibration``;
    T is applied inside the graph and recorded in the metadata (T = 1 when None).

    Raises :class:`ParityError` when ONNX Runtime and PyTorch disagree by more than 1e-4
    on any probability or on any argmax over ``parity_images``.
    """
    ckpt = find_checkpoint(run)
    model, meta = load_model(ckpt)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    calibration = calibration or {"temperature": 1.0, "val_ece": None}
    wrapped = _Probabilities(model, calibration["temperature"]).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, spec.height, spec.width)
    tmp = out.with_suffix(".tmp.onnx")
    # The torch.export-based exporter (the TorchScript one is deprecated); one self-contained
    # file, not a separate .onnx.data; batch size left free.
    torch.onnx.export(wrapped, (dummy,), str(tmp), dynamo=True, external_data=False,
                      opset_version=OPSET, input_names=["image"], output_names=["probs"],
                      dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    proto = onnx.load(str(tmp))
    info = {
        "attribute": meta["attribute"], "classes": meta["classes"], "preprocess": spec.to_dict(),
        "detector": meta.get("detector"),
        "age_rule": meta["age_rule"], "val_macro_f1": meta["val_macro_f1"],
        "epoch": meta["epoch"], "backbone": meta["recipe"]["backbone"], "run": meta["run"],
        "checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "opset": OPSET,
        "temperature": calibration["temperature"], "val_ece": calibration["val_ece"],
    }
    set_metadata(proto, info)
    proto.producer_name = "facet"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    report = check_parity(wrapped, out, spec, parity_images)
    report["attribute"] = meta["attribute"]
    return report


def set_metadata(proto: onnx.ModelProto, info: dict) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))


def check_parity(torch_model: torch.nn.Module, onnx_path: Path, spec: PreprocessSpec,
                 images: list[str]) -> dict:
    if not images:
        raise ParityError("parity needs at least one real image")
    batch = normalize(np.stack([load(p, spec) for p in images]), spec)
    with torch.inference_mode():
        expected = torch_model(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": batch})[0]
    diff = float(np.abs(got - expected).max())
    mismatched = int((got.argmax(1) != expected.argmax(1)).sum())
    report = {"images": len(images), "max_abs_diff": diff, "argmax_mismatches": mismatched}
    if diff > PARITY_ATOL or mismatched:
        raise ParityError(f"{onnx_path.name}: ONNX vs PyTorch max |dp| = {diff:.2e} "
                          f"(limit {PARITY_ATOL:.0e}), {mismatched} argmax mismatch(es) "
                          f"on {len(images)} images")
    return report


def read_info(path: str | Path) -> dict:
    return read_metadata(onnx.load(str(path), load_external_data=False))
