"""`facet build-set`: a release's variants chosen on labelled sets, assembled, scored and carded,
on hand-made ONNX models (no training)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES
from facet.preprocess import PreprocessSpec
from facet.serve.batch import predict_paths
from facet.serve.predictor import Predictor

from test_pseudo import _model

runner = CliRunner()


def test_build_set_keeps_int8_where_it_costs_nothing_and_cards_the_scores(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    spec = PreprocessSpec(32, 32)
    for seed, attribute in enumerate(ATTRIBUTES):
        onnx.save(_model(attribute, spec, seed), export / f"{attribute}.onnx")
        # int8 stand-ins: mask and age the same model, gender another (it answers otherwise)
        other = _model(attribute, spec, seed + (10 if attribute == "gender" else 0))
        onnx.save(other, export / f"{attribute}.int8.onnx")
    (export / "facet.json").write_text(json.dumps({"models": {
        "fp32": {a: f"{a}.onnx" for a in ATTRIBUTES},
        "int8": {a: f"{a}.int8.onnx" for a in ATTRIBUTES}}, "calibration": {}}))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(60):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (3,), np.uint8)[None, None].repeat(32, 0)
                        .repeat(32, 1)).save(paths[-1])
    truth = predict_paths(Predictor(export, variant="fp32"), paths, progress=False)
    labels = {a: truth.attributes[a].argmax(1) for a in ATTRIBUTES}  # fp32 is right everywhere
    pd.DataFrame({"path": [p.name for p in paths], "mask": labels["mask"],
                  "gender": labels["gender"], "age_group": labels["age"]}).to_csv(
        tmp_path / "eval.csv", index=False)
    (tmp_path / "notes.md").write_text("## Known failure modes\n\n- none measured here\n")
    out = tmp_path / "set"
    result = runner.invoke(app, ["build-set", str(export), "--out", str(out), "--eval",
                                 f"colours={tmp_path / 'eval.csv'}", "--notes",
                                 str(tmp_path / "notes.md"), "--results", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    built = json.loads((tmp_path / "r.json").read_text())
    assert built["chosen"] == {"mask": "int8", "gender": "fp32", "age": "int8"}
    assert built["int8_delta"]["mask"] == {"colours": 0.0}
    assert built["int8_delta"]["gender"]["colours"] < -0.005
    index = json.loads((out / "facet.json").read_text())
    assert index["default_variant"] == "compact"
    assert index["models"] == {"compact": {"mask": "mask.int8.onnx", "gender": "gender.onnx",
                                           "age": "age.int8.onnx"}}
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(index["models"]["compact"].values())
    assert index["card"]["scores"]["colours"] == {
        "images": 60, "no_face_found": 0, "mask": 1.0, "gender": 1.0, "age": 1.0,
        "18 classes": 1.0, "intervals": {k: [1.0, 1.0] for k in (*ATTRIBUTES, "18 classes")}}
    card = (out / "MODEL_CARD.md").read_text()
    assert ("| colours (60 images) | mask, gender, age | 1.000 (1.000-1.000) | 1.000 (1.000-1.000) "
            "| 1.000 (1.000-1.000) | 1.000 (1.000-1.000) |") in card
    assert "mask int8, gender fp32, age int8" in card and card.endswith("- none measured here\n")

    # the same build reproduces itself; another set of models does not
    same = runner.invoke(app, ["build-set", str(export), "--out", str(tmp_path / "again"),
                               "--eval", f"colours={tmp_path / 'eval.csv'}", "--against", str(out)])
    assert same.exit_code == 0, same.output
    shutil.copy(export / "gender.int8.onnx", out / "gender.onnx")
    differs = runner.invoke(app, ["build-set", str(export), "--out", str(tmp_path / "again"),
                                  "--eval", f"colours={tmp_path / 'eval.csv'}", "--against", str(out)])
    assert differs.exit_code == 1 and "beyond the tolerance" in differs.output
