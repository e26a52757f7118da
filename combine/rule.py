"""Rule-based combiner: three attribute predictions -> the 18 competition classes."""
from __future__ import annotations

import numpy as np

from .labels import AGE, GENDER, MASK, N_CLASSES


def combine_labels(mask, gender, age) -> np.ndarray:
    """Vectorised class = 6*mask + 3*gender + age."""
    mask, gender, age = (np.asarray(x, dtype=np.int64) for x in (mask, gender, age))
    return 6 * mask + 3 * gender + age


def split_labels(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised inverse of :func:`combine_labels`."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"class labels must lie in 0..{N_CLASSES - 1}")
    return labels // 6, (labels % 6) // 3, labels % 3


def combine_probs(p_mask, p_gender, p_age) -> np.ndarray:
    """P(class) = P(mask) x P(gender) x P(age), in class order; shape (N, 18).

    The attributes are modelled independently, so the product is the joint the three models
    imply; its argmax equals the combined argmaxes, and rows sum to 1 when each input does.
    """
    p_mask, p_gender, p_age = (np.asarray(p, dtype=np.float32) for p in (p_mask, p_gender, p_age))
    for name, p, k in (("mask", p_mask, len(MASK)), ("gender", p_gender, len(GENDER)),
                       ("age", p_age, len(AGE))):
        if p.ndim != 2 or p.shape[1] != k:
            raise ValueError(f"{name} probabilities must have shape (N, {k}), got {p.shape}")
    joint = np.einsum("nm,ng,na->nmga", p_mask, p_gender, p_age)
    return joint.reshape(len(p_mask), N_CLASSES)
