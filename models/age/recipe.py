"""Age group (<30 / 30-59 / >=60): the hard attribute, scored by macro-F1 with a rare 60+ class.

What worked in the competition: move the upper boundary down (58: 58-59 year olds are trained
as 60+, pulling the rare class's recall up), oversample 60+ (sqrt-balanced sampler) and a focal
loss. Validation still scores the true 30/60 groups.
"""
import albumentations as A

from facet.models.recipe import Recipe

RECIPE = Recipe(
    attribute="age",
    lr=8e-4,
    epochs=10,
    samples_per_epoch=8000,
    loss="focal",
    focal_gamma=1.5,
    label_smoothing=0.05,
    sampler="sqrt",
    ema=0.998,
    age_thresholds=(30, 58),
    patience=3,
    stratify="attribute",
)


def augmentations(recipe: Recipe) -> A.Compose:
    recipe.groups(())  # one fixed pipeline: a non-empty aug_groups is refused, not ignored
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.92, 1.1), translate_percent=(-0.05, 0.05), rotate=(-12, 12), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.6),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.4),
    ], seed=recipe.seed)
