"""Shared fixtures: a synthetic dataset, three tiny trained runs and their export.

Everything is made here, in seconds, with no network and nothing from ../shared.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from facet.synthetic import make_dataset

TINY = ["backbone=test_efficientnet", "image_size=48", "pretrained=none", "epochs=1",
        "samples_per_epoch=128", "batch_size=32"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), persons=40, eval_persons=8, size=64, seed=1)


def train_tiny(attribute: str, data: Path, run_dir: Path, cache: Path, extra=(), resume=False):
    from facet.models.data import read_competition
    from facet.models.recipe import load_recipe
    from facet.models.train import Trainer
    recipe, augment = load_recipe(attribute)
    recipe = recipe.override([*TINY, *extra])
    trainer = Trainer(recipe, augment, read_competition(data / "train"), run_dir, cache,
                      device="cpu", workers=0)
    return trainer.fit(resume=resume)


@pytest.fixture(name="train_tiny", scope="session")
def _train_tiny():
    """train_tiny(attribute, data, run_dir, cache, extra=(), resume=False) -> RunResult"""
    return train_tiny


@pytest.fixture(scope="session")
def runs(dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {a: train_tiny(a, dataset, root / a, root / "cache").run_dir
            for a in ("mask", "gender", "age")}


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory) -> Path:
    from facet.export.pipeline import export_all
    out = tmp_path_factory.mktemp("artifacts")
    export_all(runs, out, ensemble=True, quantize=True, echo=lambda *_: None)
    return out
