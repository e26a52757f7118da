"""Age group (<30 / 30-59 / >=60): the hard attribute, scored by macro-F1 with a rare 60+ class.

What worked in the competition: move the upper boundary down (58: 58-59 year olds are trained
as 60+, pulling the rare class's recall up), oversample 60+ (sqrt-balanced sampler) and a focal
loss. Validation still scores the true 30/60 groups.

Made for gender's four sources (maskfaces, aaf, aafrest, utkextra; 2:1:1:1), the checkpoint
kept by the mean of their val macro-F1. Augmentation groups (``aug_groups``):
``mask``, ``flip``, ``crop``, ``colour``, ``lowres``, ``blur``, ``jpeg``, ``noise`` (as
gender's); the default is flip, crop and colour, as for gender.
"""
import albumentations as A

from facet.models.augment import compose, mask_occlusion, street_conditions
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
    source_weights="maskfaces=2,aaf=1,aafrest=1,utkextra=1",
    select_on="mean",
    aug_groups="flip,crop,colour",
)

GROUPS = ("mask", "flip", "crop", "colour", "lowres", "blur", "jpeg", "noise")


def augmentations(recipe: Recipe) -> A.Compose:
    return compose(recipe, GROUPS, {
        **mask_occlusion(),
        "flip": [A.HorizontalFlip(p=0.5)],
        "crop": [A.Affine(scale=(0.92, 1.1), translate_percent=(-0.05, 0.05), rotate=(-12, 12),
                          p=0.8)],
        "colour": [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.6),
                   A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20,
                                        val_shift_limit=10, p=0.4)],
        **street_conditions(),
    })


def search_space(trial) -> list[str]:
    """`facet tune`: overrides to try (each parameter is named after its recipe field),
    including where the upper training boundary sits and how hard the focal loss focuses."""
    return [
        f"lr={trial.suggest_float('lr', 2e-4, 3e-3, log=True)}",
        f"weight_decay={trial.suggest_float('weight_decay', 5e-3, 0.1, log=True)}",
        f"label_smoothing={trial.suggest_float('label_smoothing', 0.0, 0.15)}",
        f"drop_rate={trial.suggest_float('drop_rate', 0.0, 0.5)}",
        f"focal_gamma={trial.suggest_float('focal_gamma', 0.0, 3.0)}",
        f"cutmix={trial.suggest_float('cutmix', 0.0, 0.5)}",
        f"mixup={trial.suggest_float('mixup', 0.0, 0.3)}",
        f"ema={trial.suggest_categorical('ema', [0.0, 0.998])}",
        f"age_thresholds={trial.suggest_categorical('age_thresholds', ['30,57', '30,58', '30,60'])}",
    ]
