"""A model set for release (`facet build-set`): from a folder `facet export --quantize` wrote,
each attribute's variant chosen on labelled sets, the chosen files written as one variant,
scored, and described by a model card. The set shipped with facet is one such set.

Per attribute, int8 where its worst set loses at most ``max_loss`` macro-F1 against fp32, else
fp32; the folder's index names the choice as its default variant :data:`COMPACT`, and holds the
card's scores, which `facet info` prints; ``MODEL_CARD.md`` beside the models says what they
were trained on and what was measured. No torch: the sets are answered as `facet predict`
answers them.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facet.atomic import write_text
from facet.combine import ATTRIBUTES, N_CLASSES, combine_labels
from facet.metrics import RESAMPLES, age_bands, by_group, f1_interval, scores
from facet.model_folder import default_variant, read_index, write_index
from facet.model_metadata import read_info
from facet.score import score_photo_faces

from .batch import predict_paths
from .predictor import Predictor

COMPACT = "compact"  # the variant a built set answers with: each attribute's chosen files
MAX_INT8_LOSS = 0.005  # macro-F1 an int8 model may lose on any set and still be chosen
MIN_FACE = 24  # annotated faces smaller than this (px, shorter side) compete but are not scored
CARD = "MODEL_CARD.md"
SEED = 0  # the bootstrap's: a set's intervals are the same on every build
GROUPS = ("race",)  # group columns of a set's manifest scored separately, when it has them
FAIL_MARGIN = 0.05  # a group this far under its set's macro-F1 is listed where the card says it fails
#: a rebuilt set against the one it should reproduce (:func:`compare`)
TOLERANCE = {"agreement": 0.99, "max_abs_dp": 0.05}


@dataclass
class EvalSet:
    """A labelled set: ``frame`` has ``path`` and the codes it knows (``mask``, ``gender``,
    ``age``; -1 unknown) and ``age_years`` (-1 unknown); with ``photos``, each row is one
    annotated face (``box``) of a photo, scored photo -> detected faces -> mask."""

    name: str
    frame: pd.DataFrame
    photos: bool = False


def score_set(predictor: Predictor, frame: pd.DataFrame) -> dict:
    """macro-F1 of every attribute the set labels, and of the 18 classes where it labels all
    three, each with its 95% bootstrap interval (``intervals``); per attribute, by each group
    column the set carries (:data:`GROUPS`) and by real-age band where ages are known (``by``)."""
    result = predict_paths(predictor, [Path(p) for p in frame["path"]], progress=False)
    row = {"images": len(frame), "no_face_found": sum(f is False for f in result.face_found)}
    rng = np.random.default_rng(SEED)
    intervals, by = {}, {}
    years = frame["age_years"].to_numpy() if "age_years" in frame else np.full(len(frame), -1)
    groups = {g: frame[g].replace("", np.nan).reset_index(drop=True)
              for g in GROUPS if g in frame and frame[g].replace("", np.nan).notna().any()}
    if (years >= 0).any():
        groups["age band"] = age_bands(np.where(years >= 0, years, -1)).astype(object)
    for attribute, classes in ATTRIBUTES.items():
        truth = frame[attribute].to_numpy()
        if (truth < 0).any():
            continue
        pred = result.attributes[attribute].argmax(1)
        row[attribute] = round(scores(truth, pred, len(classes))["macro_f1"], 4)
        intervals[attribute] = f1_interval(truth, pred, len(classes), rng)
        by[attribute] = {name: by_group(values, truth, pred, len(classes), rng)["values"]
                         for name, values in groups.items()
                         if not (name == "age band" and attribute == "age")}
    if all(a in row for a in ATTRIBUTES):
        truth = combine_labels(frame["mask"], frame["gender"], frame["age"])
        row["18 classes"] = round(scores(truth, result.labels, N_CLASSES)["macro_f1"], 4)
        intervals["18 classes"] = f1_interval(truth, result.labels, N_CLASSES, rng)
    row["intervals"] = intervals
    if any(by.values()):
        row["by"] = {a: g for a, g in by.items() if g}
    return row


def score_photos(predictor: Predictor, faces: pd.DataFrame) -> dict:
    """Photo -> faces -> mask on annotated photos (``faces``: a row per annotated face): each
    face of :data:`MIN_FACE` px or more takes the detection matched to it; a missed face is
    wrong. The interval draws whole photos (their faces go together)."""
    photos = sorted(faces["path"].unique())
    result = predict_paths(predictor, [Path(p) for p in photos], progress=False, every=True)
    found = {photos[f.row]: [] for f in result.faces}
    for f in result.faces:
        if f.face is not None:
            found[photos[f.row]].append((f.face.box, int(f.attributes["mask"].argmax())))
    big = np.array([min(b[2], b[3]) >= MIN_FACE for b in faces["box"]])
    s = score_photo_faces(faces, found, "mask", scored=big, answers=True)
    interval = f1_interval(s["truth"], s["pred"], len(ATTRIBUTES["mask"]),
                           np.random.default_rng(SEED), clusters=s["photo"])
    return {"photos": len(photos), "faces": s["faces"], "missed": s["missed"],
            "face recall": round(1 - s["missed"] / max(1, s["faces"]), 4),
            "mask": s["macro_f1"], "mask per class": s["per_class_f1"],
            "intervals": {"mask": interval}}


def failures(scores_: dict[str, dict], margin: float = FAIL_MARGIN) -> list[dict]:
    """Where each attribute fails, per set and grouping (race, age band): the group with the
    lowest macro-F1 and every group more than ``margin`` under the set's overall score."""
    out = []
    for name, row in scores_.items():
        for attribute, groupings in row.get("by", {}).items():
            overall = row[attribute]
            for by, values in groupings.items():
                if len(values) < 2:
                    continue
                lowest = min(values, key=lambda v: v["macro_f1"])
                for v in values:
                    if v is lowest or v["macro_f1"] < overall - margin:
                        out.append({"set": name, "attribute": attribute, "by": by,
                                    "group": v["value"], "images": v["images"],
                                    "macro_f1": v["macro_f1"], "interval": v["macro_f1_ci"],
                                    "overall": overall,
                                    "under": round(overall - v["macro_f1"], 4)})
    return out


def score_folder(models: Path, variant: str, sets: list[EvalSet]) -> dict[str, dict]:
    predictor = Predictor(models, variant=variant)
    return {s.name: (score_photos if s.photos else score_set)(predictor, s.frame) for s in sets}


def choose(fp32: dict, int8: dict, max_loss: float = MAX_INT8_LOSS
           ) -> tuple[dict[str, str], dict]:
    """(attribute -> the variant kept, attribute -> {set: int8's macro-F1 change})."""
    chosen, losses = {}, {}
    for attribute in ATTRIBUTES:
        deltas = {name: round(int8[name][attribute] - row[attribute], 4)
                  for name, row in fp32.items() if attribute in row}
        losses[attribute] = deltas
        chosen[attribute] = ("int8" if deltas and min(deltas.values()) >= -max_loss
                             else "fp32")
    return chosen, losses


def assemble(export: Path, out: Path, chosen: dict[str, str]) -> None:
    """The chosen files in ``out`` (its earlier models removed) and an index whose default
    variant, :data:`COMPACT`, names them; the export's calibration and checks go with them."""
    index = read_index(export)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.onnx"):
        old.unlink()
    files = {a: index["models"][v][a] for a, v in chosen.items()}
    for name in files.values():
        shutil.copy2(export / name, out / name)
    write_index(out, {"models": {COMPACT: files}, "default_variant": COMPACT,
                      "variants_chosen": chosen,
                      **{k: index[k] for k in ("calibration", "parity", "int8_eval", "tta")
                         if k in index}})


def build_set(export: Path, out: Path, sets: list[EvalSet], max_loss: float = MAX_INT8_LOSS,
              notes: str = "", release: dict | None = None) -> dict:
    """Choose, assemble, score and describe (see the module); returns the card's data with
    every variant's scores (``by_variant``) and int8's changes (``int8_delta``). ``release``:
    how the models were made (budget, commands), kept in the card."""
    variants = [v for v in ("fp32", "int8") if v in read_index(export)["models"]]
    by_variant = {v: score_folder(export, v, sets) for v in variants}
    if "int8" in by_variant:
        chosen, losses = choose(by_variant["fp32"], by_variant["int8"], max_loss)
    else:
        chosen, losses = {a: "fp32" for a in ATTRIBUTES}, {}
    assemble(export, out, chosen)
    meta = _metadata(out)
    card = {"scores": score_folder(out, COMPACT, sets), "chosen": chosen, "max_loss": max_loss,
            "trained_on": {a: (m.get("training") or {}).get("summary", "")
                           for a, m in meta.items()},
            "detector": meta["mask"].get("detector")}
    card["fails"] = failures(card["scores"])
    if release:
        card["release"] = release
    write_card(out, card, notes)
    return {**card, "by_variant": by_variant, "int8_delta": losses}


def write_card(out: Path, card: dict, notes: str = "") -> None:
    """The card's data into the folder's index (what `facet info` prints) and MODEL_CARD.md."""
    index = read_index(out)
    index["card"] = card
    write_index(out, index)
    write_text(out / CARD, card_markdown(out, card, notes))


def card_markdown(out: Path, card: dict, notes: str = "") -> str:
    index = read_index(out)
    files = index["models"][default_variant(index)]
    meta = _metadata(out)
    rows = []
    for a in ATTRIBUTES:
        recipe = (meta[a].get("training") or {}).get("recipe") or {}
        p = meta[a]["preprocess"]
        crop = f"crop=face x{p['margin']}" if p.get("crop") == "face" else "crop=none"
        temperature = meta[a].get("temperature")
        rows.append(f"| {a} | `{files[a]}` ({(out / files[a]).stat().st_size / 1e6:.1f} MB) | "
                    f"{meta[a].get('backbone', '?')}, {p['height']} px, {crop} | "
                    f"{card['trained_on'][a]} | {recipe.get('epochs', '?')} x "
                    f"{recipe.get('samples_per_epoch') or 'all'}, seed {recipe.get('seed', '?')} | "
                    + (f"{temperature:.2f} |" if temperature is not None else "- |"))
    measured = []
    for name, row in card["scores"].items():
        ci = row.get("intervals", {})
        if "photos" in row:
            measured.append(f"| {name} ({row['photos']} photos, {row['faces']} faces >= "
                            f"{MIN_FACE} px; {row['face recall']:.3f} found) | photo -> faces "
                            f"-> mask, a missed face wrong | {_f1(row['mask'], ci.get('mask'))} | | | |")
        else:
            cells = [_f1(row[k], ci.get(k)) if k in row else "" for k in (*ATTRIBUTES, "18 classes")]
            measured.append(f"| {name} ({row['images']:,} images) | "
                            f"{', '.join(a for a in ATTRIBUTES if a in row)} | "
                            + " | ".join(cells) + " |")
    detector = card.get("detector")
    faces = (f" Photo models: each finds the faces with the YuNet detector `{detector['file']}` "
             f"(score >= {detector['score_threshold']}) and answers for the square crop of "
             f"{meta['mask']['preprocess']['margin']}x the face box." if detector else "")
    chosen = ", ".join(f"{a} {v}" for a, v in card["chosen"].items())
    return f"""# Model card

Three attribute models (mask state, gender, age group), combined by rule into the 18 classes.{faces}
Built by `facet build-set`; `facet info` prints this folder's metadata.

| model | file | network | trained on | epochs x samples | temperature |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Variants: int8 (static, calibrated on val images) where it loses at most {card['max_loss']}
macro-F1 on every set below against fp32, else fp32: {chosen}.

## Measured (the files above, macro-F1)

Each score with its 95% bootstrap interval ({RESAMPLES:,} resamples of the set's images; of whole
photos for photo sets).

| set | what | mask | gender | age | 18 classes |
|---|---|---|---|---|---|
{chr(10).join(measured)}
""" + _groups_markdown(card) + _release_markdown(card.get("release")) + (
        f"\n{notes.strip()}\n" if notes.strip() else "")


def _release_markdown(release: dict | None) -> str:
    if not release:
        return ""
    commands = "\n".join([*release["commands"].values(), release["export"]])
    return f"""
## How it was trained

`facet build-set --from-data`, budget `{release['budget']}`: each attribute trained, then exported:

```
{commands}
```
"""


def _f1(value: float, interval) -> str:
    return f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})" if interval else f"{value:.3f}"


def _groups_markdown(card: dict) -> str:
    """The scores by group (race, age band) of every set that has them, and where it fails."""
    rows = [f"| {name} | {attribute} | {by} | {v['value']} | {v['images']:,} | "
            f"{_f1(v['macro_f1'], v['macro_f1_ci'])} |"
            for name, row in card["scores"].items()
            for attribute, groupings in row.get("by", {}).items()
            for by, values in groupings.items() for v in values]
    if not rows:
        return ""
    fails = card.get("fails", failures(card["scores"]))
    listed = [f"- {f['attribute']} on {f['set']}, {f['by']} {f['group']} ({f['images']:,} "
              f"images): {_f1(f['macro_f1'], f['interval'])}, {f['under']:.3f} under the set's "
              f"{f['overall']:.3f}" + (" (its whole interval is under it)" if f["interval"][1] < f["overall"]
                                       else "")
              for f in fails]
    return f"""
## By group (macro-F1, 95% bootstrap interval)

| set | attribute | by | group | images | macro-F1 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Where it fails

Per set, attribute and grouping: the group that scores lowest, and every group more than
{FAIL_MARGIN} under the set's own score.

{chr(10).join(listed)}
"""


def compare(a: Path, b: Path, paths: list[Path]) -> dict:
    """Label agreement and max |dp| per attribute of two model folders on ``paths``, and
    whether they are within :data:`TOLERANCE` (``ok``)."""
    results = [predict_paths(Predictor(m), paths, progress=False) for m in (a, b)]
    out = {}
    for attribute in ATTRIBUTES:
        pa, pb = (r.attributes[attribute] for r in results)
        ok = ~np.isnan(pa).any(1) & ~np.isnan(pb).any(1)
        agree = pa[ok].argmax(1) == pb[ok].argmax(1)
        out[attribute] = {"images": int(ok.sum()), "agreement": round(float(agree.mean()), 4),
                          "max_abs_dp": round(float(np.abs(pa[ok] - pb[ok]).max()), 5)}
    out["ok"] = all(out[x]["agreement"] >= TOLERANCE["agreement"]
                    and out[x]["max_abs_dp"] <= TOLERANCE["max_abs_dp"] for x in ATTRIBUTES)
    return out


def _metadata(folder: Path) -> dict[str, dict]:
    index = read_index(folder)
    files = index["models"][default_variant(index)]
    return {a: read_info(folder / files[a], str(folder / files[a])) for a in ATTRIBUTES}
