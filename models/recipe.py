"""A training recipe: everything that differs between the three attribute models.

Each attribute keeps its recipe in ``models/<attribute>/recipe.py`` as ``RECIPE`` plus an
``augmentations(recipe)`` function returning its albumentations pipeline (train only), and
``search_space(trial)``: the ``--set`` overrides `facet tune` tries, drawn from an Optuna trial
whose parameters are named after the recipe fields they set.
Any field can be overridden from the command line with ``--set field=value``.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from facet.combine import ATTRIBUTES, AgeRule
from facet.preprocess import CROP_MARGIN, PreprocessSpec


@dataclass(frozen=True)
class Recipe:
    attribute: str
    # model
    backbone: str = "mobilenetv2_100"
    pretrained: str = "auto"  # auto (local file from $FACET_WEIGHTS_DIR, else hub) | hub | none | path
    drop_rate: float = 0.2
    bn_calibration_images: int = 256  # training images that re-estimate folded BatchNorm
    #                                   statistics of TFLite-converted weights
    # input: the preprocessing spec saved with the checkpoint and the ONNX file
    image_size: int = 128
    resize_mode: str = "stretch"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop: str = "none"  # none: the images are face crops | face: detect, crop the largest face
    crop_margin: float = CROP_MARGIN  # the crop is a square this many times the face box's
    #                                   longer side
    crop_fallback: str = "frame"  # no face found: frame (the image as one face filling it, cut
    #                               by the crop rule) | whole (stretched) | center (its square)
    # optimisation
    optimizer: str = "adamw"  # any timm.optim name
    lr: float = 1e-3
    weight_decay: float = 0.02
    layer_decay: float = 0.0  # each block group down from the head gets lr x this (0: one lr);
    #                           small data keeps more of the pretrained features that way
    scheduler: str = "cosine"  # any timm.scheduler name
    warmup_epochs: float = 0.5
    warmup_lr_factor: float = 0.05  # warmup starts at lr x this
    min_lr_factor: float = 0.01  # the schedule ends at lr x this
    epochs: int = 5
    batch_size: int = 64
    compile: bool = False  # torch.compile the training forward pass (CUDA: faster steps after
    #                        a compile of a minute or so; the saved weights are the same module)
    samples_per_epoch: int = 0  # 0: every training image once per epoch
    patience: int = 3  # early stopping on val macro-F1
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); when on,
    #                   the average is what gets validated and saved
    # loss and sampling
    loss: str = "ce"  # ce | focal | f1
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    f1_weight: float = 0.0  # adds this much soft macro-F1 loss to ce/focal
    class_weights: str = "none"  # none | balanced | comma-separated weights
    sampler: str = "none"  # none | balanced | sqrt (oversample rare classes)
    child_weight: float = 1.0  # sampling weight of training images of children (real age
    #                            under 13; gender's weakest band), within their source
    aug_groups: str = ""  # augmentation groups the attribute's augmentations() turns on,
    #                       comma-separated (its docstring lists them); empty: all of them
    cutmix: float = 0.0  # probability that a batch is CutMix-ed
    mixup: float = 0.0  # probability that a batch is MixUp-ed
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) draws the share of the image CutMix keeps
    mixup_alpha: float = 0.4  # Beta(alpha, alpha) draws the weight MixUp gives each image
    # labels
    age_thresholds: tuple[int, int] = (30, 60)
    age_drop: tuple[int, int] | None = None  # boundary ages left out of training only
    # split
    train_fraction: float = 1.0  # train on this share of the training persons (seeded), for
    #                              learning curves: does more data help? Val stays the same
    folds: int = 5
    fold: int = 0
    stratify: str = "attribute"  # attribute | class18
    seed: int = 42
    # several data sources (--data and --manifest, each split by its own groups)
    source_weights: str = ""  # "realmasks=2,maskon=1,maskfaces=1": each source's share of an
    #                           epoch's samples (unnamed sources: 1); empty: by size
    select_on: str = "all"  # what keeps the checkpoint and stops early: val macro-F1 over all
    #                         val images (all), its mean over sources (mean) or a source's name;
    #                         several, comma-separated: the first that applies

    def __post_init__(self):
        if self.attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {list(ATTRIBUTES)}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.cutmix < 0 or self.mixup < 0 or self.cutmix + self.mixup > 1:
            raise ValueError(f"cutmix and mixup are probabilities summing to at most 1, got "
                             f"{self.cutmix} and {self.mixup}")
        if self.cutmix_alpha <= 0 or self.mixup_alpha <= 0:
            raise ValueError("cutmix_alpha and mixup_alpha must be positive (cutmix=0 or "
                             "mixup=0 turns one off)")
        if self.cutmix + self.mixup and self.batch_size % 2:
            raise ValueError(f"CutMix and MixUp pair each image with another: batch_size must be "
                             f"even, got {self.batch_size}")
        if not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold} is outside 0..{self.folds - 1}")
        if self.patience < 1 or self.epochs < 1:
            raise ValueError(f"epochs and patience must be >= 1, got {self.epochs} and "
                             f"{self.patience}")
        if self.sampler not in ("none", "balanced", "sqrt"):
            raise ValueError(f"unknown sampler {self.sampler!r}: none, balanced or sqrt")
        if not 0 < self.child_weight < float("inf"):
            raise ValueError(f"child_weight must be positive, got {self.child_weight}")
        if self.stratify not in ("attribute", "class18"):
            raise ValueError(f"unknown stratify {self.stratify!r}: attribute or class18")
        self.preprocess  # validates size, resize mode and crop
        self.age_rule  # validates thresholds
        self.source_shares({"": 1})  # validates the weights' syntax

    @property
    def num_classes(self) -> int:
        return len(ATTRIBUTES[self.attribute])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(self.image_size, self.image_size, self.resize_mode, self.mean,
                              self.std, self.crop, self.crop_margin, self.crop_fallback)

    def source_shares(self, sizes: dict[str, int]) -> tuple[dict[str, float], list[str]]:
        """(each source's share of an epoch's samples, the weighted names that are not among
        the sources), from ``source_weights``, or the sizes when it is empty."""
        if not self.source_weights:
            return {name: n / sum(sizes.values()) for name, n in sizes.items()}, []
        weights = {}
        for item in self.source_weights.split(","):
            name, _, value = item.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"source_weights: {item!r} is not name=weight") from None
            if not name.strip() or not 0 <= weights[name.strip()] < float("inf"):
                raise ValueError(f"source_weights: {item!r} is not name=weight, weight >= 0")
        absent = sorted(set(weights) - set(sizes))
        weights = {name: weights.get(name, 1.0) for name in sizes}
        if not sum(weights.values()):
            raise ValueError(f"source_weights: the sources' weights are all 0 ({weights})")
        return {name: w / sum(weights.values()) for name, w in weights.items()}, absent

    @property
    def source_weights_names(self) -> list[str]:
        """The sources ``source_weights`` names."""
        return [item.partition("=")[0].strip() for item in self.source_weights.split(",") if item]

    def selection(self, sources: list[str]) -> str:
        """The ``select_on`` choice that applies to these sources: all, mean or a source."""
        for choice in (c.strip() for c in self.select_on.split(",")):
            if choice in ("all", "mean", *sources):
                return choice
        raise ValueError(f"select_on={self.select_on!r}: use all, mean or a source name "
                         f"({', '.join(sources)})")

    def groups(self, known: tuple[str, ...]) -> set[str]:
        """The augmentation groups ``aug_groups`` turns on, out of an attribute's ``known``."""
        chosen = {g.strip() for g in self.aug_groups.split(",") if g.strip()} or set(known)
        if chosen - set(known):
            raise ValueError(f"aug_groups: unknown {sorted(chosen - set(known))}; the "
                             f"{self.attribute} recipe has {', '.join(known) or 'no groups'}")
        return chosen

    @property
    def age_rule(self) -> AgeRule:
        return AgeRule(tuple(self.age_thresholds), tuple(self.age_drop) if self.age_drop else None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields_: dict) -> "Recipe":
        """The recipe :meth:`to_dict` gave, back from JSON: its lists become the tuples the
        fields hold (the preprocessing spec built from them is hashed as a dict key)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields_.items()})

    def override(self, assignments: list[str]) -> "Recipe":
        """Apply ``field=value`` strings; values are parsed by the field's type."""
        hints = get_type_hints(Recipe)
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, text = item.partition("=")
            key = field_name(key)
            if not sep or key not in hints:
                known = ", ".join(f.name for f in fields(Recipe))
                raise ValueError(f"cannot set {item!r}: expected field=value, fields: {known}")
            changes[key] = _parse(hints[key], text.strip(), key)
        return dataclasses.replace(self, **changes)


def field_name(key: str) -> str:
    """The recipe field a ``--set`` key names (``weight-decay`` -> ``weight_decay``)."""
    return key.strip().replace("-", "_")


def _parse(hint, text: str, key: str):
    try:
        if hint is str:
            return text
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes", "on")
        # tuples and optionals: JSON or comma-separated
        if text.lower() in ("none", "null", ""):
            return None
        parts = json.loads(text) if text.startswith("[") else text.split(",")
        cast = float if "float" in str(hint) else int
        return tuple(cast(p) for p in parts)
    except ValueError:
        raise ValueError(f"cannot parse {key}={text!r} as {hint}") from None


def load_recipe(attribute: str):
    """(RECIPE, augmentations) of ``models/<attribute>/recipe.py``."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose from {list(ATTRIBUTES)}")
    module = importlib.import_module(f"facet.models.{attribute}.recipe")
    return module.RECIPE, module.augmentations
