import numpy as np
import pytest

from facet.models.recipe import Recipe, load_recipe


@pytest.mark.parametrize("attribute,k", [("mask", 3), ("gender", 2), ("age", 3)])
def test_each_attribute_has_its_own_recipe_and_pipeline(attribute, k):
    recipe, augment = load_recipe(attribute)
    assert recipe.attribute == attribute and recipe.num_classes == k
    pipeline = augment(recipe)
    image = np.random.default_rng(0).integers(0, 255, (recipe.image_size, recipe.image_size, 3),
                                              dtype=np.uint8)
    out = pipeline(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8


def test_recipes_differ_where_the_attributes_do():
    recipes = {a: load_recipe(a)[0] for a in ("mask", "gender", "age")}
    assert recipes["age"].age_thresholds != recipes["mask"].age_thresholds
    assert len({(r.lr, r.loss, r.epochs, r.sampler) for r in recipes.values()}) == 3


def test_override_parses_by_field_type():
    r = Recipe("age").override(["lr=3e-4", "epochs=2", "age_thresholds=29,59", "age_drop=57,59",
                               "mean=[0.4,0.4,0.4]", "backbone=resnet18", "samples-per-epoch=100"])
    assert (r.lr, r.epochs, r.backbone, r.samples_per_epoch) == (3e-4, 2, "resnet18", 100)
    assert r.age_thresholds == (29, 59) and r.age_drop == (57, 59) and r.mean == (0.4, 0.4, 0.4)
    assert r.age_rule.group(59) == 2 and r.age_rule.dropped(58)
    assert r.override(["age_drop=none"]).age_drop is None


@pytest.mark.parametrize("bad,match", [(["lrr=1"], "cannot set 'lrr=1'"), (["lr"], "field=value"),
                                       (["epochs=many"], "cannot parse"),
                                       (["resize_mode=crop"], "resize_mode"),
                                       (["fold=7"], "fold 7"),
                                       (["train_fraction=0"], "train_fraction"),
                                       (["train_fraction=1.5"], "train_fraction"),
                                       (["cutmix=0.7", "mixup=0.4"], "summing to at most 1"),
                                       (["mixup_alpha=0"], "must be positive"),
                                       (["cutmix=0.5", "batch_size=33"], "must be even")])
def test_override_errors_are_clear(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe("mask").override(bad)


def test_unknown_attribute():
    with pytest.raises(ValueError, match="unknown attribute"):
        load_recipe("hat")
