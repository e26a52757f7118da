"""Trained attribute checkpoints -> ONNX files with their preprocessing inside as metadata."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from facet.atomic import atomic_path
from facet.models import run_folder
from facet.models.checkpoint import file_sha256, find_checkpoint, load_model
from facet.preprocess import PreprocessSpec, load, normalize
from facet.model_metadata import set_metadata

OPSET = 18
PARITY_ATOL = 1e-4
log = logging.getLogger(__name__)


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


class _Average(torch.nn.Module):
    """The mean of several models' probabilities (fold ensembles), and with ``flip`` of each
    image and its mirror too (TTA inside the graph, so every caller gets it without code)."""

    def __init__(self, members: list[torch.nn.Module], flip: bool):
        super().__init__()
        self.members, self.flip = torch.nn.ModuleList(members), flip

    def forward(self, image):
        if self.flip:  # one pass over both: [images; mirrored images]
            image = torch.cat([image, image.flip(3)])
        probs = torch.stack([m(image) for m in self.members]).mean(0)
        return probs.view(2, -1, probs.shape[-1]).mean(0) if self.flip else probs


def export_attribute(runs: list[str | Path], out: str | Path, parity_images: list[str],
                     calibrations: list[dict | None] | None = None, tta: bool = False) -> dict:
    """Export the best checkpoint of each run in ``runs`` (one attribute; several: an ensemble
    averaging their probabilities) to ``out``; returns the parity report.

    ``calibrations``: per run, {"temperature": T, "val_ece": {...}} from
    ``pipeline.fit_calibration``; T is applied inside the graph and recorded in the metadata
    (T = 1 when None). ``tta``: the graph also averages over the mirrored image.

    Raises :class:`ParityError` when ONNX Runtime and PyTorch disagree by more than 1e-4
    on any probability or on any argmax over ``parity_images``.
    """
    ckpts = [find_checkpoint(run) for run in runs]
    loaded = [load_model(ckpt) for ckpt in ckpts]
    meta = loaded[0][1]
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    for ckpt, (_, other) in zip(ckpts, loaded):
        if (other["attribute"], other["classes"], PreprocessSpec.from_dict(other["preprocess"])) \
                != (meta["attribute"], meta["classes"], spec):
            raise ValueError(f"{ckpt}: an ensemble's members need one attribute, class list and "
                             f"input spec; it differs from {ckpts[0]}")
    calibrations = [c or {"temperature": 1.0, "val_ece": None}
                    for c in (calibrations or [None] * len(runs))]
    members = [_Probabilities(model, c["temperature"]) for (model, _), c in zip(loaded, calibrations)]
    wrapped = (members[0] if len(members) == 1 and not tta else _Average(members, tta)).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, spec.height, spec.width)
    with atomic_path(out) as tmp:  # a failed export leaves no half file
        # The torch.export-based exporter (the TorchScript one is deprecated); one self-contained
        # file, not a separate .onnx.data; batch size left free. Its "[torch.onnx] ..." progress
        # lines only with debug logging (`facet -v export`).
        torch.onnx.export(wrapped, (dummy,), str(tmp), dynamo=True, external_data=False,
                          opset_version=OPSET, input_names=["image"], output_names=["probs"],
                          dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                          verbose=log.isEnabledFor(logging.DEBUG))
        proto = onnx.load(str(tmp))
        hashes = [file_sha256(c) for c in ckpts]
        info = {
            "attribute": meta["attribute"], "classes": meta["classes"], "preprocess": spec.to_dict(),
            "detector": meta.get("detector"),
            "age_rule": meta["age_rule"],
            "val_macro_f1": float(np.mean([m["val_macro_f1"] for _, m in loaded])),
            "epoch": meta["epoch"],
            "backbone": "+".join(dict.fromkeys(m["recipe"]["backbone"] for _, m in loaded)),
            "run": meta["run"], "checkpoint": str(ckpts[0]),
            # one member: its file's hash; an ensemble: the hash of its members' hashes, in order
            "checkpoint_sha256": hashes[0] if len(hashes) == 1 else
            hashlib.sha256("".join(hashes).encode()).hexdigest(),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "opset": OPSET,
            # an ensemble's members each have their own (in "members"): no one T undoes their mean
            "temperature": calibrations[0]["temperature"] if len(ckpts) == 1 else None,
            "val_ece": calibrations[0]["val_ece"] if len(ckpts) == 1 else None,
            "tta": tta,
            "training": training_summary(ckpts[0].parent, meta),
            "members": [{"run": m["run"], "checkpoint": str(c), "checkpoint_sha256": h,
                         "val_macro_f1": m["val_macro_f1"], "epoch": m["epoch"],
                         "backbone": m["recipe"]["backbone"], "temperature": cal["temperature"]}
                        for (_, m), c, h, cal in zip(loaded, ckpts, hashes, calibrations)],
        }
        set_metadata(proto, info)
        proto.producer_name = "facet"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    report = check_parity(wrapped, out, spec, parity_images)
    report["attribute"] = meta["attribute"]
    return report


# the recipe fields `facet info` shows: what a reader needs to know how the model was made
RECIPE_SHOWN = ("backbone", "image_size", "epochs", "samples_per_epoch", "lr", "loss", "seed",
                "source_weights", "select_on", "aug_groups")


def training_summary(run: Path, meta: dict) -> dict:
    """What the model was trained on and how, from the run folder's recipe.json and the
    checkpoint's metadata: carried inside the ONNX file, so a model folder describes itself."""
    recipe = run / run_folder.RECIPE
    resolved = json.loads(recipe.read_text()) if recipe.is_file() else {}
    data = resolved.get("data", {})
    by_source = meta.get("val_by_source") or {}
    return {"summary": data.get("summary"), "pretrained": resolved.get("pretrained"),
            "sources": {name: {**counts, "val_macro_f1": by_source.get(name, {}).get("macro_f1")}
                        for name, counts in data.get("sources", {}).items()},
            "recipe": {k: meta["recipe"][k] for k in RECIPE_SHOWN if k in meta["recipe"]}}


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

