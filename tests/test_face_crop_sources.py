"""Sources made for crop=face models: face crops framed as one face filling the image (crops=1),
and faces without masks turned into mask-state examples by drawing the mask (draw=masks)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY
from facet.cli import app
from facet.faces import image_face
from facet.manifest import as_face_crops, read_manifest
from facet.models.cache import build_cache, cached_landmarks
from facet.models.data import combine, with_drawn_masks
from facet.models.occlusion import draw_for_label
from facet.models.split import split_by_source
from facet.models.recipe import load_recipe
from facet.models.training_data import CachedImages
from facet.preprocess import PreprocessSpec, cut_face, decode_faces, read_image

PHOTO = Path(__file__).parent / "fixtures" / "photos" / "single.jpg"  # one unmasked face
SPEC = PreprocessSpec(64, 64, crop="face")
runner = CliRunner()


@pytest.fixture
def faces_csv(tmp_path):
    """Six copies of one real face (distinct files) and a noise image no face is found in."""
    rows = []
    for i in range(6):
        shutil.copy(PHOTO, tmp_path / f"face{i}.jpg")
        rows.append({"path": f"face{i}.jpg", "gender": "female", "person": f"p{i}"})
    noise = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    rows.append({"path": "noise.png", "gender": "male", "person": "p6"})
    pd.DataFrame(rows).to_csv(tmp_path / "faces.csv", index=False)
    return tmp_path / "faces.csv"


def test_a_face_crop_is_cut_as_serving_frames_an_image_without_a_face(faces_csv, tmp_path):
    table = as_face_crops(read_manifest(faces_csv))
    assert table.frame["box"].iloc[-1] == image_face(120, 90).box == (0.0, 0.0, 120.0, 90.0)
    images, bad, _ = build_cache(table.frame["path"].tolist(), SPEC, tmp_path / "cache",
                                 workers=1, boxes=table.frame["box"].tolist())
    assert not bad
    served = decode_faces(table.frame["path"].iloc[-1], [SPEC])  # no face: framed
    assert served.face_found is False
    assert np.array_equal(np.asarray(images[-1]), served.inputs[0][SPEC])
    # a face crop is framed whole, not cut around the face the detector would find in it
    rgb = read_image(PHOTO)
    assert np.array_equal(np.asarray(images[0]),
                          cut_face(rgb, image_face(rgb.shape[1], rgb.shape[0]), SPEC))


def test_drawn_mask_sources_get_mask_states_and_are_never_validated(faces_csv):
    table = with_drawn_masks(read_manifest(faces_csv, name="drawn"))
    assert table.frame["drawn"].all() and set(table.frame["mask"]) <= {0, 1, 2}
    again = with_drawn_masks(read_manifest(faces_csv, name="drawn"))
    assert table.frame["mask"].tolist() == again.frame["mask"].tolist()  # by path, every run
    assert "7 with masks drawn" in table.summary()
    real = read_manifest(faces_csv, name="real").frame.assign(
        mask=[0, 1, 2, 0, 1, 2, 0], person=[f"r{i}" for i in range(7)])
    both = combine([table, type(table)(real, name="real")]).frame
    train, val = split_by_source(both, both["mask"], load_recipe("mask")[0].override(["folds=2"]))
    assert not both["drawn"].eq(True).iloc[val].any()
    assert both["drawn"].eq(True).iloc[train].sum() == 7
    with pytest.raises(ValueError, match="without mask labels"):
        with_drawn_masks(type(table)(real, name="real"))


def test_training_draws_the_mask_its_label_names(tmp_path):
    spec = PreprocessSpec(128, 128, crop="face")
    images, bad, _ = build_cache([str(PHOTO)], spec, tmp_path / "cache", workers=1)
    landmarks = cached_landmarks(images, workers=1)
    eyes, tip = landmarks[0, :2].mean(0), landmarks[0, 2]
    bridge = tip + (eyes - tip) * 0.2  # on the nose, above its tip
    nose = (round(bridge[1]), round(bridge[0]))
    mouth = (round(landmarks[0, 3:, 1].mean()), round(landmarks[0, 3:, 0].mean()))
    face = np.asarray(images[0])
    for code in (0, 1, 2):
        data = CachedImages(images, np.array([0]), np.array([code]), spec, transform=None,
                            landmarks=landmarks, maskable=np.array([False]),
                            draw=np.array([code]), seed=code)
        out = data[0][0].numpy()
        diff = np.abs(out.astype(int) - face.astype(int)).sum(2) > 30
        if code == 2:  # not_wear: the face as it is
            assert not diff.any()
            continue
        assert diff[mouth]  # wear and incorrect both cover the mouth...
        assert diff[nose] == (code == 0)  # ...and only a mask worn right covers the nose
    rng = np.random.default_rng(0)
    assert np.array_equal(draw_for_label(face, landmarks[0], 2, rng), face)


def test_source_options_reach_training_and_bad_values_are_clear(faces_csv, dataset, tmp_path):
    common = ["train", "mask", "--data", str(dataset / "train"), "--run-dir", str(tmp_path / "r"),
              *[a for kv in TINY for a in ("--set", kv)]]
    bad = runner.invoke(app, [*common, "--manifest", f"{faces_csv},draw=hats"])
    assert bad.exit_code == 2 and "draw= takes masks" in bad.output
    bad = runner.invoke(app, [*common, "--manifest", f"{faces_csv},crops=yes"])
    assert bad.exit_code == 2 and "crops= takes 1 or 0" in bad.output
    ok = runner.invoke(app, [*common, "--set", "crop=face", "--set", "epochs=1",
                             "--manifest", f"{faces_csv},draw=masks,crops=1,name=drawn"])
    assert ok.exit_code == 0, ok.output
    assert "7 with masks drawn" in ok.output
    split = json.loads((tmp_path / "r" / "recipe.json").read_text())["data"]
    codes = with_drawn_masks(read_manifest(faces_csv, name="drawn")).frame["mask"]
    assert split["drawn_masks"] + split["drawn_without_landmarks"] == 7
    assert split["drawn_masks"] >= (codes == 2).sum()  # nothing to draw: kept without landmarks
    assert sum(s["train_images"] for s in split["sources"].values()) == split["train_images"]
