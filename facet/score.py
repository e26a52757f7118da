"""Scoring answers: a submission against the answers, overall and per attribute (`facet
score`), and a photo's detected faces against its annotated ones (:func:`score_photo_faces`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, N_CLASSES, class_names, split_labels
from facet.csvfile import read_csv
from facet.metrics import plot_confusion, scores


IOU = 0.4  # how much a detection must overlap an annotated face to answer for it


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


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def match_faces(truth: list[tuple], found: list[tuple]) -> list[int]:
    """For each found box (best score first), the index of the annotated box it matches
    (greedy, IoU >= :data:`IOU`, each annotated box once), or -1."""
    taken, out = set(), []
    for box in found:
        best = max(((iou(t, box), k) for k, t in enumerate(truth) if k not in taken),
                   default=(0, -1))
        out.append(best[1] if best[0] >= IOU else -1)
        if best[0] >= IOU:
            taken.add(best[1])
    return out


def score_photo_faces(annotated: pd.DataFrame, found: dict[str, list[tuple[tuple, int]]],
                      attribute: str = "mask", scored=None, answers: bool = False) -> dict:
    """Photo -> faces -> answers against the annotated faces: ``annotated`` has a row per face
    (``path``, ``box`` (x, y, w, h), the ``attribute``'s code); ``found`` maps a photo to its
    detections (box, answer code), best score first. Every annotated face of a photo competes
    for its detections (so a detection of a small face is not taken for a large one); the
    ``scored`` rows (a boolean mask; default all) are scored, a face no detection matched as a
    miss. Returns macro-F1, faces, missed and per-class F1 (rounded to 4 places); with
    ``answers``, also the scored faces' ``truth``, ``pred`` (-1: missed) and ``photo`` arrays."""
    pred = np.full(len(annotated), -1)
    position = {index: k for k, index in enumerate(annotated.index)}
    for path, faces in annotated.groupby("path", sort=False):
        detections = found.get(path, [])
        owner = match_faces(list(faces["box"]), [box for box, _ in detections])
        for (_, answer), k in zip(detections, owner):
            if k >= 0:
                pred[position[faces.index[k]]] = answer
    rows = np.ones(len(annotated), bool) if scored is None else np.asarray(scored, bool)
    truth, pred = annotated[attribute].to_numpy()[rows], pred[rows]
    classes = ATTRIBUTES[attribute]
    s = scores(truth, pred, len(classes))
    return {"macro_f1": round(s["macro_f1"], 4), "faces": int(rows.sum()),
            "missed": int((pred < 0).sum()),
            "per_class_f1": {c: round(f, 4) for c, f in zip(classes, s["per_class_f1"])},
            **({"truth": truth, "pred": pred, "photo": annotated["path"].to_numpy()[rows]}
               if answers else {})}


def plot(result: dict, path: Path) -> None:
    plot_confusion(result["confusion"], class_names(), path,
                   f"18-class confusion (macro-F1 {result['macro_f1']:.3f})")
