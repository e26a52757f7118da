"""Rule-based combiner: three attribute predictions -> the 18 competition classes."""
from __future__ import annotations

import numpy as np

from .labels import ATTRIBUTES, LAYOUT, N_CLASSES, SHAPE


def combine_labels(mask, gender, age) -> np.ndarray:
    """Vectorised :func:`~facet.combine.labels.encode` (the codes must be in range)."""
    return np.ravel_multi_index([np.asarray(x, dtype=np.int64) for x in (mask, gender, age)],
                                SHAPE).astype(np.int64)


def split_labels(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised inverse of :func:`combine_labels`."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"class labels must lie in 0..{N_CLASSES - 1}")
    return tuple(np.asarray(c, np.int64) for c in np.unravel_index(labels, SHAPE))


def combine_probs(p_mask, p_gender, p_age) -> np.ndarray:
    """P(class) = P(mask) x P(gender) x P(age), in class order; shape (N, 18).

    The attributes are modelled independently, so the product is the joint the three models
    imply; its argmax equals the combined argmaxes, and rows sum to 1 when each input does.
    """
    p_mask, p_gender, p_age = (np.asarray(p, dtype=np.float32) for p in (p_mask, p_gender, p_age))
    for name, p in zip(LAYOUT, (p_mask, p_gender, p_age)):
        k = len(ATTRIBUTES[name])
        if p.ndim != 2 or p.shape[1] != k:
            raise ValueError(f"{name} probabilities must have shape (N, {k}), got {p.shape}")
    joint = np.einsum("nm,ng,na->nmga", p_mask, p_gender, p_age)  # LAYOUT's order
    return joint.reshape(len(p_mask), N_CLASSES)
