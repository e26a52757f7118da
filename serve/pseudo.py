"""Pseudo-labels (`facet pseudo-label`): the models' confident answers on unlabelled photos,
as a manifest that `facet train --manifest` reads as one more source, trained on and never
validated on (its ``pseudo`` column).

No torch here: numpy and pandas only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES
from facet.faces import Face
from facet.manifest import BOX_COLUMNS, LABELS, PSEUDO
from facet.image_files import header_size

from .results import BatchResult

DECIMALS = 6  # probabilities are rounded before the rule runs: it decides on what is written


@dataclass
class Kept:
    """One attribute's answers: per class, the answered rows, the kept ones and the cut."""

    answered: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    cut: dict[str, list[float]] = field(default_factory=dict)  # the confidence a kept answer
    #                                                            needs (one per group)

    def line(self, attribute: str) -> str:
        def needs(cuts: list[float]) -> str:
            low, high = min(cuts), max(cuts)
            return f" (>= {low:.3f})" if low == high else f" (>= {low:.3f}-{high:.3f})"
        parts = [f"{c} {self.kept[c]:,} of {n:,}" + (needs(self.cut[c]) if n else "")
                 for c, n in self.answered.items()]
        total = f"{sum(self.kept.values()):,} of {sum(self.answered.values()):,}"
        return f"{attribute}: kept {total} | " + ", ".join(parts)


def keep(probs: np.ndarray, quantile: float | None = 0.5, threshold: float | None = None,
         groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[int, list[float]]]:
    """(kept, predicted class, cuts per class) for (N, k) probabilities; a NaN row (a failed
    image) is never kept. ``threshold``, when given, is the confidence every class needs;
    else each predicted class keeps its answers at or above its own ``quantile`` of the
    confidence (0.5: the median, its most confident half), so a rare class keeps its share.
    ``groups`` (one value per row, e.g. the collection a photo comes from): the quantile is
    taken within each group too, so a group the models are less sure of keeps its share."""
    answered = ~np.isnan(probs).any(axis=1)
    pred = np.where(answered, np.nan_to_num(probs, nan=-1).argmax(axis=1), -1)
    confidence = np.where(answered, np.nan_to_num(probs, nan=-1).max(axis=1), -1)
    groups = np.zeros(len(probs)) if groups is None else np.asarray(groups)
    kept, cut = np.zeros(len(probs), bool), {}
    for g in np.unique(groups):
        for c in np.unique(pred[answered & (groups == g)]):
            rows = answered & (pred == c) & (groups == g)
            value = float(threshold if threshold is not None
                          else np.quantile(confidence[rows], quantile))
            cut.setdefault(int(c), []).append(value)
            kept |= rows & (confidence >= value)
    return kept, pred, cut


def pseudo_manifest(paths: list, result: BatchResult, attributes: list[str],
                    quantile: float | None = 0.5, threshold: float | None = None,
                    boxes: bool = False, groups: np.ndarray | None = None
                    ) -> tuple[pd.DataFrame, dict[str, Kept]]:
    """(the manifest, what each attribute kept; ``groups``: see :func:`keep`). One row per
    photo with at least one kept label: ``path`` (absolute), ``group`` (the path), the face
    box ``x0,y0,x1,y1`` of the answered face (``boxes``: the models crop faces; empty where
    none was found), a label column per attribute (empty where not kept, and for the
    attributes not asked for), every probability ``p_<attribute>_<class>`` and ``pseudo`` = 1."""
    n = len(paths)
    path = [os.path.abspath(str(p)) for p in paths]
    out = pd.DataFrame({"path": path, "group": path})
    if boxes:
        corners = [_inside(f, header_size(p)) if f is not None else None
                   for p, f in zip(paths, result.primary or [None] * n)]
        for k, name in enumerate(BOX_COLUMNS[0]):
            out[name] = [round(float(c[k]), 2) if c else "" for c in corners]
    probs = {a: np.round(result.attributes[a].astype(np.float64), DECIMALS) for a in ATTRIBUTES}
    summary, any_kept = {}, np.zeros(n, bool)
    for a, classes in ATTRIBUTES.items():
        column = np.full(n, "", object)
        if a in attributes:
            kept, pred, cut = keep(probs[a], quantile, threshold, groups)
            column[kept] = [classes[c] for c in pred[kept]]
            any_kept |= kept
            summary[a] = Kept({c: int((pred == k).sum()) for k, c in enumerate(classes)},
                              {c: int((kept & (pred == k)).sum()) for k, c in enumerate(classes)},
                              {classes[k]: v for k, v in cut.items()})
        out[LABELS[a]] = column
    for a, classes in ATTRIBUTES.items():
        for k, c in enumerate(classes):
            out[f"p_{a}_{c}"] = probs[a][:, k]
    out[PSEUDO] = 1
    return out[any_kept].reset_index(drop=True), summary


def _inside(face: Face, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The face box's corners in photo pixels, clipped at both ends to the photo: where the
    detector's box reaches past an edge, the manifest names the face's visible part (a
    manifest's box lies in its image). The crop rule's square keeps its centre within half
    the overhang, and its side unless the clipped side was the box's longer one."""
    x, y, w, h = face.box
    width, height = size
    return max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
