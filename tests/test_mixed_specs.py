"""Each attribute's recipe is its own, input spec included: three models with three different
sizes (one with another normalisation) export, predict and serve, with one answer per image."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor

pytestmark = pytest.mark.integration  # export, a predict subprocess and a server

SPECS = {"mask": ["image_size=40"], "gender": ["image_size=48"],
         "age": ["image_size=56", "resize_mode=letterbox", "mean=0.485,0.456,0.406",
                 "std=0.229,0.224,0.225"]}


@pytest.fixture(scope="module")
def mixed(dataset, train_tiny, tmp_path_factory):
    from facet.export.pipeline import export_all
    root = tmp_path_factory.mktemp("mixed")
    runs = {a: train_tiny(a, dataset, root / a, root / "cache", extra).run_dir
            for a, extra in SPECS.items()}
    lines: list[str] = []
    export_all(runs, root / "artifacts", echo=lines.append)
    return root / "artifacts", lines


def test_export_writes_three_models_and_says_why_no_merged_graph(mixed):
    models, lines = mixed
    index = json.loads((models / "facet.json").read_text())
    assert set(index["models"]["fp32"]) == {"mask", "gender", "age"}
    assert not (models / "ensemble.onnx").exists()
    assert any("different input specs" in line for line in lines)
    predictor = Predictor(models)
    assert predictor.mode == "separate"
    sizes = sorted(s.height for s in predictor.distinct_specs)
    assert sizes == [40, 48, 56]


def test_batch_and_http_answers_are_equal(mixed, dataset, tmp_path):
    models, _ = mixed
    paths = read_inputs(dataset / "eval").paths[:6]
    expected = predict_paths(Predictor(models), paths, progress=False)
    out = tmp_path / "sub.csv"
    subprocess.run([sys.executable, "-m", "facet.cli", "predict", str(dataset / "eval"),
                    "--models", str(models), "-o", str(out), "--details", str(tmp_path / "d.csv")],
                   check=True, capture_output=True, timeout=300)
    details = pd.read_csv(tmp_path / "d.csv").set_index("path")
    for i, p in enumerate(paths):
        assert details.loc[str(p), "label"] == expected.labels[i]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp_path / "server.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "facet.cli", "serve", "--models",
                                 str(models), "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"server did not start:\n{log.read()[-3000:]}")
                time.sleep(0.5)
            files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            batch = httpx.post(f"{url}/v1/predict/batch", files=files, timeout=60).json()
            single = httpx.post(f"{url}/v1/predict", content=paths[0].read_bytes(),
                                headers={"content-type": "image/jpeg"}, timeout=60).json()
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    assert [r["label"] for r in batch["results"]] == expected.labels.tolist()
    for i, result in enumerate(batch["results"]):
        for attribute, classes in (("age", ("<30", "30-59", ">=60")), ("mask", ("wear", "incorrect", "not_wear"))):
            got = [result["attributes"][attribute]["probs"][c] for c in classes]
            np.testing.assert_allclose(got, expected.attributes[attribute][i], atol=1e-5)
    assert single["label"] == expected.labels[0]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
