"""A training run's folder: the names of the files `facet train` writes into it, the one place
they are spelled (training, cross-validation, the label audit, export and tracking read them).

A cross-validation folder (``--fold all``) holds one run folder per fold (:func:`fold`), its
summary :data:`CV_SUMMARY` and the out-of-fold answers :data:`OOF`. No imports: the serving
side and tracking may use these names without torch.
"""
from __future__ import annotations

BEST = "best.safetensors"  # the kept checkpoint's weights (the best val score so far)
BEST_META = "best.json"  # its metadata, the JSON twin that ``checkpoint.save_weights`` writes
LAST = "last.pt"  # the last finished epoch: model, optimiser and history, for --resume
RECIPE = "recipe.json"  # the resolved recipe, data and environment of the run
METRICS = "metrics.csv"  # one row per epoch
VAL = "val.csv"  # the validation images and their labels
VAL_PROBS = "val_probs.npy"  # the best checkpoint's probabilities on val.csv, row for row
PROBLEMS = "problems.txt"  # data problems skipped (only when there were any)
CURVES = "curves.png"
CONFUSION = "confusion.png"
VAL_BY_AGE = "val_by_age.csv"  # macro-F1 per real-age band (only with real ages)
VAL_BY_AGE_PLOT = "val_by_age.png"

CV_SUMMARY = "cv.json"  # a cross-validation folder's summary (folds finished, scores)
OOF = "oof.csv"  # every labelled image answered by the fold that did not train on it


def fold(k: int) -> str:
    """Fold ``k``'s run folder inside a cross-validation folder."""
    return f"fold{k}"
