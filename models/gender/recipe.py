"""Gender (male / female): a per-person attribute; every mask image of a person is a view.

Five of seven images hide the lower face, and there are only ~2,200 training faces (each seen
seven times), so the model overfits the faces it knows: CutMix, label smoothing (UTKFace's labels
are noisy too), dropout and an EMA of the weights, with the longest schedule of the three.
"""
import albumentations as A

from facet.models.recipe import Recipe

RECIPE = Recipe(
    attribute="gender",
    lr=1e-3,
    epochs=12,
    samples_per_epoch=8000,
    loss="ce",
    label_smoothing=0.1,
    cutmix=0.5,
    drop_rate=0.3,
    ema=0.998,
    patience=4,
)


def augmentations(recipe: Recipe) -> A.Compose:
    recipe.groups(())  # one fixed pipeline: a non-empty aug_groups is refused, not ignored
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.12), translate_percent=(-0.06, 0.06), rotate=(-15, 15), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=0.5),
        A.ToGray(p=0.1),
    ], seed=recipe.seed)


def search_space(trial) -> list[str]:
    """`facet tune`: overrides to try (each parameter is named after its recipe field): the
    regularisers that fight overfitting the faces it knows, and the step size."""
    return [
        f"lr={trial.suggest_float('lr', 2e-4, 3e-3, log=True)}",
        f"weight_decay={trial.suggest_float('weight_decay', 5e-3, 0.1, log=True)}",
        f"label_smoothing={trial.suggest_float('label_smoothing', 0.0, 0.2)}",
        f"drop_rate={trial.suggest_float('drop_rate', 0.0, 0.5)}",
        f"cutmix={trial.suggest_float('cutmix', 0.0, 0.7)}",
        f"mixup={trial.suggest_float('mixup', 0.0, 0.3)}",  # cutmix + mixup <= 1 by the ranges
        f"ema={trial.suggest_categorical('ema', [0.0, 0.998])}",
    ]
