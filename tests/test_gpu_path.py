"""The GPU path as far as a CPU can check it: the fp16 export and its agreement, provider
selection and its errors, the provider options, io binding and mixed-precision settings."""
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from facet.cli import app
from facet.serve import predictor as predictor_module
from facet.serve.inputs import read_inputs
from facet.serve.config import ServeConfig
from facet.serve.options import AnswerOptions, GpuOptions
from facet.serve.predictor import Predictor, providers

CUDA, CPU, TRT = "CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"


def test_fp16_files_hold_half_weights_behind_fp32_inputs_and_outputs(exported):
    index = json.loads((exported / "facet.json").read_text())
    for name in [*index["models"]["fp16"].values(), "ensemble.fp16.onnx"]:
        proto = onnx.load(str(exported / name))
        onnx.checker.check_model(proto, full_check=True)
        kinds = {t.data_type for t in proto.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert any(p.key == "facet" for p in proto.metadata_props)  # the metadata survived
    for attribute, result in index["fp16_eval"].items():
        assert result["images"] > 0 and 0.9 <= result["agreement"] <= 1
        assert result["delta"] == pytest.approx(result["fp16_macro_f1"] - result["fp32_macro_f1"])


@pytest.mark.parametrize("mode", ["separate", "ensemble"])
def test_fp16_predictions_track_fp32(exported, dataset, mode):
    fp32 = Predictor(exported, mode=mode)
    fp16 = Predictor(exported, mode=mode, variant="fp16")
    assert fp16.mode == mode and fp16.model_info()["variant"] == "fp16"
    batch = fp32.stack([fp32.load(p).inputs[0] for p in read_inputs(dataset / "eval").paths[:48]])
    a, b = fp32.predict(batch), fp16.predict(batch)
    assert np.abs(a.probs - b.probs).max() < 0.01
    assert (a.labels == b.labels).mean() >= 0.95


@pytest.mark.parametrize("mode", ["separate", "ensemble"])
def test_io_binding_gives_the_plain_run_answers(exported, dataset, mode):
    """The bound path (inputs copied to the device once, shared by the sessions) runs on the
    CPU provider too, so CI checks it gives exactly the plain run's answers."""
    plain, bound = Predictor(exported, mode=mode), Predictor(exported, mode=mode, io_binding=True)
    assert plain.binding is None and bound.binding == ("cpu", 0)
    assert bound.model_info()["io_binding"] is True
    batch = plain.stack([plain.load(p).inputs[0] for p in read_inputs(dataset / "eval").paths[:20]])
    np.testing.assert_array_equal(plain.predict(batch).probs, bound.predict(batch).probs)


def test_provider_choice_and_options(monkeypatch, tmp_path):
    monkeypatch.setattr(predictor_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    options = GpuOptions(device_id=1, cudnn_conv_algo_search="HEURISTIC", gpu_mem_limit=2**30,
                         trt_cache=str(tmp_path / "trt"))
    chosen = providers("auto", options)
    assert chosen[1] == CPU and chosen[0][0] == CUDA
    assert chosen[0][1] == {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC",
                            "arena_extend_strategy": "kNextPowerOfTwo",
                            "do_copy_in_default_stream": True, "gpu_mem_limit": 2**30}
    assert providers("cpu", options) == [CPU]
    with pytest.raises(RuntimeError, match="no TensorrtExecutionProvider"):
        providers("tensorrt", options)
    monkeypatch.setattr(predictor_module.ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    trt = providers("tensorrt", options)
    assert [p if isinstance(p, str) else p[0] for p in trt] == [TRT, CUDA, CPU]
    assert trt[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt") and trt[0][1]["trt_fp16_enable"]
    assert (tmp_path / "trt").is_dir()
    assert providers("auto", options)[0][0] == CUDA  # TensorRT only when asked for


def test_gpu_requests_fail_clearly_without_one(monkeypatch):
    monkeypatch.setattr(predictor_module.ort, "get_available_providers", lambda: [CPU])
    for device in ("cuda", "tensorrt"):
        with pytest.raises(RuntimeError, match=r"install facet\[gpu\]"):
            providers(device)
    assert providers("auto") == [CPU]
    with pytest.raises(ValueError, match="device must be one of"):
        providers("gpu")
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        GpuOptions(cudnn_conv_algo_search="FAST")


def test_a_gpu_that_falls_back_to_the_cpu_is_an_error(exported, monkeypatch):
    """onnxruntime quietly runs on the CPU when the CUDA libraries do not load; asked for by
    name, a GPU that is not really used must stop the run."""
    monkeypatch.setattr(predictor_module, "providers", lambda device, gpu: [(CUDA, {}), CPU])
    with pytest.raises(RuntimeError, match="runs it on CPUExecutionProvider"):
        predictor_module._session(exported / "mask.onnx", AnswerOptions(device="cuda"))
    session = predictor_module._session(exported / "mask.onnx", AnswerOptions(device="auto"))
    assert session.get_providers() == [CPU]  # auto: a warning, and the CPU answers


def test_cli_refuses_gpu_options_it_cannot_honour(exported, dataset, tmp_path):
    runner = CliRunner()
    base = ["predict", str(dataset / "eval"), "--models", str(exported), "-o", str(tmp_path / "s.csv")]
    result = runner.invoke(app, [*base, "--device", "tensorrt"])
    assert result.exit_code == 2 and "device=tensorrt but onnxruntime has no" in result.output
    result = runner.invoke(app, [*base, "--conv-search", "FAST"])
    assert result.exit_code == 2 and "cudnn_conv_algo_search" in result.output
    result = runner.invoke(app, [*base, "--variant", "fp16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "fp16" in result.output and "batch 64, 2 decoding threads" in result.output


def test_serve_settings_carry_the_provider_options():
    cfg = ServeConfig.load({"FACET_DEVICE": "cuda", "FACET_DEVICE_ID": "2",
                            "FACET_CUDNN_CONV_ALGO_SEARCH": "DEFAULT",
                            "FACET_GPU_MEM_LIMIT": "1073741824"})
    assert cfg.answer_options().gpu == GpuOptions(2, "DEFAULT", 2**30, trt_cache=cfg.trt_cache)
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        ServeConfig.load({"FACET_CUDNN_CONV_ALGO_SEARCH": "fast"})
    with pytest.raises(ValueError, match="device must be one of .*'gpu'"):
        ServeConfig.load({"FACET_DEVICE": "gpu"})


def test_cpu_training_keeps_full_precision(runs):
    """Mixed precision and loss scaling are for CUDA only: CPU runs record fp32."""
    for run in runs.values():
        assert json.loads((run / "recipe.json").read_text())["precision"] == "fp32"


def test_recipe_booleans_parse_strictly():
    from facet.models.recipe import load_recipe
    recipe, _ = load_recipe("gender")
    assert recipe.compile is False and recipe.override(["compile=true"]).compile is True
    with pytest.raises(ValueError, match="compile"):
        recipe.override(["compile=maybe"])
