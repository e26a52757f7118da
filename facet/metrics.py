"""Scores and plots shared by training (per epoch) and `facet score` (submissions)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def scores(y_true, y_pred, n_classes: int) -> dict:
    """Macro-F1 as the competition scored it (over classes present in truth or prediction);
    per-class F1 and the confusion matrix over all ``n_classes``. A prediction < 0 is no answer:
    wrong, a miss for its true class, but no class of its own (it leaves the confusion matrix)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = np.union1d(y_true, y_pred[y_pred >= 0])
    labels = list(range(n_classes))
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro",
                                   zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class_f1": [float(x) for x in f1_score(y_true, y_pred, labels=labels, average=None,
                                                     zero_division=0)],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def macro_f1_from_confusion(confusion) -> float:
    """The macro-F1 of :func:`scores` from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(0) + cm.sum(1)
    present = support > 0
    return float((2 * np.diag(cm)[present] / support[present]).mean()) if present.any() else 0.0


def macro_f1_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """The macro-F1 of :func:`scores` from counts alone (F1 = 2 TP / (true + predicted) per
    class present in truth or answers; an answer < 0 is a miss): fast enough to bootstrap."""
    answered = y_pred >= 0
    tp = np.bincount(y_true[answered & (y_true == y_pred)], minlength=n_classes)
    support = np.bincount(y_true, minlength=n_classes) + np.bincount(y_pred[answered],
                                                                     minlength=n_classes)
    present = support > 0
    return float((2 * tp[present] / support[present]).mean()) if present.any() else 0.0


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
