"""The drawn-mask augmentation for gender and age, and what training feeds it."""
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from facet.models.augment import uses_landmarks
from facet.models.occlusion import FACE_FRAME, MaskOcclusion, occlude
from facet.models.recipe import load_recipe
from facet.models.training_data import CHILD_AGE, CachedImages, epoch_sampler
from facet.preprocess import PreprocessSpec, load

PHOTO = Path(__file__).parent / "fixtures" / "photos" / "single.jpg"  # one unmasked face


def landmarks_at(cx: float, cy: float, scale: float = 40) -> np.ndarray:
    """Five landmarks of an upright face centred near (cx, cy), ``scale`` px between the eyes."""
    unit = np.array([[-0.5, -0.45], [0.5, -0.45], [0, 0], [-0.4, 0.45], [0.4, 0.45]])
    return (unit * scale + [cx, cy]).astype(np.float32)


def magenta(side: int) -> np.ndarray:
    """A background no mask colour of the palette is near."""
    return np.broadcast_to(np.array([255, 0, 255], np.uint8), (side, side, 3)).copy()


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after.astype(int) - before.astype(int)).sum(2) > 30


def test_the_mask_covers_the_lower_face_where_the_landmarks_put_it():
    image = magenta(160)
    for cx, cy in ((50, 60), (110, 90)):
        lm = landmarks_at(cx, cy)
        diff = changed(image, occlude(image, lm, np.random.default_rng(0), "over_nose"))
        ys, xs = np.nonzero(diff)
        assert abs(np.median(xs) - cx) < 8  # centred on the face, not on the image
        mouth_y, eye_y = lm[3, 1], lm[0, 1]
        assert diff[round(mouth_y), round(cx)]  # the mouth is covered
        assert not diff[round(eye_y) - 3, round(lm[0, 0])]  # the eyes are not
        assert ys.min() < lm[2, 1] < ys.max()  # worn over the nose


def test_mask_heights_leave_the_nose_or_the_mouth_out():
    image = magenta(160)
    lm = landmarks_at(80, 70)
    nose, mouth = tuple(round(v) for v in lm[2]), (round(lm[3:, 0].mean()), round(lm[3, 1]))
    below = changed(image, occlude(image, lm, np.random.default_rng(1), "below_nose"))
    chin = changed(image, occlude(image, lm, np.random.default_rng(1), "chin"))
    assert not below[nose[1], nose[0]] and below[mouth[1], mouth[0]]
    assert not chin[mouth[1], mouth[0]] and chin[mouth[1] + 20, mouth[0]]


def test_without_landmarks_the_fixed_face_frame_places_the_mask():
    image = magenta(128)
    diff = changed(image, occlude(image, None, np.random.default_rng(2), "over_nose"))
    mouth = (FACE_FRAME[3:].mean(0) * 128).round().astype(int)
    eye = (FACE_FRAME[0] * 128).round().astype(int)
    assert diff[mouth[1], mouth[0]] and not diff[eye[1] - 4, eye[0]]
    nan = np.full((5, 2), np.nan, np.float32)  # what the cache holds where no face was found
    assert np.array_equal(occlude(image, nan, np.random.default_rng(2), "over_nose"),
                          occlude(image, None, np.random.default_rng(2), "over_nose"))


def test_the_transform_masks_only_maskable_images_reproducibly():
    image = magenta(128)
    lm = landmarks_at(64, 60)
    pipeline = A.Compose([MaskOcclusion(p=1.0)], seed=3)
    first = pipeline(image=image, landmarks=lm, maskable=True)["image"]
    assert changed(image, first).mean() > 0.1
    assert np.array_equal(pipeline(image=image, landmarks=lm, maskable=False)["image"], image)
    again = A.Compose([MaskOcclusion(p=1.0)], seed=3)(image=image, landmarks=lm, maskable=True)
    assert np.array_equal(again["image"], first)


@pytest.mark.parametrize("attribute", ["gender", "age"])
def test_gender_and_age_have_named_groups_with_the_mask_first(attribute):
    recipe, augment = load_recipe(attribute)
    pipeline = augment(recipe.override(["aug_groups="]))  # empty: every group
    assert isinstance(pipeline.transforms[0], MaskOcclusion) and uses_landmarks(pipeline)
    default = augment(recipe)  # flip, crop, colour: what measured best (BENCHMARKS.md)
    assert not uses_landmarks(default) and len(default.transforms) < len(pipeline.transforms)
    assert uses_landmarks(augment(recipe.override(["aug_groups=mask,flip"])))
    with pytest.raises(ValueError, match="unknown"):
        augment(recipe.override(["aug_groups=flip,mosaic"]))


def test_landmarks_are_found_on_cached_pixels_and_reach_the_transform(tmp_path):
    from facet.models.cache import build_cache, cached_landmarks

    spec = PreprocessSpec(128, 128, crop="face")
    images, bad, faces = build_cache([str(PHOTO)], spec, tmp_path / "cache", workers=1)
    assert not bad and faces[0] is not None
    landmarks = cached_landmarks(images, workers=1)
    eyes_y, mouth_y = landmarks[0, :2, 1].mean(), landmarks[0, 3:, 1].mean()
    assert 20 < eyes_y < mouth_y < 110  # a face in the crop's middle, upright
    assert np.array_equal(cached_landmarks(images, workers=1), landmarks)  # read back
    recipe, augment = load_recipe("gender")
    dataset = CachedImages(images, np.array([0]), np.array([1]), spec,
                           augment(recipe.override(["aug_groups=mask"])), landmarks,
                           np.array([True]))
    chin = (round(mouth_y + 0.5 * (mouth_y - eyes_y)), round(landmarks[0, 3:, 0].mean()))
    masked = 0
    for seed in range(10):  # the group masks 60% of maskable images
        dataset.transform.set_random_seed(seed)
        out = dataset[0][0].numpy()  # the augmented uint8 pixels, normalised on the device
        diff = changed(np.asarray(images[0]), out)
        if diff.mean() > 0.05:
            masked += 1
            assert diff[chin] and not diff[:round(eyes_y) - 5].any()  # on the lower face only
    assert 3 <= masked <= 9
    assert np.array_equal(load(PHOTO, spec), np.asarray(images[0]))  # the cache is untouched


def test_child_weight_draws_children_more_often_within_their_source():
    labels = np.array([0, 1] * 50)
    sources = np.array(["a"] * 50 + ["b"] * 50)
    years = np.where(np.arange(100) % 5 == 0, CHILD_AGE - 5, 40)
    boost = np.where(years < CHILD_AGE, 3.0, 1.0)
    shares = {"a": 0.5, "b": 0.5}
    plain = epoch_sampler(labels, "none", 20000, sources, shares)
    boosted = epoch_sampler(labels, "none", 20000, sources, shares, boost)
    for sampler in (plain, boosted):
        sampler.generator.manual_seed(0)
    drawn_plain, drawn = np.array(list(plain)), np.array(list(boosted))
    assert (years[drawn_plain] < CHILD_AGE).mean() == pytest.approx(0.2, abs=0.02)
    assert (years[drawn] < CHILD_AGE).mean() == pytest.approx(3 / 7, abs=0.02)  # 20x3 : 80
    assert (sources[drawn] == "a").mean() == pytest.approx(0.5, abs=0.02)  # shares kept
    with pytest.raises(ValueError, match="child_weight"):
        load_recipe("gender")[0].override(["child_weight=0"])
