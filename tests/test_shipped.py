"""The model set shipped inside facet: a real answer with no training and no --models."""
from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from facet import shipped
from facet.cli import app
from facet.combine import ATTRIBUTES
from facet.serve.config import ServeConfig
from facet.serve.predictor import Predictor

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
runner = CliRunner()
pytestmark = pytest.mark.skipif(not (shipped.MODELS / "facet.json").is_file(),
                                reason="the shipped model set is not built")


def test_predict_without_models_answers_a_real_photo_with_the_shipped_set(tmp_path):
    out, details = tmp_path / "answers.csv", tmp_path / "faces.csv"
    result = runner.invoke(app, ["predict", str(PHOTOS), "-o", str(out), "--details", str(details),
                                 "--faces", "all", "--draw", str(tmp_path / "drawn")])
    assert result.exit_code == 0, result.output
    assert shipped.NOTICE in result.output
    faces = pd.read_csv(details)
    # the photos' annotations (tests/fixtures/photos/README.md): three masks worn, one face bare
    group = faces[faces["path"].str.endswith("group3.jpg") & (faces["face"] >= 0)]
    single = faces[faces["path"].str.endswith("single.jpg") & (faces["primary"].astype(str).str.lower() == "true")]
    # every mask is seen; the right-hand one, low on the nose, may read as worn wrongly
    assert len(group) == 3 and set(group["mask"]) <= {"wear", "incorrect"}
    assert (group["mask"] == "wear").sum() >= 2
    assert single["mask"].tolist() == ["not_wear"]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["group3.jpg", "single.jpg"]


def test_the_shipped_set_answers_with_its_compact_variant():
    predictor = Predictor(shipped.MODELS)
    assert predictor.variant == "compact" and predictor.crops_faces
    with pytest.raises(ValueError, match="no fp32 models"):
        Predictor(shipped.MODELS, variant="fp32")
    assert ServeConfig().model_dir == shipped.MODELS


def test_info_describes_the_shipped_set():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for attribute in ATTRIBUTES:
        assert f"\n{attribute}: " in result.output
    assert "compact (default)" in result.output and "crop: face, margin 2.0" in result.output
    assert "aaf" in result.output and "maskfaces" in result.output and "realphotos" in result.output
    info = json.loads(runner.invoke(app, ["info", "--json"]).output)
    # what --json says of the folder is what is in it: the files, their sizes, their metadata
    assert info["folder"] == str(shipped.MODELS) and info["default_variant"] == "compact"
    files = info["variants"]["compact"]
    chosen = info["card"]["chosen"]  # each attribute's file is the variant the build chose
    assert {a: f["file"] for a, f in files.items()} == {
        a: f"{a}.int8.onnx" if chosen[a] == "int8" else f"{a}.onnx" for a in ATTRIBUTES}
    for f in files.values():
        assert f["bytes"] == (shipped.MODELS / f["file"]).stat().st_size > 1_000_000
    for attribute, meta in info["attributes"].items():
        assert meta["attribute"] == attribute and meta["classes"] == list(ATTRIBUTES[attribute])
        assert meta["preprocess"]["crop"] == "face" and meta["preprocess"]["margin"] == 2.0
    assert set(info["card"]["scores"]) >= {"maskfaces eval", "realmasks val", "aaf val (gender)",
                                           "aaf val (age)", "realphotos held-out photos"}


def test_info_refuses_a_folder_without_models(tmp_path):
    result = runner.invoke(app, ["info", "--models", str(tmp_path)])
    assert result.exit_code == 2 and "facet.json not found" in result.output


def test_info_prints_every_score_of_the_card():
    """`facet info` shows what the set was measured on, each score as the card's index holds it."""
    output = runner.invoke(app, ["info"]).output
    scores = json.loads((shipped.MODELS / "facet.json").read_text())["card"]["scores"]
    assert "Research use only" in shipped.CARD.read_text()
    lines = output.splitlines()
    for name, row in scores.items():
        at = next(i for i, x in enumerate(lines) if x.startswith(f"  {name}: "))
        intervals = row.get("intervals", {})
        for key, value in row.items():
            if key in ("intervals", "by"):
                continue
            shown = f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
            if key in intervals:
                shown += f" [{intervals[key][0]:.3f}, {intervals[key][1]:.3f}]"
            assert shown in lines[at]
        groups = [x for x in lines[at + 1:at + 1 + 20] if x.startswith("    ")]
        for attribute, groupings in row.get("by", {}).items():
            for by, values in groupings.items():
                line = next(x for x in groups if x.startswith(f"    {attribute} by {by}: "))
                assert all(f"{v['value']} {v['macro_f1']:.3f}" in line for v in values)


def test_every_shipped_file_is_package_data():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["facet"]
    for path in shipped.MODELS.iterdir():
        name = path.relative_to(shipped.MODELS.parent.parent).as_posix()
        assert any(fnmatch(name, p) for p in patterns), f"{name} is not in the wheel"
