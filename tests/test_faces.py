"""Faces: the detector on real photos, the crop rule, the fallback, and the training cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import encode
from facet import faces as faces_mod
from facet.draw import draw_faces
from facet.faces import (DetectorError, Face, YuNet, crop_box, cut, fallback_box, image_face,
                         primary)
from facet.preprocess import PreprocessSpec, cut_face, decode_faces, load, read_image, resize

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
# The annotators' boxes (x0, y0, x1, y1), from fixtures/photos/README.md
GROUP3_BOXES = [(111, 106, 146, 164), (194, 115, 224, 164), (22, 120, 50, 161)]
SINGLE_BOX = (76, 236, 149, 349)
FACE_SPEC = PreprocessSpec(64, 64, crop="face")


def iou(box: tuple, face: Face) -> float:
    x0, y0, x1, y1 = box
    fx, fy, fw, fh = face.box
    w = max(0.0, min(x1, fx + fw) - max(x0, fx))
    h = max(0.0, min(y1, fy + fh) - max(y0, fy))
    return w * h / ((x1 - x0) * (y1 - y0) + fw * fh - w * h)


def test_detector_finds_every_annotated_face_of_a_group_photo():
    found = YuNet().detect(read_image(PHOTOS / "group3.jpg"))
    assert len(found) == 3
    assert all(max(iou(b, f) for f in found) >= 0.4 for b in GROUP3_BOXES)
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    assert all(len(f.landmarks) == 5 for f in found)


def test_both_engines_run_the_same_detector():
    rgb = read_image(PHOTOS / "group3.jpg")
    ort, opencv = YuNet(engine="onnxruntime"), YuNet(engine="opencv")
    assert (ort.engine, opencv.engine) == ("onnxruntime", "opencv")
    a, b = ort.detect(rgb), opencv.detect(rgb)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert np.allclose(x.box, y.box, atol=0.01) and abs(x.score - y.score) < 1e-4
        assert np.allclose(x.landmarks, y.landmarks, atol=0.01)
    with pytest.raises(ValueError, match="engine"):
        YuNet(engine="tensorrt")


def test_pasted_faces_are_found_where_they_were_put():
    """A real face pasted at two known places and scales on a larger canvas."""
    x0, y0, x1, y1 = SINGLE_BOX
    face = Image.open(PHOTOS / "single.jpg").convert("RGB").crop((x0 - 20, y0 - 20, x1 + 20, y1 + 20))
    canvas = Image.new("RGB", (900, 600), (120, 130, 140))
    places = [(50, 60, 1.0), (500, 250, 2.0)]  # left, top, scale
    for left, top, scale in places:
        canvas.paste(face.resize((round(face.width * scale), round(face.height * scale))), (left, top))
    found = YuNet(max_side=900).detect(np.asarray(canvas))
    assert len(found) == 2
    for left, top, scale in places:
        truth = (left + 20 * scale, top + 20 * scale, left + (20 + x1 - x0) * scale,
                 top + (20 + y1 - y0) * scale)
        assert max(iou(truth, f) for f in found) >= 0.4


def test_large_photos_are_detected_on_a_smaller_copy_and_boxes_mapped_back():
    rgb = read_image(PHOTOS / "group3.jpg")
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 4, rgb.shape[0] * 4)))
    found = YuNet(max_side=640).detect(big)
    assert len(found) == 3
    assert all(max(iou(tuple(4 * v for v in b), f) for f in found) >= 0.4 for b in GROUP3_BOXES)


def test_small_photos_can_be_enlarged_for_detection_and_boxes_map_back():
    found = YuNet(upscale=1.5).detect(read_image(PHOTOS / "group3.jpg"))  # 400 px -> 600 px
    assert len(found) == 3
    assert all(max(iou(b, f) for f in found) >= 0.4 for b in GROUP3_BOXES)
    assert YuNet(upscale=1.5).describe()["upscale"] == 1.5
    with pytest.raises(ValueError, match="upscale"):
        YuNet(upscale=0.5)


def test_crop_rule_is_a_square_margin_times_the_face_centred_on_it():
    face = Face((100, 50, 40, 60), 0.9)
    left, top, side = crop_box(face, 1.6)
    assert side == 96  # 1.6 x the longer side
    assert (left + side / 2, top + side / 2) == (120, 80)  # same centre as the box


def test_crop_past_the_border_is_padded_so_the_face_keeps_its_place():
    rgb = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8) | 1
    left, top, side = crop_box(Face((-10, -5, 40, 40), 0.9), 2.0)  # a face at the top-left corner
    assert (left, top, side) == (-30, -25, 80)
    out = cut(rgb, left, top, side, side)
    assert out.shape == (80, 80, 3)
    assert (out[:25, :] == 0).all() and (out[:, :30] == 0).all()  # outside the photo: black
    assert (out[25:, 30:] == rgb[:55, :50]).all()  # inside: the photo's own pixels, unmoved
    assert (cut(rgb, 10, 20, 30, 30) == rgb[20:50, 10:40]).all()  # inside: a plain slice


def test_primary_face_is_the_largest_or_the_most_central():
    faces = [Face((0, 0, 50, 50), 0.9), Face((90, 90, 20, 20), 0.95)]
    assert primary(faces, 200, 200, "largest") == 0
    assert primary(faces, 200, 200, "center") == 1
    assert primary([], 200, 200) == -1
    with pytest.raises(ValueError):
        primary(faces, 200, 200, "leftmost")


def test_no_face_answers_from_the_fallback_region_and_says_so():
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise))
    photo = decode_faces(data, [FACE_SPEC])
    assert photo.face_found is False and photo.faces == [] and photo.answered == [-1]
    # frame (the default): the image as one face, a square twice its longer side around it
    framed = photo.inputs[0][FACE_SPEC]
    # 300x200 in a 600 px square: the image fills x 16-48, y 21-43 of the 64 px input
    assert (framed[:20] == 0).all() and (framed[:, :15] == 0).all() and (framed[:, 49:] == 0).all()
    assert framed[23:41, 18:46].mean() > 60  # the noise itself (mean 127.5), scaled down
    assert (framed == cut_face(noise, image_face(300, 200), FACE_SPEC)).all()
    whole = PreprocessSpec(64, 64, crop="face", fallback="whole")
    assert (decode_faces(data, [whole]).inputs[0][whole] == resize(noise, whole)).all()
    center = PreprocessSpec(64, 64, crop="face", fallback="center")
    assert fallback_box(300, 200, "center") == (50, 0, 200, 200)
    assert (decode_faces(data, [center]).inputs[0][center] == resize(noise[:, 50:250], center)).all()


def test_every_face_gets_its_own_input_and_max_faces_keeps_the_largest():
    whole = PreprocessSpec(32, 32)  # a crop=none model beside it sees the whole photo
    photo = decode_faces(PHOTOS / "group3.jpg", [FACE_SPEC, whole], every=True)
    assert photo.face_found and photo.answered == [0, 1, 2] and len(photo.inputs) == 3
    crops = [inputs[FACE_SPEC] for inputs in photo.inputs]
    assert not np.array_equal(crops[0], crops[1])
    assert all(np.array_equal(inputs[whole], load(PHOTOS / "group3.jpg", whole))
               for inputs in photo.inputs)
    two = decode_faces(PHOTOS / "group3.jpg", [FACE_SPEC], every=True, max_faces=2)
    areas = sorted((f.box[2] * f.box[3] for f in photo.faces), reverse=True)[:2]
    assert sorted((f.box[2] * f.box[3] for f in two.faces), reverse=True) == areas
    # the primary face alone, without every: the largest
    one = decode_faces(PHOTOS / "group3.jpg", [FACE_SPEC])
    assert len(one.inputs) == 1 and np.array_equal(one.inputs[0][FACE_SPEC], crops[one.primary])


def test_models_exported_before_cropping_take_whole_images():
    old = {"height": 64, "width": 64, "resize_mode": "stretch", "mean": [0.5] * 3, "std": [0.5] * 3}
    spec = PreprocessSpec.from_dict(old)
    assert spec.crop == "none"
    assert PreprocessSpec.from_dict(FACE_SPEC.to_dict()) == FACE_SPEC
    with pytest.raises(ValueError, match="crop"):
        PreprocessSpec(crop="faces")
    with pytest.raises(ValueError, match="margin"):
        PreprocessSpec(crop="face", margin=10)


def test_training_cache_detects_once_and_keeps_the_detections(tmp_path, monkeypatch):
    from facet.models.cache import build_cache
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(noise)
    paths = [str(PHOTOS / "single.jpg"), str(noise)]
    images, bad, found = build_cache(paths, FACE_SPEC, tmp_path / "cache", workers=1)
    assert bad == [] and found[1] is None
    assert iou(SINGLE_BOX, Face(tuple(found[0]["box"]), found[0]["score"])) >= 0.4
    assert np.array_equal(images[0], load(PHOTOS / "single.jpg", FACE_SPEC))

    def no_decoding(*_args, **_kw):
        raise AssertionError("the images were decoded and detected again")
    monkeypatch.setattr("facet.models.cache.decode_faces", no_decoding)
    again, _, found_again = build_cache(paths, FACE_SPEC, tmp_path / "cache", workers=1)
    assert found_again == found and np.array_equal(again, images)


def test_a_broken_detector_file_is_a_clear_error(tmp_path):
    with pytest.raises(DetectorError, match="not found"):
        YuNet(tmp_path / "missing.onnx")
    text = tmp_path / "yunet.onnx"
    text.write_text("not a model")
    with pytest.raises(DetectorError, match="not a YuNet"):
        YuNet(text)


def test_the_shipped_detectors_and_their_license_are_package_data():
    assert faces_mod.YUNET.is_file() and (faces_mod.YUNET.parent / "LICENSE-yunet").is_file()
    assert YuNet().describe()["sha256"].startswith("104ee26c71d5")  # YuNet-n, the default
    assert YuNet(faces_mod.YUNET_S).describe()["sha256"].startswith("8f2383e4dd3c")


def test_drawing_marks_each_face_box():
    rgb = np.full((120, 160, 3), 128, np.uint8)
    out = draw_faces(rgb, [(Face((20, 30, 40, 50), 0.9), 5, 0.9), (None, 17, 0.3)])
    assert (out[60, 20] != 128).any()  # the box's left edge
    assert (out[100, 140] == 128).all()  # far from any box or label
    assert (rgb == 128).all()  # the input is not drawn on


def test_a_crop_far_larger_than_the_model_input_is_scaled_before_padding():
    from facet.faces import cut_square
    rgb = np.full((3000, 2000, 3), 200, np.uint8)
    out = cut_square(rgb, -500, 100, 4000, 256)  # past the left and bottom borders
    assert out.shape == (256, 256, 3)
    assert (out[:, :25] == 0).all() and (out[10:150, 40:150] == 200).all()
    assert np.array_equal(cut_square(rgb, 10, 10, 100, 256), rgb[10:110, 10:110])


def test_a_manifest_with_face_boxes_trains_on_crops_cut_from_the_photo(tmp_path, monkeypatch):
    """One row per annotated face, the crop cut around the named box with the serving rule and
    real context, no detector run; the photo is decoded once for all its faces."""
    from conftest import TINY
    from facet.models.cache import build_cache
    from facet.manifest import read_manifest
    from facet.models.recipe import load_recipe
    from facet.models.train import Trainer
    from facet.preprocess import cut_face, read_image
    rows = []
    for k in range(10):  # ten "photos" (copies), so that the split has groups to spread
        (tmp_path / f"p{k}.jpg").write_bytes((PHOTOS / "group3.jpg").read_bytes())
        rows += [{"file": f"p{k}.jpg", "photo": f"p{k}", "xmin": x0, "ymin": y0, "xmax": x1,
                  "ymax": y1, "mask": "wear"} for x0, y0, x1, y1 in GROUP3_BOXES]
    rows.append({"file": "p0.jpg", "photo": "p0", "xmin": 50, "ymin": 9, "xmax": 40, "ymax": 30,
                 "mask": "wear"})  # corners swapped: refused, named
    pd.DataFrame(rows).to_csv(tmp_path / "boxes.csv", index=False)
    table = read_manifest(tmp_path / "boxes.csv", group="photo", path_column="file")
    assert len(table.frame) == 30 and "not a box" in table.problems[0]
    assert table.frame["box"].iloc[1] == (194.0, 115.0, 30.0, 49.0)

    def no_detector(*_args, **_kw):
        raise AssertionError("a named face must not be detected")
    monkeypatch.setattr("facet.models.cache.decode_faces", no_detector)
    decoded = []
    monkeypatch.setattr("facet.models.cache.read_image",
                        lambda p: decoded.append(p) or read_image(p))
    spec = PreprocessSpec(64, 64, crop="face", margin=1.4)
    paths, boxes = table.frame["path"].tolist(), table.frame["box"].tolist()
    images, bad, faces = build_cache(paths, spec, tmp_path / "cache", workers=2, boxes=boxes)
    assert bad == [] and sorted(decoded) == sorted(set(paths))  # each photo decoded once
    photo = read_image(PHOTOS / "group3.jpg")
    for i in (0, 1, 2):
        assert np.array_equal(images[i], cut_face(photo, Face(boxes[i], 1.0), spec))
        assert faces[i]["box"] == list(boxes[i])
    assert not np.array_equal(images[0], images[1])  # each face its own crop
    recipe, augment = load_recipe("mask")
    recipe = recipe.override([*TINY, "crop=face", "crop_margin=1.4", "image_size=64"])
    trainer = Trainer(recipe, augment, table, tmp_path / "run", tmp_path / "cache", device="cpu",
                      workers=0)
    trainer.fit()
    resolved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert resolved["data"]["named_faces"] == 30 and resolved["data"]["no_face_found"] == 0
