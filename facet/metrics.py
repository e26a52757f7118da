"""Scores and plots shared by training (per epoch) and `facet score` (submissions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def scores(y_true, y_pred, n_classes: int) -> dict:
    """Macro-F1 as the competition scored it (over classes present in truth or prediction);
    per-class F1 and the confusion matrix over all ``n_classes``. A prediction < 0 is no answer:
    wrong, a miss for its true class, but no class of its own (it leaves the confusion matrix)."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    answered = y_pred >= 0
    confusion = np.bincount(y_true[answered] * n_classes + y_pred[answered],
                            minlength=n_classes ** 2).reshape(n_classes, n_classes)
    tallies = _tallies(y_true, y_pred, n_classes)
    return {
        "macro_f1": _macro_f1(*tallies),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "per_class_f1": _f1(*tallies)[0].tolist(),
        "confusion": confusion.tolist(),
    }


def macro_f1_from_confusion(confusion) -> float:
    """The macro-F1 of :func:`scores` from a confusion matrix (rows true, columns predicted;
    every image answered)."""
    cm = np.asarray(confusion, dtype=np.int64)
    return _macro_f1(np.diag(cm), cm.sum(1), cm.sum(0))


def macro_f1_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """The macro-F1 of :func:`scores` without its other scores: fast enough to bootstrap."""
    return _macro_f1(*_tallies(np.asarray(y_true), np.asarray(y_pred), n_classes))


RESAMPLES = 1000  # bootstrap draws of an interval
CONFIDENCE = 95  # percent


def f1_interval(y_true, y_pred, n_classes: int, rng: np.random.Generator,
                resamples: int = RESAMPLES, clusters=None) -> list[float]:
    """The 95% bootstrap interval of :func:`macro_f1_counts`: the images drawn with replacement
    ``resamples`` times (with ``clusters``, a label per image: whole clusters drawn, as the
    faces of one photo go together), the 2.5th and 97.5th percentiles, rounded to 4 places."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return [0.0, 0.0]
    if clusters is None:
        draws = rng.integers(0, len(y_true), (resamples, len(y_true)))
    else:
        members = list(pd.Series(np.arange(len(y_true))).groupby(np.asarray(clusters)).indices.values())
        picks = rng.integers(0, len(members), (resamples, len(members)))
        draws = [np.concatenate([members[k] for k in pick]) for pick in picks]
    f1s = np.array([macro_f1_counts(y_true[d], y_pred[d], n_classes) for d in draws])
    tail = (100 - CONFIDENCE) / 2
    return [round(float(x), 4) for x in np.percentile(f1s, [tail, 100 - tail])]


def by_group(values: pd.Series, truth, pred, n_classes: int, rng: np.random.Generator,
             resamples: int = RESAMPLES) -> dict:
    """Macro-F1 and accuracy of (truth, pred) per value, with bootstrap intervals, and the gap
    between the best and the worst value; images with no true label (< 0) or no value are left
    out."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    rows = []
    values = pd.Series(values).reset_index(drop=True).where(truth >= 0)
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
    if not rows:
        return {"values": [], "gap": None}
    best = max(rows, key=lambda r: r["macro_f1"])
    worst = min(rows, key=lambda r: r["macro_f1"])
    return {"values": rows, "gap": {
        "best": best["value"], "worst": worst["value"],
        "macro_f1_gap": round(best["macro_f1"] - worst["macro_f1"], 4),
        # the intervals do not overlap: a gap the sampling alone does not explain
        "clear": worst["macro_f1_ci"][1] < best["macro_f1_ci"][0]}}


def _tallies(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int):
    """Per class: true positives, true images, answers (an answer < 0 is a miss)."""
    answered = y_pred >= 0
    return (np.bincount(y_true[answered & (y_true == y_pred)], minlength=n_classes),
            np.bincount(y_true, minlength=n_classes),
            np.bincount(y_pred[answered], minlength=n_classes))


def _f1(tp, n_true, n_pred) -> tuple[np.ndarray, np.ndarray]:
    """(per-class F1 = 2 TP / (true + predicted), 0 for a class in neither; which classes are
    present in truth or answers). The one F1 of facet: every score above comes from it."""
    support = (np.asarray(n_true) + np.asarray(n_pred)).astype(np.float64)
    present = support > 0
    f1 = np.zeros(len(support))
    f1[present] = 2 * np.asarray(tp)[present] / support[present]
    return f1, present


def _macro_f1(tp, n_true, n_pred) -> float:
    f1, present = _f1(tp, n_true, n_pred)
    return float(f1[present].mean()) if present.any() else 0.0


AGE_BANDS = (0, 13, 20, 30, 45, 60, 200)  # years; [lo, hi) per band


def age_bands(years, bands=AGE_BANDS) -> pd.Series:
    """Each real age's band label ("0-12", ..., "60+"); NaN outside the bands."""
    return pd.cut(pd.Series(years), list(bands), right=False,
                  labels=[f"{lo}-{hi - 1}" if hi < 200 else f"{lo}+"
                          for lo, hi in zip(bands, bands[1:])])


def by_age_band(y_true, y_pred, years, bands=AGE_BANDS) -> pd.DataFrame:
    """Macro-F1 and accuracy per band of real age: where an attribute's errors sit (for
    gender, mostly in children). Images with unknown age (< 0) are left out."""
    frame = pd.DataFrame({"true": np.asarray(y_true), "pred": np.asarray(y_pred),
                          "years": np.asarray(years)})
    frame = frame[frame["years"] >= 0]
    frame["band"] = age_bands(frame["years"], bands)
    rows = []
    n_classes = int(max(np.max(y_true, initial=0), np.max(y_pred, initial=0))) + 1
    for band, group in frame.groupby("band", observed=True):
        s = scores(group["true"], group["pred"], n_classes)
        rows.append({"ages": band, "images": len(group), "macro_f1": s["macro_f1"],
                     "accuracy": s["accuracy"]})
    return pd.DataFrame(rows, columns=["ages", "images", "macro_f1", "accuracy"])


def plot_by_age_band(table: pd.DataFrame, path: str | Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(table["ages"].astype(str), table["macro_f1"], color="tab:blue")
    for bar, n in zip(bars, table["images"]):
        ax.annotate(f"{n} img", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="real age (years)", ylabel="val macro-F1", ylim=(0, 1.08), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(confusion, class_names, path: str | Path, title: str) -> None:
    plt = _pyplot()
    cm = np.asarray(confusion)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5.0, 2 + 0.55 * n), max(4.0, 1.5 + 0.5 * n)))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
    ax.set_title(title, fontsize=10)
    ax.set_xticklabels(class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticklabels(class_names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 6 else 10,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history, path: str | Path, title: str) -> None:
    """history: DataFrame with epoch, train_loss, val_loss, val_macro_f1, val_accuracy, and
    val_macro_f1@<source> for each source when there are several."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(history["epoch"], history["train_loss"], "o-", label="train")
    a.plot(history["epoch"], history["val_loss"], "o-", label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(history["epoch"], history["val_macro_f1"], "o-", label="val macro-F1")
    b.plot(history["epoch"], history["val_accuracy"], "s--", label="val accuracy")
    for column in (c for c in history.columns if c.startswith("val_macro_f1@")):
        b.plot(history["epoch"], history[column], "^:", label=f"macro-F1 {column.split('@')[1]}")
    b.set(xlabel="epoch", title="validation")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
