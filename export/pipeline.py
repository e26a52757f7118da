"""`facet export`: three runs -> a model folder that `facet predict` and `facet serve` load.

The folder holds ``<attribute>.onnx`` (+ ``<attribute>.int8.onnx``, ``<attribute>.fp16.onnx``),
``ensemble.onnx`` (+ ``ensemble.fp16.onnx``) and ``facet.json``, which names the files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facet.calibration import ece, fit_temperature, scale
from facet.combine import ATTRIBUTES
from facet.metrics import scores
from facet.models import run_folder
from facet.preprocess import ImageError, PreprocessSpec, load, normalize
from facet.progress import progress_bar
from facet.model_folder import merged_file, model_file, write_index
from facet.model_metadata import read_info

from .merged_graph import build_merged_graph
from .onnx_export import export_attribute

log = logging.getLogger(__name__)
F1_TOLERANCE = 0.01  # macro-F1 an int8 or fp16 model may lose before export warns against it
FP16_AGREEMENT = 0.995  # share of fp32's labels an fp16 model must give before export warns
CALIBRATION_IMAGES = 256  # int8 activation ranges are measured on this many real images


def val_images(run: Path, limit: int) -> pd.DataFrame:
    """The run's own validation images (path, label): never seen in training."""
    csv = run / run_folder.VAL
    if not csv.exists():
        raise FileNotFoundError(f"{csv} not found: pass images to check with --parity-images")
    frame = pd.read_csv(csv)
    return frame.sample(n=min(limit, len(frame)), random_state=0) if limit else frame


def fit_calibration(run: Path) -> dict | None:
    """Temperature scaling fitted on the run's validation probabilities (``val_probs.npy``, the
    best checkpoint's, with ``val.csv``'s labels): T and the val ECE before and after."""
    probs_path, csv = run / run_folder.VAL_PROBS, run / run_folder.VAL
    if not probs_path.exists() or not csv.exists():
        return None
    probs, labels = np.load(probs_path), pd.read_csv(csv)["label"].to_numpy()
    if len(probs) != len(labels):
        return None
    temperature = fit_temperature(probs, labels)
    return {"temperature": round(temperature, 4), "val_ece": {
        "before": round(ece(probs, labels), 4),
        "after": round(ece(scale(probs, temperature), labels), 4), "images": len(labels)}}


def export_all(runs: dict[str, Path | list[Path]], out_dir: Path,
               parity_images: list[str] | None = None, parity_count: int = 64,
               ensemble: bool = True, quantize: bool = False, eval_limit: int = 2000,
               calibrate: bool = True, fp16: bool = False, tta: bool = False, echo=print) -> dict:
    """``runs``: attribute -> a run, or several (an ensemble averaged inside its graph; each
    member calibrated on its own val images). The parity and int8/fp16 checks use the first
    member's val images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    members = {a: [Path(r)] if isinstance(r, (str, Path)) else [Path(m) for m in r]
               for a, r in runs.items()}
    runs = {a: m[0] for a, m in members.items()}
    index: dict = {"models": {"fp32": {}}, "parity": {}, "calibration": {},
                   "members": {a: [str(r) for r in m] for a, m in members.items()}, "tta": tta}
    for attribute, run in runs.items():
        images = parity_images or val_images(run, parity_count)["path"].tolist()
        path = out_dir / model_file(attribute)
        calibrations = [_calibration(r, attribute, calibrate, echo) for r in members[attribute]]
        # one T for the attribute's probabilities: only a single model has one
        index["calibration"][attribute] = calibrations[0] if len(calibrations) == 1 else None
        report = export_attribute(members[attribute], path, images, calibrations, tta)
        index["models"]["fp32"][attribute] = path.name
        index["parity"][attribute] = report
        echo(f"{attribute}: {path} ({len(members[attribute])} model(s){', flip TTA' if tta else ''})"
             f" | parity on {report['images']} images: max |dp| {report['max_abs_diff']:.1e}, "
             f"argmax mismatches {report['argmax_mismatches']}")
    for variant in [v for v, wanted in (("int8", quantize), ("fp16", fp16)) if wanted]:
        index["models"][variant], index[f"{variant}_eval"] = {}, {}
        for attribute, run in runs.items():
            check, fp32 = val_images(run, eval_limit), out_dir / model_file(attribute)
            made = (_quantize(fp32, _calibration_images(run, check)) if variant == "int8"
                    else _half(fp32))
            index["models"][variant][attribute] = made.name
            index[f"{variant}_eval"][attribute] = result = _compare(fp32, made, check, variant)
            echo(f"{attribute} {variant}: {made} | macro-F1 {result['fp32_macro_f1']:.4f} -> "
                 f"{result[f'{variant}_macro_f1']:.4f} ({result['delta']:+.4f}) on "
                 f"{result['images']} val images, agreement {result['agreement']:.4f}")
            if result["delta"] < -F1_TOLERANCE or (variant == "fp16"
                                                     and result["agreement"] < FP16_AGREEMENT):
                echo(f"WARNING: {attribute} {variant} loses {-result['delta']:.4f} macro-F1 and "
                     f"agrees on {result['agreement']:.4f} of labels; keep using fp32 (the "
                     "default) for this model")
    for variant in ("fp32", "fp16"):  # never a merged graph of older members
        (out_dir / merged_file(variant)).unlink(missing_ok=True)
    specs = {json.dumps(read_info(out_dir / f)["preprocess"], sort_keys=True)
             for f in index["models"]["fp32"].values()}
    if ensemble and len(specs) > 1:
        echo("ensemble: not written: the models have different input specs, so they run as "
             "three sessions (each image read once and resized per spec)")
    elif ensemble:
        import onnx
        merged = build_merged_graph({a: str(out_dir / f) for a, f in index["models"]["fp32"].items()})
        onnx.save(merged, str(out_dir / merged_file("fp32")))
        if fp16:
            _half(out_dir / merged_file("fp32"))
        echo(f"ensemble: {out_dir / merged_file('fp32')}{' (+ fp16)' if fp16 else ''} (predict "
             "and serve time it against three sessions where they run, and keep the faster)")
    write_index(out_dir, index)
    return index


def _calibration(run: Path, attribute: str, calibrate: bool, echo) -> dict | None:
    calibration = fit_calibration(run) if calibrate else None
    if calibration:
        e = calibration["val_ece"]
        echo(f"{attribute}: {run}: temperature {calibration['temperature']:.3f} | val ECE "
             f"{e['before']:.4f} -> {e['after']:.4f} on {e['images']} images")
    elif calibrate:
        echo(f"{attribute}: no {run_folder.VAL_PROBS}/{run_folder.VAL} in {run}: not calibrated "
             "(T = 1)")
    return calibration


def _readable(paths: list[str], spec: PreprocessSpec) -> tuple[list[np.ndarray], list[int]]:
    """The images that decode, and their positions in ``paths`` (unreadable ones are skipped)."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load(path, spec))
            kept.append(i)
        except ImageError:
            continue
    return images, kept


def _calibration_images(run: Path, check: pd.DataFrame, count: int = CALIBRATION_IMAGES) -> list[str]:
    """Val images outside the accuracy check where the run has enough of them."""
    frame = val_images(run, 0)
    rest = frame.drop(check.index, errors="ignore")
    pool = rest if len(rest) >= count else frame
    return pool.sample(n=min(count, len(pool)), random_state=1)["path"].tolist()


def _quantize(path: Path, calibration: list[str], batch: int = 32) -> Path:
    """Static int8: per-channel int8 weights and uint8 activations whose ranges are calibrated
    on real images (QDQ). Dynamic quantization, which guesses activation ranges per batch at
    run time, collapsed these CNNs (mask macro-F1 1.00 -> 0.09)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = PreprocessSpec.from_dict(read_info(path)["preprocess"])
    images, _ = _readable(calibration, spec)
    if not images:
        raise ValueError(f"no readable calibration image for {path.name}")
    x = normalize(np.stack(images), spec)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    out = path.with_name(model_file(path.stem, "int8"))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred, graph optimised for the quantizer
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        # the probabilities stay float: a uint8 softmax output no longer sums to 1 (a two-class
        # answer came out [0.498, 0.498]), and the temperature's division stays with it
        exact = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in ("Softmax", "Div")]
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, nodes_to_exclude=exact)
    return out


def _half(path: Path) -> Path:
    """fp16 weights and activations (Tensor Cores' type) with fp32 input and outputs, so callers
    feed and read the same arrays as fp32; the metadata is kept. ``x.onnx`` -> ``x.fp16.onnx``."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = path.with_name(model_file(path.stem, "fp16"))
    half = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True))
    half.graph.sort()  # the converter appends the input casts last: the checker wants them first
    half = onnx_ir.to_proto(half)
    onnx.checker.check_model(half, full_check=True)
    onnx.save(half, str(out))
    return out


def _compare(fp32: Path, other: Path, frame: pd.DataFrame, variant: str, batch: int = 128) -> dict:
    """fp32 against a reduced-precision variant on real val images: macro-F1 of each, and the
    share of images where both give the same label."""
    import onnxruntime as ort
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, other)]
    meta = read_info(fp32)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    preds: list[list[np.ndarray]] = [[], []]
    labels = []
    rows = frame.to_dict("records")
    for start in progress_bar(range(0, len(rows), batch),
                              desc=f"{variant} check {meta['attribute']}", leave=False):
        chunk = rows[start:start + batch]
        images, kept = _readable([r["path"] for r in chunk], spec)
        labels += [chunk[i]["label"] for i in kept]
        x = normalize(np.stack(images), spec)
        for k, s in enumerate(sessions):
            preds[k].append(s.run(None, {"image": x})[0].argmax(1))
    a, b = np.concatenate(preds[0]), np.concatenate(preds[1])
    n = len(ATTRIBUTES[meta["attribute"]])
    f32, reduced = scores(labels, a, n)["macro_f1"], scores(labels, b, n)["macro_f1"]
    return {"images": len(labels), "fp32_macro_f1": f32, f"{variant}_macro_f1": reduced,
            "delta": reduced - f32, "agreement": float((a == b).mean())}
