"""Training data for the loop: the table's rows split, cached and wrapped as datasets, and the
loaders that draw each epoch (the recipe's sampler, source shares, seeded workers)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import (DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler,
                              Subset, WeightedRandomSampler, get_worker_info)

from facet.combine import combine_labels
from facet.manifest import DataError, Table
from facet.metrics import AGE_BANDS
from facet.preprocess import PreprocessSpec, normalize_factors

from .augment import uses_landmarks
from .cache import build_cache, cached_landmarks
from .data import training_labels
from .occlusion import DRAWN_HEIGHTS, draw_for_label
from .recipe import Recipe
from .split import split_by_source

log = logging.getLogger(__name__)

PREFETCH = 4  # batches each training worker keeps ready

CHILD_AGE = AGE_BANDS[1]  # child_weight applies under this real age: the reports' first band


class CachedImages(Dataset):
    """Rows of the decoded-image cache -> (uint8 HWC tensor, label): a quarter of float32's
    bytes through the workers' shared memory and the copy to the device, where
    :class:`DeviceInput` normalises whole batches. The transform also gets each row's face
    ``landmarks`` (NaN: unknown) and whether it is ``maskable`` (no mask is known to be worn),
    for augmentations placed on the face; rows of ``draw=masks`` sources get the mask their
    label names drawn first (``draw``).

    An item may come as ``(index, worker seed)`` (:class:`EpochDraws`): a DataLoader worker
    reseeds its augmentations with ``worker seed + its id`` when the seed changes, so
    persistent workers augment each epoch as workers started afresh for it would."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 spec: PreprocessSpec, transform: A.Compose | None = None,
                 landmarks: np.ndarray | None = None, maskable: np.ndarray | None = None,
                 draw: np.ndarray | None = None, seed: int = 0):
        self.images, self.rows, self.labels = images, rows, labels
        self.spec, self.transform = spec, transform
        self.landmarks, self.maskable = landmarks, maskable
        self.draw = draw  # per row: the mask state to draw (draw=masks sources), -1: none
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]):
        i, seed = item if isinstance(item, tuple) else (item, None)
        worker = get_worker_info()
        if seed is not None and worker is not None and seed != getattr(self, "_seed", None):
            self.transform.set_random_seed((seed + worker.id) % 2**32)
            self._rng = np.random.default_rng((seed + worker.id) % 2**32)
            self._seed = seed
        row = self.rows[i]
        image = np.asarray(self.images[row])
        if self.draw is not None and self.draw[row] >= 0:  # before the geometric steps
            image = draw_for_label(image, self.landmarks[row], int(self.draw[row]), self._rng)
        if self.transform is not None:
            face = {} if self.landmarks is None else {"landmarks": self.landmarks[row],
                                                      "maskable": bool(self.maskable[row])}
            image = self.transform(image=image, **face)["image"]
        return torch.from_numpy(np.require(image, requirements=("C", "W"))), int(self.labels[i])


class DeviceInput:
    """uint8 NHWC batches -> the model's float32 NCHW input on ``device``, in channels_last
    memory (the NHWC pixels' own order), with :func:`facet.preprocess.normalize`'s arithmetic:
    the numbers CPU training always saw."""

    def __init__(self, spec: PreprocessSpec, device: torch.device):
        self.scale, self.bias = (torch.from_numpy(f).view(1, 3, 1, 1).to(device)
                                 for f in normalize_factors(spec))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.scale.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x.mul_(self.scale).add_(self.bias)


class EpochDraws(Sampler):
    """An epoch's draws of ``sampler``, each paired with the epoch's ``worker_seed`` (set by
    the loop before the epoch starts). With ``world`` > 1 (DDP), this rank's share of them,
    split as DistributedSampler splits: every rank draws the same epoch from the same seed."""

    def __init__(self, sampler: Sampler, world: int = 1, rank: int = 0):
        self.draws, self.worker_seed = sampler, 0
        self.shard = (DistributedSampler(range(len(sampler)), world, rank, shuffle=False,
                                         drop_last=True) if world > 1 else None)

    def __len__(self) -> int:
        return len(self.shard) if self.shard is not None else len(self.draws)

    def __iter__(self):
        drawn = list(self.draws)
        mine = self.shard if self.shard is not None else range(len(drawn))
        return iter([(drawn[k], self.worker_seed) for k in mine])


@dataclass
class TrainingData:
    """What :func:`prepare` makes of a table: the labelled rows (``frame``), the split's
    summary (``split``, written to recipe.json), the datasets, the val rows, the sources and
    those validated on, what selects the checkpoint, and the images that could not be read."""

    frame: pd.DataFrame
    split: dict
    train_set: CachedImages
    val_set: CachedImages
    val_rows: np.ndarray
    sources: list[str]
    val_sources: list[str]
    select_on: str
    problems: list[str]


def prepare(recipe: Recipe, table: Table, augment: A.Compose, cache_dir: Path,
            workers: int) -> TrainingData:
    """The table's labelled rows split, cached and wrapped for the loaders (bad images left
    out, as problems)."""
    r, frame = recipe, table.frame
    unlabelled = set(frame["source"]) - set(frame.loc[frame[r.attribute] >= 0, "source"])
    if unlabelled or frame.empty:
        raise DataError(f"no {r.attribute} labels in {sorted(unlabelled) or 'the data'}")
    frame = frame[frame[r.attribute] >= 0].reset_index(drop=True)
    if r.stratify == "class18":
        known = (frame[["mask", "gender", "age"]] >= 0).all(axis=1)
        if not known.all():
            raise ValueError("stratify=class18 needs mask, gender and age on every image")
        strat = pd.Series(combine_labels(frame["mask"], frame["gender"], frame["age"]))
    elif r.stratify == "attribute":
        strat = frame[r.attribute]
    else:
        raise ValueError(f"unknown stratify {r.stratify!r}: attribute or class18")
    train_rows, val_rows = split_by_source(frame, strat, r)
    named = frame["box"].notna()  # faces a manifest's boxes name: cut, not detected
    images, bad, faces = build_cache(frame["path"].tolist(), r.preprocess, cache_dir,
                                     workers=max(2, workers * 2),
                                     boxes=frame["box"].tolist() if named.any() else None)
    problems = [msg for _, msg in bad]
    bad_rows = {i for i, _ in bad}
    train_labels = training_labels(frame, r.attribute, r.age_rule).to_numpy()
    train_rows = np.array([i for i in train_rows if i not in bad_rows and train_labels[i] >= 0])
    val_rows = np.array([i for i in val_rows if i not in bad_rows])
    if r.train_fraction < 1:
        persons = frame["person"].iloc[train_rows]
        kept = np.random.default_rng(r.seed).choice(
            persons.unique(), max(1, round(persons.nunique() * r.train_fraction)), replace=False)
        train_rows = train_rows[persons.isin(kept).to_numpy()]
    split = {
        "train_images": len(train_rows), "val_images": len(val_rows),
        "sources": {name: {"train_images": n, "val_images": _per_source(frame, val_rows)[name]}
                    for name, n in _per_source(frame, train_rows).items()},
        "train_persons": int(frame["person"].iloc[train_rows].nunique()),
        "val_persons": int(frame["person"].iloc[val_rows].nunique()),
        "dropped_boundary_ages": int((training_labels(frame, r.attribute, r.age_rule) < 0).sum()),
    }
    if named.any():
        split["named_faces"] = int(named.sum())
    pseudo = (frame["pseudo"].eq(True) if "pseudo" in frame.columns
              else pd.Series(False, index=frame.index))
    if pseudo.any():  # trained on only: never in val, so in no val score nor select_on
        split["pseudo_train_images"] = int(pseudo.iloc[train_rows].sum())
    if r.crop == "face":  # the images the crop rule could not apply to (fallback region)
        readable = len(frame) - len(bad_rows)
        split["no_face_found"] = readable - sum(f is not None for f in faces)
        log.info("crop=face: no face found in %d of %d images (their %s region is used)",
                 split["no_face_found"], readable, r.crop_fallback)
    sources = list(frame["source"].unique())
    labelled = set(frame.loc[~pseudo, "source"])
    val_sources = [s for s in sources if s in labelled]
    try:
        select_on = r.selection(val_sources)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    true_labels = frame[r.attribute].to_numpy()
    drawn = (frame["drawn"].eq(True).to_numpy() if "drawn" in frame.columns
             else np.zeros(len(frame), bool))
    face = {}
    if uses_landmarks(augment) or drawn.any():  # found once, on the cached pixels
        landmarks = cached_landmarks(images, workers=max(2, workers * 2))
        found = np.isfinite(landmarks).all(axis=(1, 2))
        split["landmarks_found_share"] = round(float(found[train_rows].mean()), 4)
        face = {"landmarks": landmarks, "maskable": ~frame["mask"].isin([0, 1]).to_numpy()}
        if drawn.any():  # a mask is drawn only where the face's landmarks place it
            bare = ~frame["mask"].isin(list(DRAWN_HEIGHTS)).to_numpy()  # nothing to draw
            placed = (~drawn | found | bare)[train_rows]
            split["drawn_masks"] = int(drawn[train_rows][placed].sum())
            split["drawn_without_landmarks"] = int((~placed).sum())
            train_rows = train_rows[placed]
            split["train_images"] = len(train_rows)
            for name, n in _per_source(frame, train_rows).items():
                split["sources"][name]["train_images"] = n
            face["draw"] = np.where(drawn, frame["mask"].to_numpy(), -1)
    train_set = CachedImages(images, train_rows, train_labels[train_rows], r.preprocess,
                             augment, **face, seed=r.seed)
    val_set = CachedImages(images, val_rows, true_labels[val_rows], r.preprocess)
    return TrainingData(frame, split, train_set, val_set, val_rows, sources, val_sources,
                        select_on, problems)


def _per_source(frame: pd.DataFrame, rows: np.ndarray) -> dict[str, int]:
    """How many of ``rows`` each source of ``frame`` holds (0 for a source with none)."""
    counts = frame["source"].iloc[rows].value_counts()
    return {name: int(counts.get(name, 0)) for name in frame["source"].unique()}


def loaders(data: TrainingData, recipe: Recipe, device: torch.device, workers: int,
            world: int = 1, rank: int = 0) -> tuple[DataLoader, DataLoader]:
    """(the training loader: each epoch drawn by the recipe's sampler, the val loader). With
    ``world`` > 1 (DDP), each loads this rank's share: of every epoch's draws, and a
    contiguous slice of the val set (gathered in rank order, it is the val set again)."""
    r = recipe
    labels = data.train_set.labels
    n = r.samples_per_epoch or len(labels)
    # Workers persist across epochs and keep batches queued ahead (their seeds travel with
    # the draws); drop_last keeps batches even, as Mixup needs.
    common = dict(num_workers=workers, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0, prefetch_factor=PREFETCH if workers else None)
    sources = data.frame["source"].to_numpy()[data.train_set.rows]
    sizes = {name: int((sources == name).sum()) for name in data.sources}
    shares, absent = r.source_shares(sizes) if r.source_weights else (None, [])
    unweighted = sorted(set(data.sources) - set(r.source_weights_names))
    if absent and unweighted:  # a misspelt name leaves a source at weight 1
        log.warning("source_weights names %s, which are not among the sources, and not %s "
                    "(weight 1)", absent, unweighted)
    years = data.frame["age_years"].to_numpy()[data.train_set.rows]
    boost = (np.where((years >= 0) & (years < CHILD_AGE), r.child_weight, 1.0)
             if r.child_weight != 1 else None)
    draws = EpochDraws(epoch_sampler(labels, r.sampler, n, sources, shares, boost), world, rank)
    # its own generator: the seeds a DataLoader draws must not move torch's global one, which
    # dropout follows
    train = DataLoader(data.train_set, batch_size=r.batch_size, drop_last=True, sampler=draws,
                       generator=torch.Generator(), **common)
    val_set = (Subset(data.val_set, np.array_split(np.arange(len(data.val_set)), world)[rank])
               if world > 1 else data.val_set)
    val = DataLoader(val_set, batch_size=r.batch_size * 2, shuffle=False, **common)
    return train, val


def epoch_sampler(labels: np.ndarray, kind: str, num_samples: int, sources: np.ndarray,
                  shares: dict[str, float] | None = None, boost: np.ndarray | None = None):
    """Draws an epoch's samples: each source gets its share (``shares``, else by size), and
    within a source ``kind`` balances the classes (balanced), half-way (sqrt), or not (none);
    ``boost`` multiplies some images' weight within their source (children)."""
    generator = torch.Generator()  # seeded at the start of every epoch
    power = {"none": 0.0, "balanced": 1.0, "sqrt": 0.5}.get(kind)
    if power is None:
        raise ValueError(f"unknown sampler {kind!r}: none, balanced or sqrt")
    if kind == "none" and (shares is None or len(shares) == 1) and boost is None:
        return RandomSampler(range(len(labels)), num_samples=num_samples, generator=generator)
    weights = np.zeros(len(labels))
    for name in np.unique(sources):
        rows = sources == name
        counts = np.bincount(labels[rows])
        within = 1.0 / np.power(counts[labels[rows]].astype(np.float64), power)
        if boost is not None:
            within = within * boost[rows]
        share = shares[name] if shares is not None else rows.mean()
        weights[rows] = share * within / within.sum()
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
