"""The model folder's format, the one place it is spelled: written by `facet export`, read by
the predictor, the Ray engine and `facet info`.

A folder holds ``<attribute>.onnx`` (+ ``<attribute>.int8.onnx``, ``<attribute>.fp16.onnx``),
``ensemble.onnx`` (+ ``ensemble.fp16.onnx``) and ``facet.json`` (:data:`INDEX`), which names the
files of each variant. What each ONNX file holds about itself is its metadata (``metadata``).

Also what a folder holds, from that metadata (`facet info`): its variants and files, and for
each attribute the backbone, input, crop rule, detector, training data, scores and
calibration; the shipped set's card scores too. No torch or onnxruntime here (onnx: lazily).
"""
from __future__ import annotations

import json
from pathlib import Path

from facet.atomic import write_json
from facet.combine import ATTRIBUTES

from .metadata import ModelFileError, read_info

INDEX = "facet.json"  # the model folder's index of files, written by `facet export`


def model_file(stem: str, variant: str = "fp32") -> str:
    """A model file's name: ``<stem>.onnx`` for fp32, else ``<stem>.<variant>.onnx``
    (``mask.onnx``, ``mask.int8.onnx``, ``ensemble.fp16.onnx``); ``stem``: an attribute, or
    ``ensemble`` for the merged graph."""
    return f"{stem}.onnx" if variant == "fp32" else f"{stem}.{variant}.onnx"


def merged_file(variant: str) -> str:
    """The merged graph's file name of a variant (``ensemble.onnx``, ``ensemble.fp16.onnx``)."""
    return model_file("ensemble", variant)


ENSEMBLE = merged_file("fp32")


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


def write_index(model_dir: Path, index: dict) -> None:
    """``facet.json`` into ``model_dir``, whole or not at all."""
    write_json(model_dir / INDEX, index)


def default_variant(index: dict) -> str:
    """The variant a folder answers with unless asked for another: its ``default_variant``
    (the shipped set's ``compact``: int8 where it costs no accuracy), else fp32."""
    return index.get("default_variant", "fp32")


def describe(model_dir: Path) -> dict:
    """Plain data: {folder, default_variant, variants: {v: {attribute: {file, bytes}}},
    ensemble, attributes: {a: metadata of the default variant's file}, evaluations, card}."""
    index = read_index(model_dir)
    default = default_variant(index)
    variants = {v: {a: {"file": f, "bytes": _size(model_dir / f)} for a, f in files.items()}
                for v, files in index["models"].items()}
    if default not in variants:
        raise ValueError(f"{model_dir / INDEX}: its default variant {default!r} is not among "
                         f"{list(variants)}")
    attributes = {}
    for attribute in ATTRIBUTES:
        path = model_dir / index["models"][default][attribute]
        attributes[attribute] = read_info(path, str(path))
    return {"folder": str(model_dir), "default_variant": default, "variants": variants,
            "ensemble": [v for v in index["models"] if (model_dir / merged_file(v)).is_file()],
            "attributes": attributes,
            "evaluations": {k: v for k, v in index.items() if k.endswith("_eval")},
            "card": index.get("card")}


def render(info: dict) -> str:
    """``describe``'s data as the lines `facet info` prints."""
    default = info["default_variant"]
    lines = [f"models: {info['folder']}"]
    for variant, files in info["variants"].items():
        listed = ", ".join(f"{f['file']} {f['bytes'] / 1e6:.1f} MB" for f in files.values())
        lines.append(f"  {variant}{' (default)' if variant == default else ''}: {listed}")
    if info["ensemble"]:
        lines.append(f"  merged one-session graph: {', '.join(info['ensemble'])}")
    detectors = {str(m["detector"]) for m in info["attributes"].values() if m.get("detector")}
    for meta in info["attributes"].values():
        if meta.get("detector"):
            d = meta["detector"]
            lines.append(f"detector: {d.get('name')} {d.get('file')} (sha256 {d.get('sha256', '')[:12]}), "
                         f"score >= {d.get('score_threshold')}"
                         + ("" if len(detectors) == 1 else " (the models differ: see --json)"))
            break
    for attribute, meta in info["attributes"].items():
        lines += [""] + _attribute_lines(attribute, meta, info["evaluations"])
    card = info.get("card")
    if card and card.get("scores"):
        lines += ["", "measured (macro-F1; see MODEL_CARD.md beside the models):"]
        for name, row in card["scores"].items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items()))
    return "\n".join(lines)


def _attribute_lines(attribute: str, meta: dict, evaluations: dict) -> list[str]:
    p = meta["preprocess"]
    crop = (f"face, margin {p.get('margin')}, fallback {p.get('fallback')}"
            if p.get("crop") == "face" else "none (each image is one face crop)")
    lines = [f"{attribute}: {' / '.join(meta['classes'])}",
             f"  backbone {meta['backbone']}, input {p['height']}x{p['width']} {p['resize_mode']}, "
             f"mean {p['mean']} std {p['std']}",
             f"  crop: {crop}"]
    rule = meta.get("age_rule") or {}
    if attribute == "age" and rule.get("train"):
        lines.append(f"  age groups: trained at {rule['train']['thresholds']}, answered as "
                     f"<{rule['scored']['thresholds'][0]} / {rule['scored']['thresholds'][0]}-"
                     f"{rule['scored']['thresholds'][1] - 1} / >={rule['scored']['thresholds'][1]}")
    training = meta.get("training") or {}
    if training.get("summary"):
        lines.append(f"  trained on {training['summary']}")
        for name, s in training.get("sources", {}).items():
            score = s.get("val_macro_f1")
            lines.append(f"    {name}: {s.get('train_images', 0):,} train / {s.get('val_images', 0):,} "
                         f"val images" + (f", val macro-F1 {score:.3f}" if score is not None else ""))
    if training.get("recipe"):
        r = training["recipe"]
        lines.append("  recipe: " + ", ".join(f"{k} {v}" for k, v in r.items() if v not in ("", None)))
    if training.get("pretrained"):
        lines.append(f"  initial weights: {training['pretrained']}")
    lines.append(f"  val macro-F1 {meta['val_macro_f1']:.3f} (epoch {meta.get('epoch')}), "
                 f"checkpoint sha256 {meta['checkpoint_sha256'][:12]}, exported {meta.get('exported')}")
    ece = meta.get("val_ece")
    if meta.get("temperature") is not None:
        lines.append(f"  calibration: temperature {meta['temperature']:.3f}"
                     + (f", val ECE {ece['before']:.4f} -> {ece['after']:.4f}" if ece else ""))
    for name, per in evaluations.items():
        e = per.get(attribute)
        if e:
            variant = name.removesuffix("_eval")
            lines.append(f"  {variant}: macro-F1 {e['fp32_macro_f1']:.4f} -> "
                         f"{e[f'{variant}_macro_f1']:.4f} ({e['delta']:+.4f}) against fp32 on "
                         f"{e['images']:,} val images, agreement {e['agreement']:.4f}")
    return lines


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
