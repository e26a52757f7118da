"""`facet score`: a submission against the answers, overall and per attribute."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, N_CLASSES, class_names, split_labels
from facet.csvfile import read_csv
from facet.metrics import plot_confusion, scores


class ScoreError(ValueError):
    pass


def score_files(pred: Path, answers: Path, key: str = "ImageID") -> dict:
    p, a = _read(pred, key, answers=False), _read(answers, key, answers=True)
    merged = a[[key, "ans"]].merge(p[[key, "ans"]], on=key, how="left", suffixes=("", "_pred"))
    # An image with no answer (no row, or an empty ans) counts as wrong, never as left out:
    # leaving failures out would raise the score. -1 is a miss for the true class, no class itself.
    y_true = merged["ans"].astype(int).to_numpy()
    y_pred = merged["ans_pred"].fillna(-1).astype(int).to_numpy()
    answered = y_pred >= 0
    result = {"images": int(len(merged)), "unanswered": int((~answered).sum()),
              **scores(y_true, y_pred, N_CLASSES)}
    result["attributes"] = {}
    for name, t, q in zip(ATTRIBUTES, split_labels(y_true), split_labels(y_pred.clip(0))):
        s = scores(t, np.where(answered, q, -1), len(ATTRIBUTES[name]))
        result["attributes"][name] = {"macro_f1": s["macro_f1"], "accuracy": s["accuracy"]}
    return result


def _read(path: Path, key: str, answers: bool) -> pd.DataFrame:
    """A submission or answers CSV, checked: unique ids and labels that are classes (an empty
    ``ans`` is allowed in a submission: no answer)."""
    frame = read_csv(path, ScoreError, dtype={key: str})
    if key not in frame.columns or "ans" not in frame.columns:
        raise ScoreError(f"{path}: needs columns {key} and ans, has {list(frame.columns)}")
    if frame[key].duplicated().any():
        raise ScoreError(f"{path}: {key} {frame[key][frame[key].duplicated()].iloc[0]!r} "
                         "appears more than once")
    labels = pd.to_numeric(frame["ans"], errors="coerce")
    valid = labels.between(0, N_CLASSES - 1) & (labels % 1 == 0)
    bad = ~valid if answers else frame["ans"].notna() & ~valid
    if bad.any():
        first = frame[bad].iloc[0]
        raise ScoreError(f"{path}: ans {str(first['ans'])!r} for {first[key]} is not a class "
                         f"0..{N_CLASSES - 1}")
    return frame


def plot(result: dict, path: Path) -> None:
    plot_confusion(result["confusion"], class_names(), path,
                   f"18-class confusion (macro-F1 {result['macro_f1']:.3f})")
