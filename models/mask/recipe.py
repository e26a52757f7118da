"""Mask state (wear / incorrect / not_wear): easy on drawn masks, hard on real faces.

A model trained on the competition layout alone learns how its masks are drawn and fails on
street photos, so the recipe is made for a mix of sources (see README, "Mask on real faces"):
the competition layout (drawn masks), real faces with fitted masks (maskon), street faces as
tight crops (realmasks) or, for crop=face models, cut from the photos around their annotated
boxes (realphotos), the street faces weighted up and choosing the checkpoint. Weights are set
for two optional sources too: realmasks' crops framed as faces (``crops=1``) and real faces
with masks drawn (aafdrawn, utkdrawn: ``draw=masks``). Trained from the competition layout
alone, it still works: weights and selection name sources it then ignores.

Augmentation groups (``aug_groups``; all by default): ``flip``; ``crop`` (zoom and shift: a
detector's box is never centred like an aligned crop, and its margin varies); ``colour``
(lighting, colour casts, grey); ``lowres`` (down- then up-scaling: street faces are often
24-60 px); ``blur``; ``jpeg``; ``noise``.
"""
import albumentations as A

from facet.models.augment import compose, street_conditions
from facet.models.recipe import Recipe

RECIPE = Recipe(
    attribute="mask",
    lr=1e-3,
    epochs=3,
    samples_per_epoch=4000,
    loss="ce",
    label_smoothing=0.05,
    sampler="balanced",
    patience=2,
    source_weights="maskfaces=1,maskon=1,realmasks=2,realphotos=2,aafdrawn=1,utkdrawn=1",
    select_on="realphotos,realmasks,all",
)

GROUPS = ("flip", "crop", "colour", "lowres", "blur", "jpeg", "noise")


def augmentations(recipe: Recipe) -> A.Compose:
    return compose(recipe, GROUPS, {
        "flip": [A.HorizontalFlip(p=0.5)],
        "crop": [A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), rotate=(-15, 15),
                          p=0.8)],
        "colour": [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.15, p=0.8),
                   A.ToGray(p=0.05)],
        **street_conditions(),
    })


def search_space(trial) -> list[str]:
    """`facet tune`: overrides to try (each parameter is named after its recipe field). No
    CutMix or MixUp: the mask's position is the label, and a pasted patch may carry it or not."""
    return [
        f"lr={trial.suggest_float('lr', 2e-4, 3e-3, log=True)}",
        f"weight_decay={trial.suggest_float('weight_decay', 5e-3, 0.1, log=True)}",
        f"label_smoothing={trial.suggest_float('label_smoothing', 0.0, 0.15)}",
        f"drop_rate={trial.suggest_float('drop_rate', 0.0, 0.4)}",
        f"ema={trial.suggest_categorical('ema', [0.0, 0.998])}",
    ]
