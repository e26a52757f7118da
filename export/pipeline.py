"""`facet export`: three runs -> a model folder that `facet predict` and `facet serve` load.

The folder holds ``<attribute>.onnx`` (+ ``<attribute>.int8.onnx``), ``ensemble.onnx`` and
``facet.json``, which names the files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from facet.calibration import ece, fit_temperature, scale
from facet.combine import ATTRIBUTES
from facet.metrics import scores
from facet.preprocess import ImageError, PreprocessSpec, load, normalize
from facet.serve.predictor import ENSEMBLE, INDEX

from .ensemble import build_ensemble
from .onnx_export import export_attribute, read_info

log = logging.getLogger(__name__)
INT8_TOLERANCE = 0.01  # macro-F1 an int8 model may lose before export warns against it
CALIBRATION_IMAGES = 256  # int8 activation ranges are measured on this many real images


def val_images(run: Path, limit: int) -> pd.DataFrame:
    """The run's own validation images (path, label): never seen in training."""
    csv = run / "val.csv"
    if not csv.exists():
        raise FileNotFoundError(f"{csv} not found: pass images to check with --parity-images")
    frame = pd.read_csv(csv)
    return frame.sample(n=min(limit, len(frame)), random_state=0) if limit else frame


def fit_calibration(run: Path) -> dict | None:
    """Temperature scaling fitted on the run's validation probabilities (``val_probs.npy``, the
    best checkpoint's, with ``val.csv``'s labels): T and the val ECE before and after."""
    probs_path, csv = run / "val_probs.npy", run / "val.csv"
    if not probs_path.exists() or not csv.exists():
        return None
    probs, labels = np.load(probs_path), pd.read_csv(csv)["label"].to_numpy()
    if len(probs) != len(labels):
        return None
    temperature = fit_temperature(probs, labels)
    return {"temperature": round(temperature, 4), "val_ece": {
        "before": round(ece(probs, labels), 4),
        "after": round(ece(scale(probs, temperature), labels), 4), "images": len(labels)}}


def export_all(runs: dict[str, Path], out_dir: Path, parity_images: list[str] | None = None,
               parity_count: int = 64, ensemble: bool = True, quantize: bool = False,
               eval_limit: int = 2000, calibrate: bool = True, echo=print) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict = {"models": {"fp32": {}}, "parity": {}, "calibration": {}}
    for attribute, run in runs.items():
        images = parity_images or val_images(run, parity_count)["path"].tolist()
        path = out_dir / f"{attribute}.onnx"
        calibration = fit_calibration(run) if calibrate else None
        index["calibration"][attribute] = calibration
        if calibration:
            e = calibration["val_ece"]
            echo(f"{attribute}: temperature {calibration['temperature']:.3f} | val ECE "
                 f"{e['before']:.4f} -> {e['after']:.4f} on {e['images']} images")
        elif calibrate:
            echo(f"{attribute}: no val_probs.npy/val.csv in {run}: not calibrated (T = 1)")
        report = export_attribute(run, path, images, calibration)
        index["models"]["fp32"][attribute] = path.name
        index["parity"][attribute] = report
        echo(f"{attribute}: {path} | parity on {report['images']} images: max |dp| "
             f"{report['max_abs_diff']:.1e}, argmax mismatches {report['argmax_mismatches']}")
    if quantize:
        index["models"]["int8"] = {}
        index["int8_eval"] = {}
        for attribute, run in runs.items():
            check = val_images(run, eval_limit)
            int8 = _quantize(out_dir / f"{attribute}.onnx", _calibration_images(run, check))
            index["models"]["int8"][attribute] = int8.name
            index["int8_eval"][attribute] = result = _compare(
                out_dir / f"{attribute}.onnx", int8, check)
            echo(f"{attribute} int8: {int8} | macro-F1 {result['fp32_macro_f1']:.4f} -> "
                 f"{result['int8_macro_f1']:.4f} ({result['delta']:+.4f}) on "
                 f"{result['images']} val images, agreement {result['agreement']:.4f}")
            if result["delta"] < -INT8_TOLERANCE:
                echo(f"WARNING: {attribute} int8 loses {-result['delta']:.4f} macro-F1; "
                     "keep using fp32 (the default) for this model")
    (out_dir / ENSEMBLE).unlink(missing_ok=True)  # never a merged graph of older members
    specs = {json.dumps(read_info(out_dir / f)["preprocess"], sort_keys=True)
             for f in index["models"]["fp32"].values()}
    if ensemble and len(specs) > 1:
        echo("ensemble: not written: the models have different input specs, so they run as "
             "three sessions (each image read once and resized per spec)")
    elif ensemble:
        import onnx
        merged = build_ensemble({a: str(out_dir / f) for a, f in index["models"]["fp32"].items()})
        onnx.save(merged, str(out_dir / ENSEMBLE))
        echo(f"ensemble: {out_dir / ENSEMBLE} (predict and serve time it against three "
             "sessions where they run, and keep the faster)")
    _write(out_dir / INDEX, index)
    return index


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


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

    out = path.with_name(path.stem + ".int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred, graph optimised for the quantizer
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8)
    return out


def _compare(fp32: Path, int8: Path, frame: pd.DataFrame, batch: int = 128) -> dict:
    import onnxruntime as ort
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    meta = read_info(fp32)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    preds: list[list[np.ndarray]] = [[], []]
    labels = []
    rows = frame.to_dict("records")
    for start in tqdm(range(0, len(rows), batch), desc=f"int8 check {meta['attribute']}",
                      leave=False):
        chunk = rows[start:start + batch]
        images, kept = _readable([r["path"] for r in chunk], spec)
        labels += [chunk[i]["label"] for i in kept]
        x = normalize(np.stack(images), spec)
        for k, s in enumerate(sessions):
            preds[k].append(s.run(None, {"image": x})[0].argmax(1))
    a, b = np.concatenate(preds[0]), np.concatenate(preds[1])
    n = len(ATTRIBUTES[meta["attribute"]])
    f32, f8 = scores(labels, a, n)["macro_f1"], scores(labels, b, n)["macro_f1"]
    return {"images": len(labels), "fp32_macro_f1": f32, "int8_macro_f1": f8, "delta": f8 - f32,
            "agreement": float((a == b).mean())}
