"""Person-level train/val split: no person on both sides, class proportions kept."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from facet.manifest import DataError


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


def split_by_source(frame: pd.DataFrame, stratify: pd.Series, recipe) -> tuple[np.ndarray, np.ndarray]:
    """Each source (``frame["source"]``) split by its own groups with the recipe's folds, fold
    and seed: a source's split does not depend on what other sources are trained with it.

    Pseudo-labelled rows (``frame["pseudo"]`` True) are all trained on and never validated on:
    their labels are the models' guesses, not the truth; so are rows whose masks training
    draws (``frame["drawn"]``). A source of them only is not split."""
    pseudo = np.zeros(len(frame), bool)
    for column in ("pseudo", "drawn"):
        if column in frame.columns:
            pseudo |= frame[column].eq(True).to_numpy()
    train, val = [np.flatnonzero(pseudo)], [np.zeros(0, np.intp)]
    for name, rows in frame.groupby("source", sort=False).indices.items():
        rows = rows[~pseudo[rows]]
        if not len(rows):
            continue
        try:
            t, v = split_by_person(frame.iloc[rows].reset_index(drop=True),
                                   stratify.iloc[rows].reset_index(drop=True),
                                   recipe.folds, recipe.fold, recipe.seed)
        except ValueError as exc:
            raise DataError(f"source {name}: {exc}") from None
        train.append(rows[t])
        val.append(rows[v])
    if len(frame) and pseudo.all():
        raise DataError("every source is pseudo-labelled or drawn: validation needs a labelled "
                        "source (--data or a manifest of true labels) beside them")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
