"""`facet tune` (Optuna) and `--track mlflow` on the tiny synthetic data."""
import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from facet import privacy, tracking
from facet.cli import app
from facet.models.recipe import load_recipe
from facet.models.tune import PLOTS

from conftest import TINY

runner = CliRunner()

# Only lr is searched (the mask space's other fields are pinned), with flips only, no lr
# warm-up and no class balancing: after the first epoch's 10 steps lr 1e-2 has learnt the
# drawn masks (val macro-F1 ~0.58) and lr 1e-6 nothing (its zero-initialised head answers the
# first class: ~0.28). Deterministic on the CPU.
PINNED = ["ema=0", "drop_rate=0", "label_smoothing=0", "weight_decay=0.02"]
BASE = [*TINY, "epochs=2", "samples_per_epoch=320", "aug_groups=flip", "warmup_epochs=0",
        "sampler=none", *PINNED]
GOOD_LR, BAD_LR = 1e-2, 1e-6


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _cpu(cache) -> list[str]:
    return ["--cache-dir", str(cache), "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary MLflow store (SQLite, artifacts beside it) named by MLFLOW_TRACKING_URI."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # the store's default artifact root is ./mlruns
        yield MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def study(dataset, store, tmp_path_factory):
    """`facet tune mask --trials 3`, tracked, on a study whose first trials are a good and a bad
    lr (enqueued like any Optuna user would); the recipe's own values come third."""
    root = tmp_path_factory.mktemp("tune")
    study_dir, url = root / "study", f"sqlite:///{root / 'study' / 'tune.db'}"
    study_dir.mkdir()
    created = optuna.create_study(storage=url, study_name="mask", direction="maximize")
    created.enqueue_trial({"lr": GOOD_LR})
    created.enqueue_trial({"lr": BAD_LR})

    def args(trials: int) -> list[str]:
        return ["tune", "mask", "--data", str(dataset / "train"), *_sets(BASE),
                "--trials", str(trials), "--study-dir", str(study_dir), "--min-epochs", "1",
                "--startup-trials", "1", "--track", "mlflow", *_cpu(root / "cache")]

    result = runner.invoke(app, args(3))
    assert result.exit_code == 0, result.output
    return SimpleNamespace(dir=study_dir, url=url, args=args, output=result.output)


def _trials(study) -> list:
    return optuna.load_study(study_name="mask", storage=study.url).trials


def test_tune_prunes_a_bad_trial_after_one_epoch(study):
    good, bad, baseline = _trials(study)[:3]
    assert good.state == TrialState.COMPLETE and list(good.intermediate_values) == [1, 2]
    assert bad.state == TrialState.PRUNED and list(bad.intermediate_values) == [1]
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    assert f"lr={BAD_LR}" in bad.user_attrs["overrides"]
    assert len(pd.read_csv(study.dir / "trial_1" / "metrics.csv")) == 1  # it stopped there
    assert (study.dir / "trial_1" / "best.safetensors").is_file()  # and kept its checkpoint
    assert len(pd.read_csv(study.dir / "trial_0" / "metrics.csv")) == 2
    assert baseline.user_attrs["baseline"] and baseline.params["lr"] == load_recipe("mask")[0].lr
    for trial in (good, bad, baseline):  # the --set of searched fields pinned them
        assert (trial.params["ema"], trial.params["drop_rate"]) == (0.0, 0.0)
    assert "trial 1: pruned after epoch 1" in study.output


def test_study_folder_has_summary_and_plots(study):
    summary = json.loads((study.dir / "study.json").read_text())
    trials = _trials(study)[:3]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert summary["trials"]["total"] == 3
    assert summary["trials"]["complete"] == len(complete)
    assert summary["trials"]["pruned"] == 3 - len(complete)
    assert summary["best"]["trial"] == best.number
    assert summary["best"]["overrides"] == best.user_attrs["overrides"]
    assert summary["baseline"] is None or summary["baseline"]["trial"] == 2
    for name in PLOTS:  # importances need two complete trials
        assert (study.dir / f"{name}.png").is_file() == (
            name != "param_importances" or len(complete) >= 2)


def test_tune_trials_are_nested_mlflow_runs(study, store):
    experiment = store.get_experiment_by_name("facet-mask")
    runs = store.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.info.run_name == "tune mask")
    children = {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["trial_0", "trial_1", "trial_2"]
    good, bad = children["trial_0"], children["trial_1"]
    assert good.info.status == "FINISHED" and bad.info.status == "KILLED"  # pruned
    assert float(bad.data.params["lr"]) == BAD_LR
    assert [m.step for m in store.get_metric_history(good.info.run_id, "val_selected")] == [1, 2]
    assert [m.step for m in store.get_metric_history(bad.info.run_id, "val_selected")] == [1]
    assert "best_val_macro_f1" in parent.data.metrics
    logged = {a.path for a in store.list_artifacts(parent.info.run_id)}
    assert {"study.json", "optimization_history.png"} <= logged


def test_a_second_process_adds_trials_to_the_same_study(study):
    done = subprocess.run([sys.executable, "-m", "facet.cli", *study.args(1)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 trial(s) so far" in done.stdout
    trials = _trials(study)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1  # not enqueued again
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert json.loads((study.dir / "study.json").read_text())["trials"]["total"] == 4
    assert (study.dir / "trial_3" / "metrics.csv").is_file()


def test_a_study_is_not_resumed_with_another_recipe(study):
    args = study.args(1)
    args[args.index("epochs=2")] = "epochs=3"
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "another recipe or data (epochs 2 -> 3)" in result.output


def test_train_from_study_uses_the_best_overrides(study, dataset, tmp_path):
    best = optuna.load_study(study_name="mask", storage=study.url).best_trial
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "mask", "--data", str(dataset / "train"),
                                 "--from-study", str(study.dir), *_sets([*TINY, "drop_rate=0.1"]),
                                 "--run-dir", str(run), "--track", "none", *_cpu(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert f"trial {best.number}" in result.output
    recipe = json.loads((run / "recipe.json").read_text())["recipe"]
    assert recipe["lr"] == best.params["lr"]
    assert recipe["drop_rate"] == 0.1  # an explicit --set wins over the study's 0.0
    wrong = runner.invoke(app, ["train", "gender", "--data", str(dataset / "train"),
                                "--from-study", str(study.dir)])
    assert wrong.exit_code == 2 and "tunes mask, not gender" in wrong.output
    missing = runner.invoke(app, ["train", "mask", "--data", str(dataset / "train"),
                                  "--from-study", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no study in" in missing.output


def test_training_run_is_tracked(dataset, store, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "gender", "--data", str(dataset / "train"),
                                 *_sets([*TINY, "epochs=2"]), "--run-dir", str(run),
                                 *_cpu(tmp_path / "cache")])  # on: MLFLOW_TRACKING_URI is set
    assert result.exit_code == 0, result.output
    experiment = store.get_experiment_by_name("facet-gender")
    [tracked] = store.search_runs([experiment.experiment_id],
                                  f"tags.run_dir = '{run.resolve()}'")
    assert tracked.info.status == "FINISHED"
    params = tracked.data.params
    assert params["backbone"] == "test_efficientnet" and params["image_size"] == "48"
    assert params["mean"] == "0.5,0.5,0.5" and params["age_drop"] == "none"
    assert tracked.data.tags["data"] == "280 images of 40 persons"
    metrics = pd.read_csv(run / "metrics.csv")
    history = store.get_metric_history(tracked.info.run_id, "val_macro_f1")
    assert [(m.step, m.value) for m in history] == list(zip(metrics["epoch"], metrics["val_macro_f1"]))
    assert {"val_f1_male", "train_loss", "lr"} <= set(tracked.data.metrics)
    logged = {a.path for a in store.list_artifacts(tracked.info.run_id)}
    assert {"best.json", "best.safetensors", "curves.png", "confusion.png", "recipe.json",
            "metrics.csv"} <= logged


def test_export_is_tracked(runs, store, tmp_path):
    out = tmp_path / "artifacts"
    result = runner.invoke(app, ["export", *map(str, runs.values()), "--out", str(out),
                                 "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    experiment = store.get_experiment_by_name("facet-export")
    [tracked] = store.search_runs([experiment.experiment_id], f"tags.out_dir = '{out.resolve()}'")
    gender = json.loads((runs["gender"] / "best.json").read_text())
    assert tracked.data.metrics["gender.val_macro_f1"] == pytest.approx(gender["val_macro_f1"])
    index = json.loads((out / "facet.json").read_text())
    assert float(tracked.data.params["age.temperature"]) == index["calibration"]["age"]["temperature"]
    assert len(tracked.data.params["mask.checkpoint_sha256"]) == 64
    logged = {a.path for a in store.list_artifacts(tracked.info.run_id)}
    assert logged == {"mask.onnx", "gender.onnx", "age.onnx", "ensemble.onnx", "facet.json"}


def test_metric_names_fit_mlflow():
    assert tracking.metric_name("val_f1_>=60@realmasks") == "val_f1_ge60/realmasks"
    assert tracking.metric_name("val_f1_<30") == "val_f1_lt30"


def test_tracking_follows_the_environment_and_defaults_to_a_local_sqlite_file(monkeypatch, tmp_path):
    import mlflow
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert type(tracking.tracker()) is tracking.Tracker  # off
    tracking.tracker("mlflow")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert isinstance(tracking.tracker(), tracking.MlflowTracker)
    assert type(tracking.tracker("none")) is tracking.Tracker
    with pytest.raises(tracking.TrackingError, match="mlflow or none"):
        tracking.tracker("wandb")


def test_mlflow_telemetry_is_off_by_default(monkeypatch):
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    privacy.apply_defaults()
    assert MLFLOW_DISABLE_TELEMETRY.get() is True


def test_without_mlflow_track_mlflow_names_the_extra(monkeypatch, dataset, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    result = runner.invoke(app, ["train", "gender", "--data", str(dataset / "train"),
                                 "--track", "mlflow"])
    assert result.exit_code == 2
    assert "pip install 'facet[track]'" in result.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    with caplog.at_level(logging.WARNING, logger="facet.tracking"):
        assert type(tracking.tracker()) is tracking.Tracker  # a set variable alone does not fail
    assert "not tracking" in caplog.text


def test_without_optuna_tune_names_the_extra(monkeypatch, dataset):
    monkeypatch.setitem(sys.modules, "optuna", None)
    monkeypatch.delitem(sys.modules, "facet.models.tune")
    for args in (["tune", "mask", "--trials", "1"], ["train", "mask", "--from-study", "x"]):
        result = runner.invoke(app, [*args, "--data", str(dataset / "train")])
        assert result.exit_code == 2
        assert "needs Optuna: pip install 'facet[tune]'" in result.output
