"""Photos to faces end to end: train with crop=face, export, `facet predict --faces all`, the
HTTP service (/v1 and BentoML's own client), every face of a group photo answered the same way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image

from facet.faces import YuNet
from facet.model_metadata import read_metadata

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("group3.jpg", "single.jpg"):
        (folder / name).write_bytes((PHOTOS / name).read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return folder


def _facet(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facet.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_crop_rule_and_detector_travel_from_training_to_the_onnx_file(face_exported):
    index = json.loads((face_exported / "facet.json").read_text())
    for name in index["models"]["fp32"].values():
        meta = read_metadata(onnx.load(str(face_exported / name), load_external_data=False))
        assert meta["preprocess"]["crop"] == "face" and meta["preprocess"]["margin"] == 2.0
        assert meta["detector"]["sha256"] == YuNet().sha256


def test_predict_answers_every_face_and_flags_photos_without_one(face_exported, photos, tmp_path):
    out, details = tmp_path / "out.csv", tmp_path / "faces.csv"
    run = _facet("predict", photos, "--out", out, "--models", face_exported, "--faces", "all",
                 "--details", details, "--draw", tmp_path / "drawn")
    assert run.returncode == 0, run.stderr
    answers = pd.read_csv(out)
    assert len(answers) == 3 and answers["ans"].notna().all()  # one answer per photo
    rows = pd.read_csv(details)
    per_photo = rows.groupby(rows["path"].map(lambda p: Path(p).name))
    group = per_photo.get_group("group3.jpg")
    assert sorted(group["face"]) == [0, 1, 2] and group["face_found"].all()
    largest = group.loc[(group["face_w"] * group["face_h"]).idxmax()]
    assert group["primary"].sum() == 1 and largest["primary"]
    assert {"face_score", "right_eye_x", "mouth_left_y", "p_mask_wear"} <= set(rows.columns)
    noise = per_photo.get_group("noise.png")
    assert list(noise["face"]) == [-1] and not noise["face_found"].any()
    assert not np.isnan(noise["p_mask_wear"]).any()  # answered from the fallback region
    assert "none found in 1 of 3" in run.stderr
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [
        "group3.jpg", "noise.jpg", "single.jpg"]
    # the answer column is the primary face's label
    by_name = answers.set_index(answers["path"].map(lambda p: Path(p).name))["ans"]
    assert by_name["group3.jpg"] == largest["label"]


def test_the_primary_face_can_be_the_most_central(face_exported, photos, tmp_path):
    details = tmp_path / "d.csv"
    run = _facet("predict", photos / "group3.jpg", "--out", tmp_path / "o.csv", "--models",
                 face_exported, "--details", details, "--primary", "center")
    assert run.returncode == 0, run.stderr
    row = pd.read_csv(details).iloc[0]
    centre_x = row["face_x"] + row["face_w"] / 2
    assert 180 < centre_x < 230  # the face nearest the middle of the 400 px wide photo


def test_faces_all_needs_models_that_find_faces(exported, photos, tmp_path):
    run = _facet("predict", photos, "--out", tmp_path / "o.csv", "--models", exported,
                 "--faces", "all", "--details", tmp_path / "d.csv")
    assert run.returncode == 2 and "crop=none" in run.stderr
    run = _facet("predict", photos, "--out", tmp_path / "o.csv", "--models", exported,
                 "--primary-rule", "leftmost")
    assert run.returncode == 2 and "primary face rule must be one of" in run.stderr


@pytest.mark.integration
def test_http_and_bentoml_client_answer_every_face_as_batch_does(face_exported, photos, tmp_path):
    from test_service import _free_port, start_server
    details = tmp_path / "faces.csv"
    assert _facet("predict", photos, "--out", tmp_path / "o.csv", "--models", face_exported,
                  "--faces", "all", "--details", details).returncode == 0
    batch = pd.read_csv(details)
    log = open(tmp_path / "server.log", "w+")
    proc, url = start_server(face_exported, _free_port(), {}, log)
    try:
        group = httpx.post(f"{url}/v1/predict", content=(photos / "group3.jpg").read_bytes(),
                           headers={"content-type": "image/jpeg"}, timeout=60).json()
        assert group["face_found"] is True and len(group["faces"]) == 3
        expected = batch[batch["path"].str.endswith("group3.jpg")].set_index("face")
        for face in group["faces"]:
            row = expected.loc[face["index"]]
            assert np.allclose(face["box"], row[["face_x", "face_y", "face_w", "face_h"]].to_numpy(float),
                               atol=0.11)
            for attribute, answer in face["attributes"].items():
                for cls, p in answer["probs"].items():
                    assert abs(p - row[f"p_{attribute}_{cls}"]) < 1e-5
            assert face["label"] == row["label"]
        primary = group["faces"][group["primary_face"]]
        assert group["label"] == primary["label"] and group["attributes"] == primary["attributes"]

        noise = httpx.post(f"{url}/v1/predict", files={"image": ("noise.png", (photos / "noise.png")
                           .read_bytes(), "image/png")}, timeout=60)
        assert noise.status_code == 200
        assert noise.json()["faces"] == [] and noise.json()["face_found"] is False
        info = httpx.get(f"{url}/v1/info", timeout=30).json()
        assert info["detector"]["name"] == "yunet" and info["service"]["primary_rule"] == "largest"
        schema = httpx.get(f"{url}/v1/openapi.json", timeout=30).json()
        answer = schema["paths"]["/predict"]["post"]["responses"]["200"]["content"]
        assert "faces" in answer["application/json"]["schema"]["properties"]

        with bentoml.SyncHTTPClient(url, timeout=60) as client:
            typed = client.classify(image=photos / "group3.jpg")
            assert typed == group
            many = client.classify_batch(images=[photos / "single.jpg", photos / "noise.png"])
            assert many["answered"] == 2 and many["results"][1]["face_found"] is False
            text = tmp_path / "notes.jpg"
            text.write_text("not an image")
            with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
                client.classify(image=text)
            assert refused.value.error_code == 422 and "not a recognised image" in str(refused.value)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def test_faces_all_with_no_readable_photo_writes_the_errors(face_exported, tmp_path):
    listing = tmp_path / "photos.csv"
    listing.write_text("path\nmissing.jpg\n")
    details = tmp_path / "faces.csv"
    run = _facet("predict", listing, "--out", tmp_path / "o.csv", "--models", face_exported,
                 "--faces", "all", "--details", details)
    assert run.returncode == 3, run.stderr
    rows = pd.read_csv(details)
    assert rows["face"].isna().all() and rows["error"].iloc[0] == "file not found"  # no face
    assert rows["face_found"].isna().all()
