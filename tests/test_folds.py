"""Fold ensembles: `--fold all` (out-of-fold predictions, resume), exported ensembles that
average their members inside the graph, and flip TTA baked into the graph."""
import json
import os

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY
from facet.cli import app
from facet.export.onnx_export import export_attribute
from facet.metrics import scores
from facet.preprocess import PreprocessSpec, load, normalize
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cv_root(dataset, tmp_path_factory):
    """A 3-fold cross-validation of gender on the synthetic data."""
    root = tmp_path_factory.mktemp("cv") / "gender"
    cache = root.parent / "cache"
    result = runner.invoke(app, ["train", "gender", "--data", str(dataset / "train"), "--run-dir",
                                 str(root), "--cache-dir", str(cache), "--device", "cpu",
                                 "--workers", "0", "--folds", "3", "--fold", "all",
                                 *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "out-of-fold macro-F1" in result.output
    return root


def test_every_person_is_validated_exactly_once(cv_root, dataset):
    cv = json.loads((cv_root / "cv.json").read_text())
    oof = pd.read_csv(cv_root / "oof.csv")
    assert cv["finished"] == [0, 1, 2] and len(cv["per_fold_macro_f1"]) == 3
    train = pd.read_csv(dataset / "train" / "train.csv")
    assert len(oof) == cv["oof_images"] == 7 * len(train)  # every image, once
    assert oof["path"].is_unique
    assert (oof.groupby("person")["fold"].nunique() == 1).all()  # a person in one fold only
    assert oof["person"].nunique() == len(train)
    for k in range(3):  # each fold's rows are that run's own val split and probabilities
        val = pd.read_csv(cv_root / f"fold{k}" / "val.csv")
        assert set(oof.loc[oof["fold"] == k, "path"]) == set(val["path"])
    assert cv["oof_macro_f1"] == pytest.approx(scores(oof["label"], oof["pred"], 2)["macro_f1"])
    assert cv["mean_macro_f1"] == pytest.approx(np.mean(cv["per_fold_macro_f1"]))


def test_fold_all_resumes_fold_by_fold(cv_root, dataset, tmp_path):
    import shutil
    root = shutil.copytree(cv_root, tmp_path / "gender")
    args = ["train", "gender", "--data", str(dataset / "train"), "--run-dir", str(root),
            "--cache-dir", str(cv_root.parent / "cache"), "--device", "cpu", "--workers", "0",
            "--fold", "all"]
    result = runner.invoke(app, args)  # not asked to resume: the folds there are not overwritten
    assert result.exit_code == 2 and "--resume" in result.output
    # a job killed during fold 2: folds 0 and 1 finished, fold 2 never started
    cv = json.loads((root / "cv.json").read_text())
    (root / "cv.json").write_text(json.dumps({"recipe": cv["recipe"], "finished": [0, 1]}))
    shutil.rmtree(root / "fold2")
    kept = os.stat(root / "fold0" / "best.safetensors").st_mtime_ns
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert os.stat(root / "fold0" / "best.safetensors").st_mtime_ns == kept  # not retrained
    assert json.loads((root / "cv.json").read_text())["finished"] == [0, 1, 2]
    assert len(pd.read_csv(root / "oof.csv")) == len(pd.read_csv(cv_root / "oof.csv"))
    result = runner.invoke(app, [*args, "--resume", "--set", "lr=0.5"])
    assert result.exit_code == 2 and "another recipe" in result.output


def test_exported_ensemble_is_the_mean_of_its_members(cv_root, runs, dataset, tmp_path):
    out = tmp_path / "models"
    result = runner.invoke(app, ["export", str(runs["mask"]), str(runs["age"]), str(cv_root),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "facet.json").read_text())
    assert len(index["members"]["gender"]) == 3 and len(index["members"]["mask"]) == 1
    info = Predictor(out).info["gender"]
    assert [m["run"] for m in info["members"]] == [
        str((cv_root / f"fold{k}").resolve()) for k in range(3)]
    assert info["temperature"] is None and index["calibration"]["gender"] is None
    spec = PreprocessSpec.from_dict(info["preprocess"])
    paths = [str(p) for p in read_inputs(dataset / "eval").paths[:16]]
    x = normalize(np.stack([load(p, spec) for p in paths]), spec)
    run = lambda f: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    singles = []
    for k, member in enumerate(info["members"]):  # each member exported alone, with its own T
        alone = tmp_path / f"member{k}.onnx"
        export_attribute([cv_root / f"fold{k}"], alone, paths[:4],
                         [{"temperature": member["temperature"], "val_ece": None}])
        singles.append(run(alone))
    np.testing.assert_allclose(run(out / "gender.onnx"), np.mean(singles, axis=0), atol=1e-6)


def test_flip_tta_in_the_graph_equals_tta_in_the_predictor(runs, exported, dataset, tmp_path):
    from facet.export.pipeline import export_all
    baked = tmp_path / "tta"
    export_all(runs, baked, ensemble=True, tta=True, echo=lambda *_: None)
    assert all(Predictor(baked).info[a]["tta"] for a in ("mask", "gender", "age"))
    plain_tta = Predictor(exported, tta=True)
    in_graph, asked_again = Predictor(baked), Predictor(baked, tta=True)
    assert asked_again.tta is False  # never flipped twice
    batch = plain_tta.stack([plain_tta.load(p).inputs[0]
                             for p in read_inputs(dataset / "eval").paths[:24]])
    expected = plain_tta.predict(batch).probs
    np.testing.assert_allclose(in_graph.predict(batch).probs, expected, atol=1e-5)
    np.testing.assert_allclose(asked_again.predict(batch).probs, expected, atol=1e-5)


def test_members_must_share_an_input_spec(runs, dataset, tmp_path, train_tiny):
    other = train_tiny("gender", dataset, tmp_path / "g64", tmp_path / "cache",
                       extra=["image_size=64"]).run_dir
    result = runner.invoke(app, ["export", str(runs["mask"]), str(runs["age"]), str(runs["gender"]),
                                 str(other), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "input spec" in result.output
