import numpy as np
import pandas as pd
import pytest

from facet.models.split import split_by_person


def _frame(persons=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, persons, p=[0.55, 0.35, 0.10])
    return pd.DataFrame({"person": np.repeat([f"{i:04d}" for i in range(persons)], 7),
                         "age": np.repeat(labels, 7)})


def test_no_person_on_both_sides_and_proportions_hold():
    frame = _frame()
    train, val = split_by_person(frame, frame["age"], folds=5, fold=2, seed=7)
    assert not set(frame["person"].iloc[train]) & set(frame["person"].iloc[val])
    assert len(train) + len(val) == len(frame) and not set(train) & set(val)
    overall = frame["age"].value_counts(normalize=True)
    part = frame["age"].iloc[val].value_counts(normalize=True)
    assert (abs(part - overall) < 0.03).all()
    assert 0.17 < len(val) / len(frame) < 0.23


def test_folds_cover_every_person_once_and_seed_is_repeatable():
    frame = _frame(100)
    vals = [split_by_person(frame, frame["age"], 5, k, seed=1)[1] for k in range(5)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(frame)))
    again = split_by_person(frame, frame["age"], 5, 0, seed=1)[1]
    assert again.tolist() == vals[0].tolist()
    other = split_by_person(frame, frame["age"], 5, 0, seed=2)[1]
    assert other.tolist() != vals[0].tolist()


def test_bad_fold_arguments():
    frame = _frame(3)
    with pytest.raises(ValueError, match="fold 5"):
        split_by_person(frame, frame["age"], 5, 5)
    with pytest.raises(ValueError, match="3 persons"):
        split_by_person(frame, frame["age"], 5, 0)
