import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file

from facet.models.checkpoint import load_model, recalibrate_batchnorm
from facet.models.data import read_competition
from facet.models.recipe import load_recipe
from facet.models.train import Trainer


def test_run_folder_has_everything(runs):
    run = runs["age"]
    for name in ("recipe.json", "metrics.csv", "best.safetensors", "best.json", "last.pt",
                 "curves.png", "confusion.png", "val.csv"):
        assert (run / name).is_file(), name
    resolved = json.loads((run / "recipe.json").read_text())
    assert resolved["recipe"]["backbone"] == "test_efficientnet"  # the override is recorded
    assert resolved["recipe"]["age_thresholds"] == [30, 58]  # the age recipe's moved boundary
    assert resolved["augmentations"]["transform"]["transforms"]
    meta = json.loads((run / "best.json").read_text())
    assert meta["preprocess"] == {"height": 48, "width": 48, "resize_mode": "stretch",
                                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert meta["age_rule"]["scored"]["thresholds"] == [30, 60]
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"val_macro_f1", "val_accuracy", "val_f1_>=60", "train_img_per_s"} <= set(metrics.columns)
    assert len(meta["val_confusion"]) == 3


def test_val_scores_by_age_band_cover_the_val_set(runs):
    run = runs["gender"]
    val = pd.read_csv(run / "val.csv")
    bands = pd.read_csv(run / "val_by_age.csv")
    assert (run / "val_by_age.png").is_file()
    assert bands["images"].sum() == len(val)  # every val image has a real age in one band
    pred = np.load(run / "val_probs.npy").argmax(1)
    band = bands.iloc[0]
    lo, _, hi = band["ages"].partition("-")
    rows = val["age_years"].between(int(lo), int(hi) if hi else 999)
    assert band["images"] == rows.sum()
    assert band["accuracy"] == pytest.approx((pred[rows] == val["label"][rows]).mean())


def test_by_age_band_skips_unknown_ages():
    from facet.metrics import by_age_band

    table = by_age_band([0, 1, 1, 0], [0, 1, 0, 0], [5, 70, 40, -1])
    assert table["ages"].tolist() == ["0-12", "30-44", "60+"]
    assert table["images"].tolist() == [1, 1, 1]
    assert table["accuracy"].tolist() == [1.0, 0.0, 1.0]


def test_checkpoints_load_safely(runs):
    run = runs["gender"]
    state = load_file(str(run / "best.safetensors"))
    assert state["classifier.weight"].shape[0] == 2
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch"} <= set(last)
    model, meta = load_model(run)
    assert meta["attribute"] == "gender" and not model.training


def _prepared(attribute: str, dataset, tmp_path, overrides: list[str]) -> Trainer:
    """A trainer for the synthetic data with its split, cache and datasets made (no model)."""
    recipe, augment = load_recipe(attribute)
    trainer = Trainer(recipe.override(overrides), augment, read_competition(dataset / "train"),
                      tmp_path / "run", tmp_path / "cache", device="cpu", workers=0)
    trainer._prepare()
    return trainer


def test_validation_is_person_level_and_unaugmented(dataset, tmp_path):
    trainer = _prepared("gender", dataset, tmp_path, ["image_size=32"])
    assert trainer.train_set.transform is not None and trainer.val_set.transform is None
    frame = trainer.frame
    train_persons = set(frame["person"].iloc[trainer.train_set.rows])
    val_persons = set(frame["person"].iloc[trainer.val_set.rows])
    assert train_persons and val_persons and not train_persons & val_persons
    a, b = trainer.val_set[0][0], trainer.val_set[0][0]
    assert torch.equal(a, b)  # deterministic preprocessing only


def test_layer_decay_gives_lower_layers_smaller_steps(dataset, tmp_path):
    trainer = _prepared("gender", dataset, tmp_path,
                        ["backbone=test_efficientnet", "pretrained=none", "image_size=32",
                         "layer_decay=0.5", "warmup_epochs=0"])
    recipe = trainer.recipe
    trainer._build(steps_per_epoch=10)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert max(lrs) == pytest.approx(recipe.lr)  # the head keeps the recipe's lr
    assert min(lrs) <= recipe.lr * 0.5 ** 2  # the stem, several groups down, far less
    stem = trainer.model.conv_stem.weight
    assert next(g["lr"] for g in trainer.optimizer.param_groups
                if any(p is stem for p in g["params"])) == min(lrs)


def test_age_drop_removes_boundary_ages_from_training_only(dataset, tmp_path):
    trainer = _prepared("age", dataset, tmp_path, ["image_size=32", "age_drop=30,45"])
    years = trainer.frame["age_years"]
    assert not years.iloc[trainer.train_set.rows].between(30, 45).any()
    assert trainer.split["dropped_boundary_ages"] == int(years.between(30, 45).sum())
    val_years = years.iloc[trainer.val_set.rows]
    # validation keeps every age and scores the true groups
    assert (trainer.val_set.labels == (val_years >= 30).astype(int) + (val_years >= 60)).all()


def test_train_fraction_keeps_whole_persons_and_the_same_val_set(dataset, tmp_path):
    def prepared(fraction: float) -> Trainer:
        return _prepared("gender", dataset, tmp_path, ["image_size=32", f"train_fraction={fraction}"])

    full, half = prepared(1.0), prepared(0.5)
    assert np.array_equal(full.val_set.rows, half.val_set.rows)  # scored on the same images
    persons = full.frame["person"]
    kept = set(persons.iloc[half.train_set.rows])
    assert kept < set(persons.iloc[full.train_set.rows])
    assert len(kept) == round(full.split["train_persons"] * 0.5) == half.split["train_persons"]
    # a kept person brings all of their images
    assert len(half.train_set.rows) == persons.iloc[full.train_set.rows].isin(kept).sum()
    assert np.array_equal(prepared(0.5).train_set.rows, half.train_set.rows)  # seeded


def test_resume_continues_from_last(dataset, tmp_path, train_tiny):
    run = tmp_path / "run"
    train_tiny("mask", dataset, run, tmp_path / "cache", extra=["epochs=2", "patience=5", "ema=0.9"])
    first = pd.read_csv(run / "metrics.csv")
    assert "ema" in torch.load(run / "last.pt", weights_only=True)
    assert first["epoch"].tolist() == [1, 2]
    # resume from last.pt (as after a crash) with a longer schedule: epochs 1-2 are kept
    train_tiny("mask", dataset, run, tmp_path / "cache", extra=["epochs=3", "patience=5", "ema=0.9"],
               resume=True)
    after = pd.read_csv(run / "metrics.csv")
    assert after["epoch"].tolist() == [1, 2, 3]
    assert after.iloc[:2]["val_macro_f1"].tolist() == first["val_macro_f1"].tolist()


def test_training_learns_the_synthetic_mask(dataset, tmp_path, train_tiny):
    result = train_tiny("mask", dataset, tmp_path / "run", tmp_path / "cache",
                        extra=["epochs=4", "samples_per_epoch=640", "lr=3e-3", "patience=4"])
    assert result.best_f1 > 0.8, result.history


def test_early_stopping(dataset, tmp_path, train_tiny):
    result = train_tiny("gender", dataset, tmp_path / "run", tmp_path / "cache",
                        extra=["epochs=6", "patience=1", "lr=1e-9"])
    assert len(result.history) < 6


def test_batchnorm_recalibration_keeps_the_function():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    for bn in model.modules():  # fold: identity statistics, as in converted TFLite weights
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.data.uniform_(0.5, 2.0)
    x = torch.randn(32, 3, 48, 48)
    with torch.no_grad():
        before = model(x)
        assert recalibrate_batchnorm(model, x) > 0
        torch.testing.assert_close(model(x), before, atol=1e-3, rtol=1e-3)
        model.train()
        torch.testing.assert_close(model(x), before, atol=1e-3, rtol=1e-3)  # batch stats agree
    assert recalibrate_batchnorm(model, x) == 0  # real statistics now: nothing to do
