import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from facet.models import checkpoint, run_folder
from facet.models.checkpoint import load_model, read_meta, recalibrate_batchnorm, save_weights
from facet.models.data import read_competition
from facet.models.recipe import load_recipe
from facet.models.resume import ResumeError
from facet.models.train import Trainer
from facet.models.training_data import loaders

from conftest import TINY


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
                                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                  "crop": "none", "margin": 2.0, "fallback": "frame"}
    assert meta["detector"] is None  # no face detection with crop=none
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


def test_a_crash_after_the_weights_never_exports_stale_metadata(tmp_path, monkeypatch):
    """Export reads a checkpoint's metadata from inside its weights file (one atomic write):
    a crash before the JSON twin is written leaves the twin behind, never the export."""
    model = torch.nn.Linear(2, 2)
    save_weights(model, {"epoch": 1}, tmp_path / run_folder.BEST)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights(model, {"epoch": 2}, tmp_path / run_folder.BEST)
    assert read_meta(tmp_path)["epoch"] == 2
    assert json.loads((tmp_path / run_folder.BEST_META).read_text()) == {"epoch": 1}  # whole
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def _prepared(attribute: str, dataset, tmp_path, overrides: list[str]) -> Trainer:
    """A trainer for the synthetic data with its split, cache and datasets made (no model)."""
    recipe, augment = load_recipe(attribute)
    trainer = Trainer(recipe.override(overrides), augment, read_competition(dataset / "train"),
                      tmp_path / "run", tmp_path / "cache", device="cpu", workers=0)
    trainer._prepare()
    return trainer


def test_validation_is_person_level_and_unaugmented(dataset, tmp_path):
    trainer = _prepared("gender", dataset, tmp_path, ["image_size=32"])
    assert trainer.data.train_set.transform is not None and trainer.data.val_set.transform is None
    frame = trainer.data.frame
    train_persons = set(frame["person"].iloc[trainer.data.train_set.rows])
    val_persons = set(frame["person"].iloc[trainer.data.val_set.rows])
    assert train_persons and val_persons and not train_persons & val_persons
    a, b = trainer.data.val_set[0][0], trainer.data.val_set[0][0]
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
    years = trainer.data.frame["age_years"]
    assert not years.iloc[trainer.data.train_set.rows].between(30, 45).any()
    assert trainer.data.split["dropped_boundary_ages"] == int(years.between(30, 45).sum())
    val_years = years.iloc[trainer.data.val_set.rows]
    # validation keeps every age and scores the true groups
    assert (trainer.data.val_set.labels == (val_years >= 30).astype(int) + (val_years >= 60)).all()


def test_train_fraction_keeps_whole_persons_and_the_same_val_set(dataset, tmp_path):
    def prepared(fraction: float) -> Trainer:
        return _prepared("gender", dataset, tmp_path, ["image_size=32", f"train_fraction={fraction}"])

    full, half = prepared(1.0), prepared(0.5)
    assert np.array_equal(full.data.val_set.rows, half.data.val_set.rows)  # scored on the same images
    persons = full.data.frame["person"]
    kept = set(persons.iloc[half.data.train_set.rows])
    assert kept < set(persons.iloc[full.data.train_set.rows])
    assert len(kept) == round(full.data.split["train_persons"] * 0.5) == half.data.split["train_persons"]
    # a kept person brings all of their images
    assert len(half.data.train_set.rows) == persons.iloc[full.data.train_set.rows].isin(kept).sum()
    assert np.array_equal(prepared(0.5).data.train_set.rows, half.data.train_set.rows)  # seeded


def test_resume_needs_last_pt_and_the_same_recipe(dataset, tmp_path, train_tiny):
    run, cache = tmp_path / "run", tmp_path / "cache"
    with pytest.raises(ResumeError, match="last.pt does not exist"):
        train_tiny("mask", dataset, run, cache, resume=True)  # never silently starts over
    train_tiny("mask", dataset, run, cache, extra=["ema=0.9"])
    first = pd.read_csv(run / "metrics.csv")
    assert "ema" in torch.load(run / "last.pt", weights_only=True)
    for change in ("epochs=2", "lr=3e-4"):  # a longer or different schedule is a new run
        with pytest.raises(ResumeError, match=f"recipe changed \\({change.split('=')[0]} "):
            train_tiny("mask", dataset, run, cache, extra=["ema=0.9", change], resume=True)
    # patience may change; the run is complete, so resuming it trains nothing more
    train_tiny("mask", dataset, run, cache, extra=["ema=0.9", "patience=9"], resume=True)
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), first)


def _cli_train(data, run, cache, *extra) -> subprocess.Popen:
    sets = [a for kv in [*TINY, "epochs=3", "samples_per_epoch=640", "patience=5", "cutmix=0.5",
                         "mixup=0.3", "drop_rate=0.3"] for a in ("--set", kv)]
    return subprocess.Popen([sys.executable, "-m", "facet.cli", "train", "gender", "--data",
                             str(data / "train"), "--run-dir", str(run), "--cache-dir", str(cache),
                             "--device", "cpu", "--workers", "0", *sets, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_run_resumes_to_the_metrics_of_an_unbroken_one(dataset, tmp_path):
    cache = tmp_path / "cache"
    _finished(_cli_train(dataset, tmp_path / "unbroken", cache))
    run = tmp_path / "killed"
    process = _cli_train(dataset, run, cache)
    metrics = run / "metrics.csv"
    while not (metrics.exists() and metrics.read_text().count("\n") == 2):  # header + epoch 1
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2, as a crash would
    process.wait()
    assert len(torch.load(run / "last.pt", weights_only=True)["history"]) < 3
    # as if it had died after writing metrics.csv but before last.pt: a row last.pt lacks
    rows = pd.read_csv(metrics).iloc[:1]
    pd.concat([rows, rows.assign(epoch=2)]).to_csv(metrics, index=False)
    shutil.rmtree(cache)  # a cold cache: the resumed run rebuilds it from the saved recipe
    resumed = subprocess.run([sys.executable, "-m", "facet.cli", "train", "gender", "--data",
                              str(dataset / "train"), "--run-dir", str(run), "--cache-dir",
                              str(cache), "--device", "cpu", "--workers", "0", "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    expected = pd.read_csv(tmp_path / "unbroken" / "metrics.csv")
    got = pd.read_csv(metrics)
    assert got["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(got.drop(columns="train_img_per_s"),
                                  expected.drop(columns="train_img_per_s"), check_exact=False,
                                  rtol=0, atol=1e-6)


def test_training_workers_augment_differently_and_reproducibly(dataset, tmp_path):
    trainer = _prepared("gender", dataset, tmp_path,
                        ["image_size=32", "batch_size=4", "samples_per_epoch=8"])
    trainer.data.train_set.rows[:] = trainer.data.train_set.rows[0]  # every sample: the same image

    def epoch(n: int) -> list[torch.Tensor]:
        loader, _ = loaders(trainer.data, trainer.recipe, trainer.device, workers=2)
        trainer._seed_epoch(loader, n)
        return [x for x, _ in loader]  # batch 0 from worker 0, batch 1 from worker 1

    first, again = epoch(1), epoch(1)
    assert len(first) == 2 and not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], epoch(2)[0])


def test_recipe_sets_schedule_mixing_and_batchnorm_calibration(dataset, tmp_path):
    weights = tmp_path / "folded.safetensors"  # fresh BatchNorms: identity statistics, as folded
    save_file(timm.create_model("test_efficientnet", num_classes=2).state_dict(), weights)
    trainer = _prepared("gender", dataset, tmp_path, [
        "backbone=test_efficientnet", f"pretrained={weights}", "image_size=32",
        "bn_calibration_images=8", "lr=1e-3", "min_lr_factor=0.1", "warmup_lr_factor=0.5",
        "cutmix=0.3", "mixup=0.2", "cutmix_alpha=0.7", "mixup_alpha=0.9"])
    trainer._build(steps_per_epoch=10)
    assert "re-calibrated on 8 training images" in trainer.weights_origin
    assert trainer.scheduler.lr_min == pytest.approx(1e-4)
    assert trainer.scheduler.warmup_lr_init == pytest.approx(5e-4)
    m = trainer.mixer  # a batch is mixed with p 0.5, and then CutMix-ed with p 0.3 / 0.5
    assert (m.mix_prob, m.switch_prob, m.cutmix_alpha, m.mixup_alpha, m.label_smoothing) == \
        pytest.approx((0.5, 0.6, 0.7, 0.9, 0.0))


@pytest.mark.parametrize("loss", ["ce", "focal", "f1"])
def test_mixed_batches_train_with_every_loss(dataset, tmp_path, train_tiny, loss):
    result = train_tiny("gender", dataset, tmp_path / "run", tmp_path / "cache",
                        extra=["cutmix=0.5", "mixup=0.5", f"loss={loss}", "class_weights=balanced"])
    assert np.isfinite(result.history["train_loss"]).all()


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


def test_the_loop_reads_the_device_once_per_logging_interval(dataset, tmp_path, monkeypatch):
    """The loss and confusion stay on the device between reads: a GPU is never waited on per
    step. The epoch's numbers are the same as reading every step."""
    from facet.models import train as train_module
    trainer = _prepared("gender", dataset, tmp_path, [*TINY, "samples_per_epoch=256"])
    loader, _ = loaders(trainer.data, trainer.recipe, trainer.device, workers=0)
    trainer._build(len(loader))
    trainer._seed_epoch(loader, 1)
    reads = []

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kw):
            if sys._getframe(1).f_code.co_filename == train_module.__file__:  # the loop's own
                reads.append(name)
            return original(self, *args, **kw)
        return read

    for name in ("item", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    monkeypatch.setattr(train_module, "LOG_EVERY", 4)
    loss, _, step = trainer._train_epoch(loader, 1, 0)
    assert step == 8 and sorted(reads) == ["cpu", "cpu", "item", "item"]  # after steps 4 and 8
    assert 0 < loss < 10


def test_validation_runs_through_the_compiled_module_when_compile_is_on(dataset, tmp_path):
    for extra, validated in ((["compile=true", "ema=0"], "forward"),
                             (["compile=true", "ema=0.9"], "ema"), (["ema=0"], "plain")):
        trainer = _prepared("gender", dataset, tmp_path, [*TINY, *extra])
        trainer._build(4)
        if validated == "forward":  # one compiled module, switched to eval for validation
            assert trainer.validate is trainer.forward
            assert trainer.forward._orig_mod is trainer.model
        elif validated == "ema":
            assert trainer.validate._orig_mod is trainer.ema.module
        else:
            assert trainer.validate is trainer.model and trainer.forward is trainer.model
