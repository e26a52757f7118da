"""Whether ``confidence`` means what it says: expected calibration error, reliability bins, and
temperature scaling (one scalar per model, fitted on its validation images at export and
applied inside the ONNX graph). Numpy and scipy only."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

BINS = 15
T_RANGE = (0.25, 10.0)
EPS = 1e-12


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Top-label reliability: per equal-width confidence bin, the mean confidence, the accuracy
    and the count. Rows with a label < 0 (no answer) are left out."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        return {"confidence": (np.bincount(which, confidence, bins) / count).tolist(),
                "accuracy": (np.bincount(which, correct, bins) / count).tolist(),
                "count": count.tolist()}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over bins."""
    r = reliability(probs, labels, bins)
    count = np.asarray(r["count"], float)
    gap = np.nan_to_num(np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"])))
    return float((gap * count).sum() / max(count.sum(), 1))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities a model gives with its logits divided by T."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of ``labels`` under scale(probs, T)
    (Guo et al., 2017). T > 1 softens an overconfident model; the argmax never changes. T is
    kept within [0.25, 10]: a model that needs more than that is not one a scalar fixes, and a
    tiny T would magnify rounding noise into different probabilities."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    keep = labels >= 0
    probs, labels = probs[keep], labels[keep]
    if not len(labels):
        return 1.0  # nothing to fit on: leave the model as trained

    def nll(log_t: float) -> float:
        p = scale(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], EPS, 1)).mean())

    best = minimize_scalar(nll, bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded")
    return float(np.exp(best.x))
