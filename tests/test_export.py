import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from facet.combine import combine_probs
from facet.export.onnx_export import OPSET, ParityError, check_parity
from facet.models.checkpoint import file_sha256, load_model
from facet.export.pipeline import export_all
from facet.preprocess import PreprocessSpec
from facet.serve.inputs import read_inputs
from facet.model_metadata import read_info
from facet.serve.predictor import Predictor


def test_files_pass_the_checker_and_carry_metadata(exported, runs):
    manifest = json.loads((exported / "facet.json").read_text())
    for attribute, name in manifest["models"]["fp32"].items():
        proto = onnx.load(str(exported / name))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == OPSET
        info = read_info(exported / name)
        assert info["attribute"] == attribute
        assert info["preprocess"]["height"] == 48 and info["preprocess"]["resize_mode"] == "stretch"
        assert info["checkpoint_sha256"] == file_sha256(runs[attribute] / "best.safetensors")
        assert info["val_macro_f1"] == json.loads((runs[attribute] / "best.json").read_text())["val_macro_f1"]
        assert {"age_rule", "classes", "run", "epoch"} <= set(info)
        data = json.loads((runs[attribute] / "recipe.json").read_text())["data"]
        training = info["training"]  # what `facet info` shows: the run's data and recipe
        assert training["summary"] == data["summary"]
        assert {k: v["train_images"] for k, v in training["sources"].items()} == \
            {k: v["train_images"] for k, v in data["sources"].items()}
        assert training["recipe"]["seed"] == json.loads(
            (runs[attribute] / "best.json").read_text())["recipe"]["seed"]
        report = manifest["parity"][attribute]
        assert report["max_abs_diff"] <= 1e-4 and report["argmax_mismatches"] == 0


def test_dynamic_batch_axis(exported):
    session = ort.InferenceSession(str(exported / "age.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        probs = session.run(None, {"image": np.zeros((n, 3, 48, 48), np.float32)})[0]
        assert probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_parity_failure_is_loud(runs, exported, tmp_path):
    model, meta = load_model(runs["mask"])

    class Shifted(torch.nn.Module):  # stands for an export that drifted from the checkpoint
        def forward(self, x):
            p = model(x).softmax(-1)
            return (p + torch.tensor([0.01, -0.01, 0.0])).clamp(0, 1)

    images = [p for p in sorted((runs["mask"].parent / "mask").glob("val.csv"))]
    paths = __import__("pandas").read_csv(images[0])["path"].head(8).tolist()
    with pytest.raises(ParityError, match="max"):
        check_parity(Shifted().eval(), exported / "mask.onnx",
                     PreprocessSpec.from_dict(meta["preprocess"]), paths)


def test_ensemble_equals_three_sessions_and_the_rule(exported):
    x = np.random.default_rng(0).normal(size=(6, 3, 48, 48)).astype(np.float32)
    run = lambda f: ort.InferenceSession(str(exported / f), providers=["CPUExecutionProvider"])
    merged = run("ensemble.onnx")
    names = [o.name for o in merged.get_outputs()]
    assert names == ["mask_probs", "gender_probs", "age_probs", "probs", "label"]
    out = dict(zip(names, merged.run(None, {"image": x})))
    parts = [run(f"{a}.onnx").run(None, {"image": x})[0] for a in ("mask", "gender", "age")]
    for name, expected in zip(names, parts):
        np.testing.assert_allclose(out[name], expected, atol=1e-6)
    np.testing.assert_allclose(out["probs"], combine_probs(*parts), atol=1e-6)
    assert (out["label"] == out["probs"].argmax(1)).all()
    assert "default_mode" not in json.loads((exported / "facet.json").read_text())


def test_int8_variant_is_measured(exported):
    manifest = json.loads((exported / "facet.json").read_text())
    for attribute, result in manifest["int8_eval"].items():
        assert (exported / manifest["models"]["int8"][attribute]).exists()
        assert result["images"] > 0 and 0 <= result["agreement"] <= 1
        assert result["delta"] == pytest.approx(result["int8_macro_f1"] - result["fp32_macro_f1"])


def test_int8_is_calibrated_and_tracks_fp32(exported, dataset):
    """Static QDQ int8 (activation ranges from real images): dynamic int8 collapsed CNNs."""
    from facet.serve.inputs import read_inputs
    from facet.serve.predictor import Predictor

    manifest = json.loads((exported / "facet.json").read_text())
    for name in manifest["models"]["int8"].values():
        ops = {n.op_type for n in onnx.load(str(exported / name)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    fp32, int8 = Predictor(exported, mode="separate"), Predictor(exported, variant="int8")
    batch = fp32.stack([fp32.load(p).inputs[0] for p in read_inputs(dataset / "eval").paths[:32]])
    a, b = fp32.predict(batch), int8.predict(batch)
    for attribute in a.attributes:
        assert np.abs(a.attributes[attribute] - b.attributes[attribute]).mean() < 0.05


def test_temperature_is_fitted_at_export_and_applied_inside_the_graph(runs, exported, dataset,
                                                                      tmp_path):
    from facet.calibration import scale
    index = json.loads((exported / "facet.json").read_text())
    plain = tmp_path / "plain"
    export_all(runs, plain, ensemble=False, calibrate=False, echo=lambda *_: None)
    paths = read_inputs(dataset / "eval").paths[:24]
    scaled, unscaled = Predictor(exported, mode="separate"), Predictor(plain)
    batch = scaled.stack([scaled.load(p).inputs[0] for p in paths])
    a, b = scaled.predict(batch).attributes, unscaled.predict(batch).attributes
    for attribute, calibration in index["calibration"].items():
        t = calibration["temperature"]
        meta = read_info(exported / f"{attribute}.onnx")
        assert meta["temperature"] == t and meta["val_ece"] == calibration["val_ece"]
        assert np.allclose(a[attribute], scale(b[attribute], t), atol=1e-5)
        assert (a[attribute].argmax(1) == b[attribute].argmax(1)).all()
    assert json.loads((plain / "facet.json").read_text())["calibration"] == {
        "mask": None, "gender": None, "age": None}
