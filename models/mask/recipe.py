"""Mask state (wear / incorrect / not_wear): an easy, colour- and shape-driven task.

Small input, few epochs; the competition layout has five worn images per person, so the
balanced sampler stops 'wear' from dominating. Colour jitter with hue covers mask colours.
"""
import albumentations as A

from facet.models.recipe import Recipe

RECIPE = Recipe(
    attribute="mask",
    lr=1e-3,
    epochs=2,
    samples_per_epoch=6000,
    loss="ce",
    label_smoothing=0.05,
    sampler="balanced",
    patience=2,
)


def augmentations(recipe: Recipe) -> A.Compose:
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), p=0.7),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4, hue=0.15, p=0.8),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
    ], seed=recipe.seed)
