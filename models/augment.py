"""Augmentation steps more than one recipe uses, and the one way a recipe's groups become its
pipeline. Each recipe names its groups (``aug_groups`` picks among them) in its docstring."""
from __future__ import annotations

import albumentations as A

from .occlusion import MaskOcclusion
from .recipe import Recipe


def street_conditions() -> dict[str, list]:
    """What real photos do to a face that curated crops do not: ``lowres`` (down- then
    up-scaling: street faces are often 24-60 px), ``blur``, ``jpeg``, ``noise``."""
    return {
        "lowres": [A.Downscale(scale_range=(0.2, 0.6), p=0.4)],
        "blur": [A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))],
                         p=0.25)],
        "jpeg": [A.ImageCompression(quality_range=(30, 90), p=0.4)],
        "noise": [A.GaussNoise(std_range=(0.01, 0.05), p=0.2)],
    }


def mask_occlusion(p: float = 0.6) -> dict[str, list]:
    """``mask``: a drawn mask on faces not known to wear one (gender and age), placed from
    their landmarks; first in a pipeline, so the geometric steps move it with the face."""
    return {"mask": [MaskOcclusion(p=p)]}


def compose(recipe: Recipe, order: tuple[str, ...], steps: dict[str, list]) -> A.Compose:
    """The pipeline of the groups ``aug_groups`` turns on, in ``order``, seeded by the recipe."""
    on = recipe.groups(order)
    return A.Compose([t for group in order if group in on for t in steps[group]],
                     seed=recipe.seed)


def uses_landmarks(pipeline: A.Compose) -> bool:
    """Whether a pipeline places something from face landmarks (they must then be found)."""
    return any(isinstance(t, MaskOcclusion) for t in pipeline.transforms)
