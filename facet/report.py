"""`facet report`: where the model fails, for whom, and how sure it is.

From the details CSV of `facet predict` (probabilities per attribute) and an answers CSV, a folder
with report.md, report.json and PNGs: overall and per-class F1; macro-F1 and accuracy for every
group column the answers carry, with bootstrap intervals and the largest gap per column; the most
confident wrong answers as a contact sheet; expected calibration error and reliability diagrams
per attribute and for the 18 classes, before and after the models' temperature scaling.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet.calibration import BINS, ece, reliability, scale
from facet.combine import (ATTRIBUTES, TRUE_AGE_RULE, class_names, combine_labels, combine_probs,
                           parse_code, split_labels)
from facet.metrics import age_bands, by_group, scores

# The groups a face-attribute report is asked about; each is reported when the answers carry it.
EXPECTED_GROUPS = {"race": "race", "gender": "gender", "age band (real age)": "age_years",
                   "mask state": "mask"}
PREDICTIONS = {"path", "label"} | {f"p_{a}_{c}" for a, cs in ATTRIBUTES.items() for c in cs}
NOT_GROUPS = {"ImageID", "ans", "person", "id", *PREDICTIONS, *ATTRIBUTES}
MAX_GROUP_VALUES = 30


class ReportError(ValueError):
    """Inputs a report cannot be made from; the message says why."""


def build(details: pd.DataFrame, answers: pd.DataFrame, out_dir: Path,
          temperatures: dict[str, float] | None = None, resamples: int = 1000,
          hardest: int = 16, seed: int = 0) -> dict:
    """``answers``: the competition's (ImageID, ans, any group columns), scored on the 18
    classes; or a labels manifest (path and any of mask, gender, age in years, age_group: what
    ``facet train --manifest`` reads), scored per labelled attribute."""
    frame = _join(details, answers)
    pred = frame["label"].to_numpy(int)
    attributes = {a: frame[[f"p_{a}_{c}" for c in classes]].to_numpy(np.float64)
                  for a, classes in ATTRIBUTES.items()}
    truth = frame["ans"].to_numpy(int)
    full = bool((truth >= 0).all())  # every image has all three labels: the 18 classes score
    true_codes = (dict(zip(ATTRIBUTES, split_labels(truth))) if full else
                  {a: frame[a].to_numpy(int) for a in ATTRIBUTES if (frame[a] >= 0).any()})
    targets = ({"18-class": (truth, pred, len(class_names()))} if full else
               {a: (codes, _argmax(attributes[a]), len(ATTRIBUTES[a]))
                for a, codes in true_codes.items()})
    result = {"images": len(frame), "unanswered": int((pred < 0).sum()), "scored": list(targets),
              "attributes": {a: {"macro_f1": round(s["macro_f1"], 4),
                                 "accuracy": round(s["accuracy"], 4), "images": int(known.sum())}
                             for a, codes in true_codes.items()
                             for known in [codes >= 0]
                             for s in [scores(codes[known], _argmax(attributes[a])[known],
                                              len(ATTRIBUTES[a]))]}}
    if full:
        overall = scores(truth, pred, len(class_names()))
        result.update({"macro_f1": round(overall["macro_f1"], 4),
                       "accuracy": round(overall["accuracy"], 4),
                       "per_class_f1": dict(zip(class_names(), (round(f, 4) for f in
                                                                overall["per_class_f1"])))})
    groups, missing = _group_columns(frame)
    rng = np.random.default_rng(seed)
    scored = {name if full else f"{score} by {name}":
              by_group(values, *target, rng, resamples) | {"score": score, "by": name}
              for name, values in groups.items()
              for score, target in targets.items() if name != score}
    # a group column with no value where the score has a label says nothing of that score
    result["groups"] = {k: g for k, g in scored.items() if g["values"]}
    result["groups_not_reported"] = missing
    result["calibration"] = _calibration(attributes, true_codes, truth if full else None,
                                         temperatures)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["hardest"] = _hardest(frame, true_codes, attributes, hardest, out_dir / "hardest.png")
    _plot_reliability(result["calibration"], out_dir / "reliability.png")
    _plot_groups(result["groups"], out_dir / "groups.png")
    (out_dir / "report.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.md").write_text(_markdown(result))
    return result


def _from_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """A labels manifest as answers: ImageID from the path's file name, each attribute's code
    (-1: not labelled), real ages kept for the age bands, ans where all three are known."""
    if "path" not in manifest.columns:
        raise ReportError(f"the answers need ImageID and ans columns, or a path column and "
                          f"labels (a manifest); they have {list(manifest.columns)}")
    out = pd.DataFrame({"ImageID": manifest["path"].map(lambda p: Path(str(p)).name)})
    for i, row in enumerate(manifest.to_dict("records"), start=2):
        try:
            for attribute in ("mask", "gender"):
                out.loc[i - 2, attribute] = (parse_code(attribute, row[attribute])
                                             if str(row.get(attribute, "")).strip() else -1)
            years = str(row.get("age", "")).strip()
            group = str(row.get("age_group", "")).strip()
            out.loc[i - 2, "age_years"] = float(years) if years else np.nan
            out.loc[i - 2, "age"] = (TRUE_AGE_RULE.group(float(years)) if years else
                                     parse_code("age", group) if group else -1)
        except ValueError as exc:
            raise ReportError(f"answers line {i} ({row['path']}): {exc}") from None
    codes = out[list(ATTRIBUTES)].astype(int)
    if (codes < 0).all(axis=None):
        raise ReportError("the manifest labels no image (columns mask, gender, age in years or "
                          "age_group)")
    out[list(ATTRIBUTES)] = codes
    out["ans"] = np.where((codes >= 0).all(axis=1), combine_labels(*codes.clip(0).T.values), -1)
    groups = [c for c in manifest.columns if c not in (*ATTRIBUTES, "age_group", "path")]
    return pd.concat([out, manifest[groups].reset_index(drop=True)], axis=1)


def _join(details: pd.DataFrame, answers: pd.DataFrame) -> pd.DataFrame:
    if missing := PREDICTIONS - set(details.columns):
        raise ReportError(f"the predictions lack {sorted(missing)[:4]}...: give the --details "
                          "CSV of `facet predict` (it has each attribute's probabilities)")
    if not {"ImageID", "ans"} <= set(answers.columns):
        answers = _from_manifest(answers)
    if "face" in details.columns:  # --faces all: the primary face answers for the image
        details = details[details["primary"].astype(str).str.lower() == "true"]
    details = details[sorted(PREDICTIONS)].assign(ImageID=details["path"].map(lambda p: Path(str(p)).name))
    if details["ImageID"].duplicated().any():
        raise ReportError("the predictions name some file twice (images are matched to the "
                          "answers by file name): " + ", ".join(
                              details.loc[details["ImageID"].duplicated(), "ImageID"][:3]))
    if answers["ImageID"].duplicated().any():
        raise ReportError("the answers list some ImageID twice")
    answers = answers.drop(columns=[c for c in answers.columns if c in PREDICTIONS])  # theirs win
    frame = answers.merge(details, on="ImageID", how="left", validate="one_to_one")
    if frame["label"].isna().all():
        raise ReportError("no image of the answers is in the predictions (matched by file name)")
    frame["label"] = frame["label"].fillna(-1).astype(int)
    return frame.fillna({c: 0.0 for c in frame.columns if c.startswith("p_")})


def _argmax(probs: np.ndarray) -> np.ndarray:
    """-1 (no answer) where a row has no probabilities."""
    return np.where(probs.sum(1) > 0, probs.argmax(1), -1)


def _group_columns(frame: pd.DataFrame) -> tuple[dict[str, pd.Series], list[dict]]:
    groups: dict[str, pd.Series] = {}
    for column in frame.columns:
        if column in NOT_GROUPS:  # ids, answers, predictions; the attributes come below
            continue
        if column == "age_years":
            bands = age_bands(pd.to_numeric(frame[column], errors="coerce"))
            groups["age band (real age)"] = bands.astype(str).where(bands.notna())
        elif 1 < frame[column].nunique() <= MAX_GROUP_VALUES:
            groups[column] = frame[column].astype(str)
    for attribute, names in ATTRIBUTES.items():  # the true attribute codes, named
        if attribute in frame.columns:
            codes = pd.to_numeric(frame[attribute], errors="coerce")
            valid = codes.isin(range(len(names)))
            groups[attribute] = codes.where(valid).map(lambda c: names[int(c)] if c == c else None)
    missing = [{"group": label, "why": f"no {column!r} column in the answers"}
               for label, column in EXPECTED_GROUPS.items() if column not in frame.columns]
    for name in [n for n, values in groups.items() if values.dropna().empty]:
        del groups[name]
        missing.append({"group": name, "why": "no usable value in its column"})
    return groups, missing


def _calibration(attributes: dict, true_codes: dict, truth, temperatures) -> dict:
    """ECE and reliability of each labelled attribute, and of the 18 classes when ``truth``."""
    out = {}
    before_attrs = {a: scale(p, 1 / temperatures[a]) if temperatures and a in temperatures else None
                    for a, p in attributes.items()}
    answered = np.concatenate([p.sum(1, keepdims=True) > 0 for p in attributes.values()], 1).all(1)
    entries = [(a, attributes[a], true_codes[a], before_attrs[a]) for a in true_codes]
    if truth is not None:
        entries.append(("18 classes", combine_probs(*attributes.values()), truth,
                        combine_probs(*before_attrs.values()) if all(
                            v is not None for v in before_attrs.values()) else None))
    for name, probs, labels, before in entries:
        labels = np.where(answered, labels, -1)
        entry = {"ece": round(ece(probs, labels), 4), "reliability": reliability(probs, labels)}
        if before is not None:
            entry["ece_before_scaling"] = round(ece(before, labels), 4)
            entry["reliability_before_scaling"] = reliability(before, labels)
            entry["temperature"] = temperatures.get(name)
        out[name] = entry
    return out


def _hardest(frame, true_codes: dict, attributes: dict, count: int, path: Path) -> list[dict]:
    """The most confident wrong answers (wrong in any labelled attribute), as a contact sheet."""
    labelled = list(true_codes)
    confidence = np.prod([attributes[a].max(1) for a in labelled], axis=0)
    picked = {a: _argmax(attributes[a]) for a in labelled}
    answered = np.all([picked[a] >= 0 for a in labelled], axis=0)
    wrong = np.flatnonzero(answered & np.any([(true_codes[a] >= 0) & (picked[a] != true_codes[a])
                                              for a in labelled], axis=0))
    top = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]

    def name(codes: dict, i: int) -> str:
        return "/".join(ATTRIBUTES[a][codes[a][i]] if codes[a][i] >= 0 else "?" for a in labelled)
    rows = [{"image": str(frame["path"].iloc[i]), "true": name(true_codes, i),
             "answer": name(picked, i), "confidence": round(float(confidence[i]), 4)} for i in top]
    if rows:
        contact_sheet([r["image"] for r in rows],
                      [f"true {r['true']}\nanswer {r['answer']} ({r['confidence']:.2f})" for r in rows],
                      path, "most confident wrong answers")
    return rows


def contact_sheet(images: list[str], captions: list[str], path: Path, title: str) -> None:
    """The images in a grid, four a row, each with its caption (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facet.preprocess import ImageError, read_image

    cols = 4
    fig, axes = plt.subplots(-(-len(images) // cols), cols,
                             figsize=(cols * 2.6, -(-len(images) // cols) * 3.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        try:
            ax.imshow(read_image(image))
        except (ImageError, OSError):
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def _plot_reliability(calibration: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(calibration), figsize=(3.3 * len(calibration), 3.4))
    centres = (np.arange(BINS) + 0.5) / BINS
    for ax, (name, entry) in zip(axes, calibration.items()):
        ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
        if "reliability_before_scaling" in entry:
            r = entry["reliability_before_scaling"]
            ax.plot(centres, r["accuracy"], "o-", ms=3, color="tab:orange",
                    label=f"before scaling, ECE {entry['ece_before_scaling']:.3f}")
        ax.plot(centres, entry["reliability"]["accuracy"], "o-", ms=3, color="tab:blue",
                label=f"served, ECE {entry['ece']:.3f}")
        ax.set(title=name, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_groups(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 1.2 + 0.45 * sum(
        len(g["values"]) for g in groups.values())), squeeze=False)
    for ax, (name, group) in zip(axes[:, 0], groups.items()):
        values = group["values"]
        y = np.arange(len(values))
        f1 = np.array([v["macro_f1"] for v in values])
        # a small group's own F1 can fall outside its bootstrap interval (F1 is not a mean)
        lo = np.clip(f1 - np.array([v["macro_f1_ci"][0] for v in values]), 0, None)
        hi = np.clip(np.array([v["macro_f1_ci"][1] for v in values]) - f1, 0, None)
        ax.errorbar(f1, y, xerr=[lo, hi], fmt="o", capsize=3)
        ax.set_yticks(y, [f"{v['value']} (n={v['images']})" for v in values], fontsize=8)
        ax.set(title=f"{name}: {group['score']} macro-F1, 95% bootstrap interval", xlim=(0, 1))
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(r: dict) -> str:
    overall = (f"18-class macro-F1 **{r['macro_f1']:.4f}**, accuracy {r['accuracy']:.4f}."
               if "macro_f1" in r else "Scored per labelled attribute (the answers do not "
               "label all three, so the 18 classes are not scored).")
    lines = ["# facet evaluation report", "",
             f"{r['images']:,} images, {r['unanswered']} unanswered (counted wrong). {overall}", "",
             "| attribute | images | macro-F1 | accuracy |", "|---|---|---|---|"]
    lines += [f"| {a} | {s['images']:,} | {s['macro_f1']:.4f} | {s['accuracy']:.4f} |"
              for a, s in r["attributes"].items()]
    lines += ["", "## By group", "", "![groups](groups.png)", ""]
    for name, group in r["groups"].items():
        gap = group["gap"]
        flag = " **(the intervals do not overlap)**" if gap["clear"] else ""
        lines += [f"### {name}", "", f"Largest gap in {group['score']} macro-F1: {gap['best']} over "
                  f"{gap['worst']}, {gap['macro_f1_gap']:.4f}{flag}.", "",
                  "| value | images | macro-F1 (95% CI) | accuracy (95% CI) |", "|---|---|---|---|"]
        lines += [f"| {v['value']} | {v['images']:,} | {v['macro_f1']:.4f} ({v['macro_f1_ci'][0]:.3f}"
                  f"-{v['macro_f1_ci'][1]:.3f}) | {v['accuracy']:.4f} ({v['accuracy_ci'][0]:.3f}-"
                  f"{v['accuracy_ci'][1]:.3f}) |" for v in group["values"]]
        lines.append("")
    if r["groups_not_reported"]:
        lines += ["Not reported: " + "; ".join(f"{m['group']} ({m['why']})"
                                               for m in r["groups_not_reported"]) + ".", ""]
    lines += ["## Calibration", "", "![reliability](reliability.png)", "",
              "| | ECE served | ECE before temperature scaling | temperature |", "|---|---|---|---|"]
    for name, c in r["calibration"].items():
        lines.append(f"| {name} | {c['ece']:.4f} | {c.get('ece_before_scaling', float('nan')):.4f} "
                     f"| {c.get('temperature') or ''} |")
    if "per_class_f1" in r:
        lines += ["", "## Per class (18)", "", "| class | F1 |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in r["per_class_f1"].items()]
    if r["hardest"]:
        lines += ["", "## Most confident wrong answers", "", "![hardest](hardest.png)", ""]
    return "\n".join(lines) + "\n"
