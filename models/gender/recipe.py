"""Gender (male / female): a per-person attribute; every mask image of a person is a view.

Label smoothing for UTKFace's noisy labels, CutMix as a regulariser, and colour/grey
augmentations so the model looks at the face rather than the drawn mask.
"""
import albumentations as A

from facet.models.recipe import Recipe

RECIPE = Recipe(
    attribute="gender",
    lr=8e-4,
    epochs=8,
    samples_per_epoch=8000,
    loss="ce",
    label_smoothing=0.1,
    cutmix=0.3,
    patience=3,
)


def augmentations(recipe: Recipe) -> A.Compose:
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.12), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.ToGray(p=0.1),
    ], seed=recipe.seed)
