"""The shipped set from a data folder (`facet build-set --from-data`): the plan (the commands
per attribute and budget, the held-out photos, the training manifests), the benchmark sets, and
the whole command on a tiny data layout with hand-made models standing in for the trained ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES
from facet.models.recipe import load_recipe
from facet.preprocess import PreprocessSpec
from facet.release.plan import (LAYOUT, PlanError, budget_shape, plan, resolve_budget,
                                train_commands)
from facet.release.sets import MASKED, write_sets

from test_pseudo import PHOTOS, _model

runner = CliRunner()
MASKS = ("wear", "incorrect", "not_wear")


def _image(path: Path, colour, size=40) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
    return path.name


def _layout(root: Path) -> Path:
    """The data folder's layout in miniature: every file the plan reads, a few dozen images."""
    rng = np.random.default_rng(0)
    data = root / "data"
    (data / "maskfaces/train/images").mkdir(parents=True)
    eval_ids = [_image(data / f"maskfaces/eval/images/e{i}.png", rng.integers(0, 256, 3))
                for i in range(12)]
    pd.DataFrame({"ImageID": eval_ids, "ans": 0, "mask": [i % 3 for i in range(12)],
                  "gender": [i % 2 for i in range(12)], "age": [(i // 2) % 3 for i in range(12)],
                  "person": range(12)}).to_csv(data / "maskfaces/eval/answers.csv", index=False)
    _image(data / "maskon/m0.png", (1, 2, 3))
    pd.DataFrame({"path": ["m0.png"], "mask": ["wear"], "source": ["x"], "group": ["g0"]}).to_csv(
        data / "maskon/labels.csv", index=False)
    crops, boxes = [], []
    for photo in range(25):
        name = f"p{photo}.jpg"
        shutil.copy(PHOTOS / ("group3.jpg" if photo % 2 else "single.jpg"), data / "realphotos" / name
                    ) if (data / "realphotos").exists() else (
            (data / "realphotos").mkdir(), shutil.copy(PHOTOS / "single.jpg", data / "realphotos" / name))
        for face in range(2):
            mask = MASKS[(photo + face) % 3]
            crops.append({"path": _image(data / f"realmasks/c{photo}_{face}.png",
                                         rng.integers(0, 256, 3)), "mask": mask, "photo": name})
            boxes.append({"photo": name, "file": name, "width": 100, "height": 100,
                          "xmin": 10 + 40 * face, "ymin": 10, "xmax": 40 + 40 * face,
                          "ymax": 40 + 5 * face * (photo % 3 == 0) - 20 * (face and photo == 1),
                          "mask": mask})
    pd.DataFrame(crops).to_csv(data / "realmasks/labels.csv", index=False)
    pd.DataFrame(boxes).to_csv(data / "realphotos/boxes.csv", index=False)
    for source in ("aaf", "aafrest", "utkextra"):
        rows = [{"path": (shutil.copy(PHOTOS / "single.jpg", data / source / f"f{i}.jpg")
                          if (data / source).exists() else
                          ((data / source).mkdir(), shutil.copy(PHOTOS / "single.jpg",
                                                               data / source / f"f{i}.jpg"))[1])
                 and f"f{i}.jpg", "gender": ("male", "female")[i % 2],
                 "age": (8, 25, 40, 70)[(i // 2) % 4], "group": f"g{i}",
                 **({"race": ("white", "asian", "black")[i % 3]} if source == "utkextra" else {})}
                for i in range(30)]
        pd.DataFrame(rows).to_csv(data / source / "labels.csv", index=False)
    return data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _layout(tmp_path_factory.mktemp("release"))


def test_commands_per_attribute_and_budget(tmp_path):
    s, r = Path("/d"), tmp_path
    cpu = train_commands(s, r, "cpu")
    assert cpu["mask"] == [
        "train", "mask", "--data", "/d/maskfaces/train",
        "--manifest", "/d/maskon/labels.csv,group=group",
        "--manifest", f"{r}/realphotos_train.csv,group=photo,name=realphotos",
        "--set", "crop=face", "--run-dir", f"{r}/mask"]
    real = ["--manifest", "/d/aaf/labels.csv,group=group", "--manifest",
            "/d/aafrest/labels.csv,group=group", "--manifest", "/d/utkextra/labels.csv,group=group"]
    for attribute in ("gender", "age"):
        assert cpu[attribute] == ["train", attribute, "--data", "/d/maskfaces/train", *real,
                                  "--set", "crop=face", "--run-dir", f"{r}/{attribute}"]
    gpu = train_commands(s, r, "gpu")
    for attribute in ATTRIBUTES:
        epochs = load_recipe(attribute)[0].epochs
        assert gpu[attribute][-6:] == ["--set", "image_size=176", "--set", f"epochs={2 * epochs}",
                                       "--run-dir", f"{r}/{attribute}"]
        assert gpu[attribute][:-6] == cpu[attribute][:-2]
    import torch
    assert resolve_budget("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(PlanError, match="unknown budget"):
        resolve_budget("tpu")


def test_held_out_photos_are_never_trained_on(data, tmp_path):
    p = plan(data, tmp_path / "runs", "cpu")
    photos = set(pd.read_csv(data / "realmasks/labels.csv")["photo"])
    assert p.held_out and p.held_out < photos
    boxed = pd.read_csv(tmp_path / "runs/realphotos_train.csv")
    assert not set(boxed["photo"]) & p.held_out
    assert set(boxed["photo"]) <= photos - p.held_out
    assert all(Path(x).is_absolute() and Path(x).is_file() for x in boxed["path"])
    evals, photo_sets, record = write_sets(data, tmp_path / "runs", p.held_out)
    spec = dict(e.split("=", 1) for e in evals)
    val = pd.read_csv(spec["realmasks val"])
    crops = pd.read_csv(data / "realmasks/labels.csv")
    assert len(val) == crops["photo"].isin(p.held_out).sum()  # the held-out photos' crops
    held_faces = pd.read_csv(photo_sets[0].split("=", 1)[1])
    assert {Path(x).name for x in held_faces["path"]} <= p.held_out
    utk = pd.read_csv(spec["utkextra val (gender)"])
    assert list(utk.columns) == ["path", "gender", "age_years", "race"] and len(utk) == 6
    assert list(pd.read_csv(spec["aaf val (age)"]).columns) == ["path", "age", "age_years"]
    masked = pd.read_csv(spec[MASKED])  # faces found on the fixture photo: a mask drawn on each
    assert record["masked"]["images"] == len(masked) > 0
    assert all(Path(x).parent.name == "aaf_masked" for x in masked["path"])


def test_missing_data_folder_and_export_or_data(data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    shutil.rmtree(broken / "aafrest")
    with pytest.raises(PlanError, match="aafrest/labels.csv"):
        plan(broken, tmp_path / "runs", "cpu")
    result = runner.invoke(app, ["build-set", "--from-data", str(broken), "--runs",
                                 str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error:" in result.output and "aafrest" in result.output
    both = runner.invoke(app, ["build-set", str(tmp_path), "--from-data", str(data), "--out",
                               str(tmp_path / "out")])
    neither = runner.invoke(app, ["build-set", "--out", str(tmp_path / "out")])
    assert both.exit_code == neither.exit_code == 2
    assert "not both" in both.output and "one of them" in neither.output
    assert set(LAYOUT) >= {"aafrest/labels.csv", "utkextra/labels.csv"}


def test_from_data_builds_the_set_with_trained_runs_in_place(data, tmp_path):
    """Runs already trained and exported (hand-made models): the command trains nothing, writes
    the sets and builds the card, with the budget and commands, intervals and groups."""
    runs = tmp_path / "runs"
    export = runs / "export"
    export.mkdir(parents=True)
    for seed, attribute in enumerate(ATTRIBUTES):
        (runs / attribute).mkdir()
        (runs / attribute / "best.safetensors").write_bytes(b"")
        (runs / attribute / "recipe.json").write_text(
            json.dumps({"recipe": budget_shape(attribute, "cpu")}))
        onnx.save(_model(attribute, PreprocessSpec(32, 32, crop="face"), seed),
                  export / f"{attribute}.onnx")
    (export / "facet.json").write_text(json.dumps({"models": {
        "fp32": {a: f"{a}.onnx" for a in ATTRIBUTES}}}))
    out = tmp_path / "set"
    gpu = runner.invoke(app, ["build-set", "--from-data", str(data), "--runs", str(runs),
                              "--out", str(out), "--budget", "gpu"])
    assert gpu.exit_code == 2 and "the gpu budget trains" in gpu.output  # not a card that lies
    assert not out.exists()
    result = runner.invoke(app, ["build-set", "--from-data", str(data), "--runs", str(runs),
                                 "--out", str(out), "--budget", "cpu", "--results",
                                 str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "$" not in result.output  # nothing trained or exported
    card = json.loads((out / "facet.json").read_text())["card"]
    assert card["release"]["budget"] == "cpu"
    assert card["release"]["commands"]["gender"].startswith("facet train gender --data ")
    scores = card["scores"]
    assert {"maskfaces eval", "realmasks val", "realphotos held-out photos", MASKED,
            *(f"{s} val ({a})" for s in ("aaf", "aafrest", "utkextra") for a in ("gender", "age"))
            } == set(scores)
    assert "age" not in scores["aaf val (gender)"]  # its age labels are the age run's training data
    by = scores["utkextra val (gender)"]["by"]["gender"]
    assert [v["value"] for v in by["race"]] == ["asian", "black", "white"]
    assert "age band" in by and "intervals" in scores["realphotos held-out photos"]
    text = (out / "MODEL_CARD.md").read_text()
    (tmp_path.parent / "card.md").write_text(text)
    assert "## Where it fails" in text and "budget `cpu`" in text and "utkextra" in text
    from facet.cli.info import render
    listed = render({"folder": str(out), "default_variant": "compact", "variants": {},
                     "ensemble": [], "attributes": {}, "evaluations": {}, "card": card})
    assert "    gender by race: asian " in listed and "mask 0." in listed and "[0." in listed
    old = {"scores": {"aaf val": {"images": 9, "gender": 0.9, "gender by age band": {"0-12": 0.5}}}}
    assert "gender 0.900, gender by age band {'0-12': 0.5}" in render(
        {"folder": "x", "default_variant": "compact", "variants": {}, "ensemble": [],
         "attributes": {}, "evaluations": {}, "card": old})  # a card written before intervals
