"""`facet info`: describe a model folder from the metadata stored in it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from facet import shipped
from facet.cli._common import _fail


def info(models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the set shipped with facet)."),
         as_json: bool = typer.Option(False, "--json", help="Print everything as JSON.")):
    """Describe a model folder: models, data, scores, variants.

    Attributes, backbone, input, crop rule, detector, training data, scores, calibration and
    variants, from the metadata stored in the folder."""
    from facet.model_folder import describe
    folder, default_set = shipped.resolve(models)
    try:
        described = describe(folder)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    typer.echo(render(described))
    if default_set:
        typer.echo(f"\nthe set shipped with facet: its card is {shipped.CARD}")


def render(info: dict) -> str:
    """``facet.model_folder.describe``'s data as the lines `facet info` prints."""
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
            lines += _score_lines(name, row)
    return "\n".join(lines)


def _score_lines(name: str, row: dict) -> list[str]:
    """A set's card scores: each macro-F1 with its 95% interval, then its groups' scores."""
    intervals = row.get("intervals", {})

    def score(key, value):
        ci = intervals.get(key)
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [f"  {name}: " + ", ".join(
        f"{k} {score(k, v)}" if isinstance(v, float) else f"{k} {v}"
        for k, v in row.items() if k not in ("intervals", "by"))]
    for attribute, groupings in row.get("by", {}).items():
        for by, values in groupings.items():
            lines.append(f"    {attribute} by {by}: " + ", ".join(
                f"{v['value']} {v['macro_f1']:.3f} [{v['macro_f1_ci'][0]:.3f}, "
                f"{v['macro_f1_ci'][1]:.3f}]" for v in values))
    return lines


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
