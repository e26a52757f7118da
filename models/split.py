"""Person-level train/val split: no person on both sides, class proportions kept."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def split_by_person(frame: pd.DataFrame, stratify: pd.Series, folds: int = 5, fold: int = 0,
                    seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) for ``fold`` of a seeded StratifiedGroupKFold over persons."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is outside 0..{folds - 1}")
    persons = frame["person"].nunique()
    if persons < folds:
        raise ValueError(f"{persons} persons cannot be split into {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = splitter.split(np.zeros(len(frame)), stratify.to_numpy(), frame["person"].to_numpy())
    for i, (train, val) in enumerate(splits):
        if i == fold:
            return train, val
    raise AssertionError("unreachable")
