"""`facet pseudo-label`: the confident answers of hand-made ONNX models (no training) as a
manifest, and training's promise that pseudo-labelled rows are never validated on."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES, parse_code
from facet.manifest import read_manifest
from facet.models.data import combine
from facet.models.split import split_by_source
from facet.preprocess import PreprocessSpec
from facet.model_metadata import METADATA_KEY

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
runner = CliRunner()
LABEL = {"mask": "mask", "gender": "gender", "age": "age_group"}


def _model(attribute: str, spec: PreprocessSpec, seed: int) -> onnx.ModelProto:
    """Softmax of a fixed random matrix times the image's mean colour (as in test_cli_text)."""
    k = len(ATTRIBUTES[attribute])
    w = np.random.default_rng(seed).normal(0, 4, (3, k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        attribute, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                  ["batch", 3, spec.height, spec.width])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, k], w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(
        {"attribute": attribute, "classes": list(ATTRIBUTES[attribute]),
         "preprocess": spec.to_dict()}))
    return model


def _models(folder: Path, crop: str = "none") -> Path:
    folder.mkdir()
    for seed, attribute in enumerate(ATTRIBUTES):
        onnx.save(_model(attribute, PreprocessSpec(32, 32, crop=crop), seed),
                  folder / f"{attribute}.onnx")
    (folder / "facet.json").write_text(json.dumps(
        {"models": {"fp32": {a: f"{a}.onnx" for a in ATTRIBUTES}}}))
    return folder


def _images(folder: Path, n: int = 41, seed: int = 0) -> Path:
    """Images of one random colour each: the models' answers spread over classes and
    confidences."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)).save(
            folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    return _models(root / "models"), _images(root / "unlabelled")


def _run(models: Path, source: Path, out: Path, *args: str):
    return runner.invoke(app, ["pseudo-label", str(source), "--models", str(models),
                               "--out", str(out), *args])


def _written(out: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    probs = {a: frame[[f"p_{a}_{c}" for c in classes]].astype(float).to_numpy()
             for a, classes in ATTRIBUTES.items()}
    return frame, probs


def _all_answers(models: Path, images: Path, out: Path) -> dict[str, np.ndarray]:
    """Every image's probabilities: --threshold 0 keeps every answer."""
    result = _run(models, images, out, "--threshold", "0")
    assert result.exit_code == 0, result.output
    frame, probs = _written(out)
    assert len(frame) == len(list(images.iterdir()))
    return probs


def test_quantile_keeps_each_classs_most_confident_share(setup, tmp_path):
    models, images = setup
    every = _all_answers(models, images, tmp_path / "all.csv")
    for q in ("0.5", "0.75"):
        result = _run(models, images, tmp_path / "q.csv", *(["--quantile", q] if q != "0.5" else []))
        assert result.exit_code == 0, result.output
        frame, _ = _written(tmp_path / "q.csv")
        kept_paths = set(frame["path"])
        all_paths = sorted(str(p.resolve()) for p in images.iterdir())
        for a, classes in ATTRIBUTES.items():
            pred, conf = every[a].argmax(1), every[a].max(1)
            labels = {p: lab for p, lab in zip(frame["path"], frame[LABEL[a]])}
            seen = set()
            for c, name in enumerate(classes):
                rows = np.flatnonzero(pred == c)
                if not len(rows):
                    continue
                seen.add(name)
                cut = np.quantile(conf[rows], float(q))
                expected = {all_paths[i] for i in rows if conf[i] >= cut}
                got = {p for p in kept_paths if labels[p] == name}
                assert got == expected, (a, name)
                if q == "0.5":  # distinct confidences: the median keeps the top half
                    assert len(got) == math.ceil(len(rows) / 2)
                assert f"{name} {len(expected)} of {len(rows)}" in result.output
            assert len(seen) >= 2, f"the models answer one {a} class only: a weak test"


def test_by_takes_the_quantile_within_each_group_too(setup, tmp_path):
    models, images = setup
    every = _all_answers(models, images, tmp_path / "all.csv")
    paths = sorted(str(p.resolve()) for p in images.iterdir())
    source = np.array(["a" if i % 3 else "b" for i in range(len(paths))])
    manifest = tmp_path / "unlabelled.csv"
    pd.DataFrame({"path": paths, "source": source}).to_csv(manifest, index=False)
    result = _run(models, manifest, tmp_path / "by.csv", "--by", "source")
    assert result.exit_code == 0, result.output
    frame, _ = _written(tmp_path / "by.csv")
    for a, classes in ATTRIBUTES.items():
        pred, conf = every[a].argmax(1), every[a].max(1)
        labels = dict(zip(frame["path"], frame[LABEL[a]]))
        for c, name in enumerate(classes):
            expected = set()
            for g in ("a", "b"):
                rows = np.flatnonzero((pred == c) & (source == g))
                if len(rows):
                    cut = np.quantile(conf[rows], 0.5)
                    expected |= {paths[i] for i in rows if conf[i] >= cut}
            assert {p for p, lab in labels.items() if lab == name} == expected, (a, name)
    assert "quantile 0.5 per class and source" in result.output
    missing = _run(models, manifest, tmp_path / "x.csv", "--by", "collection")
    assert missing.exit_code == 2 and "no such column" in missing.output
    assert not (tmp_path / "x.csv").exists()


def test_threshold_keeps_only_answers_at_or_above_it(setup, tmp_path):
    models, images = setup
    every = _all_answers(models, images, tmp_path / "all.csv")
    result = _run(models, images, tmp_path / "t.csv", "--threshold", "0.8", "--quantile", "0.1")
    assert result.exit_code == 0, result.output
    assert "--threshold 0.8 applies" in result.output
    frame, probs = _written(tmp_path / "t.csv")
    for a, classes in ATTRIBUTES.items():
        kept = frame[LABEL[a]] != ""
        assert (probs[a][kept.to_numpy()].max(1) >= 0.8).all()
        assert (probs[a][~kept.to_numpy()].max(1) < 0.8).all()
        assert kept.sum() == (every[a].max(1) >= 0.8).sum()
    # rows with no label kept are left out
    assert len(frame) == sum(max(every[a][i].max() for a in ATTRIBUTES) >= 0.8
                             for i in range(len(every["mask"])))


def test_the_manifest_round_trips_through_read_manifest(setup, tmp_path):
    models, images = setup
    out = tmp_path / "pseudo.csv"
    result = _run(models, images, out, "--attributes", "gender,age")
    assert result.exit_code == 0, result.output
    frame, probs = _written(out)
    assert (frame["mask"] == "").all() and (frame["pseudo"] == "1").all()
    assert frame["path"].map(lambda p: Path(p).is_absolute()).all()
    assert "x0" not in frame.columns  # crop=none models: the whole image is the face
    table = read_manifest(out, group="group")
    assert len(table.frame) == len(frame) and table.frame["pseudo"].all()
    assert table.frame["path"].tolist() == frame["path"].tolist()
    for a in ATTRIBUTES:
        kept = (frame[LABEL[a]] != "").to_numpy()
        expected = np.where(kept, probs[a].argmax(1), -1)
        assert table.frame[a].tolist() == expected.tolist(), a
        assert [parse_code(a, v) for v in frame.loc[kept, LABEL[a]]] == expected[kept].tolist()
    assert (table.frame["mask"] == -1).all()
    assert "gender: kept" in result.output and "mask: kept" not in result.output


def test_face_models_write_the_answered_faces_box(tmp_path):
    models = _models(tmp_path / "faces", "face")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTOS / "single.jpg", photos / "single.jpg")
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(photos / "blank.png")
    out = tmp_path / "faces.csv"
    result = _run(models, photos, out, "--threshold", "0")
    assert result.exit_code == 0, result.output
    frame, _ = _written(out)
    by_name = frame.set_index(frame["path"].map(lambda p: Path(p).name))
    x0, y0, x1, y1 = (float(by_name.loc["single.jpg", c]) for c in ("x0", "y0", "x1", "y1"))
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    assert (by_name.loc["blank.png", ["x0", "y0", "x1", "y1"]] == "").all()  # no face found
    table = read_manifest(out, group="group")
    boxes = dict(zip(table.frame["path"].map(lambda p: Path(p).name), table.frame["box"]))
    assert boxes["blank.png"] is None
    assert boxes["single.jpg"] == pytest.approx((x0, y0, x1 - x0, y1 - y0))


def _labelled(folder: Path, persons: int = 40) -> Path:
    """A labelled manifest: two images per person, gender alternating."""
    folder.mkdir()
    rows = []
    for i in range(persons * 2):
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(folder / f"l{i}.png")
        rows.append({"path": f"l{i}.png", "person": f"p{i // 2}", "gender": (i // 2) % 2})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


def test_pseudo_rows_all_go_to_train_and_leave_the_labelled_split_alone(setup, tmp_path):
    models, images = setup
    labelled = read_manifest(_labelled(tmp_path / "labelled"), name="labelled")
    recipe = SimpleNamespace(folds=5, fold=1, seed=42)
    alone = labelled.frame
    _, alone_val = split_by_source(alone, alone["gender"], recipe)
    # a pseudo source of fewer rows than folds is not split at all ("too small" never raises)
    three = _images(tmp_path / "three", n=3, seed=5)
    for source, select, name in ((three, ["--threshold", "0"], "few"), (images, [], "many")):
        out = tmp_path / f"{name}.csv"
        assert _run(models, source, out, "--attributes", "gender", *select).exit_code == 0
        pseudo = read_manifest(out, group="group", name=name)
        if name == "few":
            assert len(pseudo.frame) == 3 < recipe.folds
        for order in ([pseudo, labelled], [labelled, pseudo]):
            frame = combine(order).frame
            train, val = split_by_source(frame, frame["gender"], recipe)
            is_pseudo = frame["pseudo"].to_numpy()
            assert is_pseudo[train].sum() == len(pseudo.frame) and not is_pseudo[val].any()
            assert set(frame["path"].iloc[val]) == set(alone["path"].iloc[alone_val])
            assert len(train) + len(val) == len(frame)
            assert "pseudo-labelled" in combine(order).summary()
    with pytest.raises(ValueError, match="every source is pseudo-labelled"):
        split_by_source(pseudo.frame, pseudo.frame["gender"], recipe)


def test_training_scores_and_selects_on_labelled_sources_only(setup, tmp_path):
    """The trainer's val scores and select_on never name a pseudo source (its data step only:
    nothing is trained)."""
    from facet.manifest import DataError
    from facet.models.recipe import load_recipe
    from facet.models.train import Trainer
    models, images = setup
    out = tmp_path / "pseudo.csv"
    assert _run(models, images, out, "--attributes", "gender").exit_code == 0
    table = combine([read_manifest(_labelled(tmp_path / "labelled"), name="labelled"),
                     read_manifest(out, group="group", name="pseudo")])
    recipe, augment = load_recipe("gender")
    tiny = ["backbone=test_efficientnet", "pretrained=none", "image_size=32"]
    trainer = Trainer(recipe.override(tiny), augment, table, tmp_path / "run",
                      tmp_path / "cache", device="cpu", workers=0)
    trainer._prepare()
    assert trainer.data.val_sources == ["labelled"] and trainer.data.select_on == "mean"  # the recipe's
    truth = trainer.data.val_set.labels
    assert list(trainer._by_source(truth, truth)) == ["labelled"]  # the mean is of it alone
    assert trainer.data.split["sources"]["pseudo"]["val_images"] == 0
    assert trainer.data.split["sources"]["pseudo"]["train_images"] == trainer.data.split["pseudo_train_images"] > 0
    val_paths = set(trainer.data.frame["path"].iloc[trainer.data.val_rows])
    assert not val_paths & set(table.frame.loc[table.frame["pseudo"], "path"])
    picky = Trainer(recipe.override([*tiny, "select_on=pseudo"]), augment, table,
                    tmp_path / "run2", tmp_path / "cache", device="cpu", workers=0)
    with pytest.raises(DataError, match="select_on='pseudo'"):
        picky._prepare()


def test_bad_input_is_one_clear_line(setup, tmp_path):
    models, images = setup
    for args, message in [(["--quantile", "1.5"], "Invalid value for '--quantile'"),
                          (["--threshold", "-0.1"], "Invalid value for '--threshold'"),
                          (["--attributes", "mask,hair"], "--attributes: hair")]:
        result = _run(models, images, tmp_path / "x.csv", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    missing = _run(models, tmp_path / "nowhere", tmp_path / "x.csv")
    assert missing.exit_code == 2 and "nowhere does not exist" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "x.csv").exists()
    no_models = _run(tmp_path / "no-models", images, tmp_path / "x.csv")
    assert no_models.exit_code == 2 and "Traceback" not in no_models.output


def test_an_edge_faces_box_is_clipped_at_both_ends_and_read_back(tmp_path):
    """The detector's box of a face at a photo's edge reaches past it: the manifest names the
    visible part (both ends clipped, not only the top and left), which training reads back."""
    from facet.faces import Face
    from facet.serve.pseudo import pseudo_manifest
    from facet.serve.results import Collector
    Image.new("RGB", (100, 80)).save(tmp_path / "edge.jpg")
    collected = Collector(1)
    collected.put([0], {a: np.eye(len(c), dtype=np.float32)[:1] for a, c in ATTRIBUTES.items()},
                  np.eye(18, dtype=np.float32)[:1], [True], [Face((-10.0, 50.0, 40.0, 40.0), 0.9)])
    frame, _ = pseudo_manifest([tmp_path / "edge.jpg"], collected.result([tmp_path / "edge.jpg"]),
                               ["mask"], threshold=0.0, boxes=True)
    assert frame.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [0.0, 50.0, 30.0, 80.0]
    frame.to_csv(tmp_path / "pseudo.csv", index=False)
    table = read_manifest(tmp_path / "pseudo.csv", group="group")
    assert table.problems == [] and table.frame["box"].tolist() == [(0.0, 50.0, 30.0, 30.0)]
