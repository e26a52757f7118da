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
from facet.combine import ATTRIBUTES, class_names, combine_probs, split_labels
from facet.metrics import age_bands, macro_f1_counts, scores

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
    frame = _join(details, answers)
    truth = frame["ans"].to_numpy(int)
    pred = frame["label"].to_numpy(int)
    attributes = {a: frame[[f"p_{a}_{c}" for c in classes]].to_numpy(np.float64)
                  for a, classes in ATTRIBUTES.items()}
    true_codes = dict(zip(ATTRIBUTES, split_labels(truth)))
    overall = scores(truth, pred, len(class_names()))
    result = {
        "images": len(frame), "unanswered": int((pred < 0).sum()),
        "macro_f1": round(overall["macro_f1"], 4), "accuracy": round(overall["accuracy"], 4),
        "per_class_f1": dict(zip(class_names(), (round(f, 4) for f in overall["per_class_f1"]))),
        "attributes": {a: {"macro_f1": round(s["macro_f1"], 4), "accuracy": round(s["accuracy"], 4)}
                       for a in ATTRIBUTES
                       for s in [scores(true_codes[a], _argmax(attributes[a]), len(ATTRIBUTES[a]))]},
    }
    groups, missing = _group_columns(frame)
    rng = np.random.default_rng(seed)
    result["groups"] = {name: _by_group(values, truth, pred, rng, resamples)
                        for name, values in groups.items()}
    result["groups_not_reported"] = missing
    result["calibration"] = _calibration(attributes, true_codes, truth, temperatures)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["hardest"] = _hardest(frame, truth, pred, attributes, hardest, out_dir / "hardest.png")
    _plot_reliability(result["calibration"], out_dir / "reliability.png")
    _plot_groups(result["groups"], out_dir / "groups.png")
    (out_dir / "report.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.md").write_text(_markdown(result))
    return result


def _join(details: pd.DataFrame, answers: pd.DataFrame) -> pd.DataFrame:
    if missing := PREDICTIONS - set(details.columns):
        raise ReportError(f"the predictions lack {sorted(missing)[:4]}...: give the --details "
                          "CSV of `facet predict` (it has each attribute's probabilities)")
    if not {"ImageID", "ans"} <= set(answers.columns):
        raise ReportError(f"the answers need ImageID and ans columns; they have {list(answers.columns)}")
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


def _by_group(values: pd.Series, truth, pred, rng, resamples: int) -> dict:
    rows = []
    n_classes = len(class_names())
    for value in sorted(v for v in values.dropna().unique()):
        idx = np.flatnonzero((values == value).to_numpy())
        t, p = truth[idx], pred[idx]
        draws = rng.integers(0, len(idx), (resamples, len(idx)))
        f1s = np.array([macro_f1_counts(t[d], p[d], n_classes) for d in draws])
        accs = (t[draws] == p[draws]).mean(1)
        rows.append({"value": str(value), "images": len(idx),
                     "macro_f1": round(macro_f1_counts(t, p, n_classes), 4),
                     "macro_f1_ci": [round(float(x), 4) for x in np.percentile(f1s, [2.5, 97.5])],
                     "accuracy": round(float((t == p).mean()), 4),
                     "accuracy_ci": [round(float(x), 4) for x in np.percentile(accs, [2.5, 97.5])]})
    best = max(rows, key=lambda r: r["macro_f1"])
    worst = min(rows, key=lambda r: r["macro_f1"])
    return {"values": rows, "gap": {
        "best": best["value"], "worst": worst["value"],
        "macro_f1_gap": round(best["macro_f1"] - worst["macro_f1"], 4),
        # the intervals do not overlap: a gap the sampling alone does not explain
        "clear": worst["macro_f1_ci"][1] < best["macro_f1_ci"][0]}}


def _calibration(attributes: dict, true_codes: dict, truth, temperatures) -> dict:
    out = {}
    before_attrs = {a: scale(p, 1 / temperatures[a]) if temperatures and a in temperatures else None
                    for a, p in attributes.items()}
    answered = np.concatenate([p.sum(1, keepdims=True) > 0 for p in attributes.values()], 1).all(1)
    for name, probs, labels, before in [
            *[(a, attributes[a], true_codes[a], before_attrs[a]) for a in ATTRIBUTES],
            ("18 classes", combine_probs(*attributes.values()), truth,
             combine_probs(*before_attrs.values()) if all(
                 v is not None for v in before_attrs.values()) else None)]:
        labels = np.where(answered, labels, -1)
        entry = {"ece": round(ece(probs, labels), 4), "reliability": reliability(probs, labels)}
        if before is not None:
            entry["ece_before_scaling"] = round(ece(before, labels), 4)
            entry["reliability_before_scaling"] = reliability(before, labels)
            entry["temperature"] = temperatures.get(name)
        out[name] = entry
    return out


def _hardest(frame, truth, pred, attributes, count: int, path: Path) -> list[dict]:
    """The most confident wrong answers, as a contact sheet."""
    confidence = combine_probs(*attributes.values()).max(1)
    wrong = np.flatnonzero((pred >= 0) & (pred != truth))
    top = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    names = class_names()
    rows = [{"image": str(frame["path"].iloc[i]), "true": names[truth[i]], "answer": names[pred[i]],
             "confidence": round(float(confidence[i]), 4)} for i in top]
    if rows:
        _contact_sheet(rows, path)
    return rows


def _contact_sheet(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facet.preprocess import ImageError, read_image

    cols = 4
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(cols * 2.6, -(-len(rows) // cols) * 3.0),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        try:
            ax.imshow(read_image(row["image"]))
        except (ImageError, OSError):
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(f"true {row['true']}\nanswer {row['answer']} ({row['confidence']:.2f})",
                     fontsize=7)
    fig.suptitle("most confident wrong answers", fontsize=10)
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
        lo = f1 - np.array([v["macro_f1_ci"][0] for v in values])
        hi = np.array([v["macro_f1_ci"][1] for v in values]) - f1
        ax.errorbar(f1, y, xerr=[lo, hi], fmt="o", capsize=3)
        ax.set_yticks(y, [f"{v['value']} (n={v['images']})" for v in values], fontsize=8)
        ax.set(title=f"{name}: 18-class macro-F1, 95% bootstrap interval", xlim=(0, 1))
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(r: dict) -> str:
    lines = ["# facet evaluation report", "",
             f"{r['images']:,} images, {r['unanswered']} unanswered (counted wrong). "
             f"18-class macro-F1 **{r['macro_f1']:.4f}**, accuracy {r['accuracy']:.4f}.", "",
             "| attribute | macro-F1 | accuracy |", "|---|---|---|"]
    lines += [f"| {a} | {s['macro_f1']:.4f} | {s['accuracy']:.4f} |" for a, s in r["attributes"].items()]
    lines += ["", "## By group", "", "![groups](groups.png)", ""]
    for name, group in r["groups"].items():
        gap = group["gap"]
        flag = " **(the intervals do not overlap)**" if gap["clear"] else ""
        lines += [f"### {name}", "", f"Largest gap: {gap['best']} over {gap['worst']}, "
                  f"{gap['macro_f1_gap']:.4f} macro-F1{flag}.", "",
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
    lines += ["", "## Per class (18)", "", "| class | F1 |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in r["per_class_f1"].items()]
    if r["hardest"]:
        lines += ["", "## Most confident wrong answers", "", "![hardest](hardest.png)", ""]
    return "\n".join(lines) + "\n"
