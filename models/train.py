"""Training one attribute model: the machinery every recipe shares."""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import albumentations as A
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.data.mixup import cutmix_bbox_and_lam
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from tqdm import tqdm

from facet.combine import ATTRIBUTES, TRUE_AGE_RULE, combine_labels
from facet.metrics import by_age_band, plot_by_age_band, plot_confusion, plot_curves, scores
from facet.preprocess import PreprocessSpec, normalize

from .cache import build_cache
from .checkpoint import create_model, recalibrate_batchnorm, resolve_pretrained, save_weights
from .data import Table, training_labels
from .losses import build_loss, class_weights
from .recipe import Recipe
from .split import split_by_person

log = logging.getLogger(__name__)


class CachedImages(Dataset):
    """Rows of the decoded-image cache -> (normalised CHW tensor, label)."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 spec: PreprocessSpec, transform: A.Compose | None = None):
        self.images, self.rows, self.labels = images, rows, labels
        self.spec, self.transform = spec, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = np.asarray(self.images[self.rows[i]])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return torch.from_numpy(normalize(image, self.spec)), int(self.labels[i])


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_f1: float
    history: pd.DataFrame


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sampler(labels: np.ndarray, kind: str, num_samples: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if kind == "none":
        return RandomSampler(range(len(labels)), num_samples=num_samples, generator=generator)
    power = {"balanced": 1.0, "sqrt": 0.5}.get(kind)
    if power is None:
        raise ValueError(f"unknown sampler {kind!r}: none, balanced or sqrt")
    counts = np.bincount(labels)
    weights = 1.0 / np.power(counts[labels].astype(np.float64), power)
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)


def _macro_f1_from_confusion(cm: torch.Tensor) -> float:
    tp = cm.diag().float()
    denom = cm.sum(0).float() + cm.sum(1).float()
    return float((2 * tp / denom.clamp(min=1)).mean())


class Trainer:
    def __init__(self, recipe: Recipe, augment: Callable[[Recipe], A.Compose], table: Table,
                 run_dir: str | Path, cache_dir: str | Path = ".cache/facet",
                 device: str = "auto", workers: int | None = None, source: str = ""):
        self.recipe, self.table, self.source = recipe, table, source
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))
        self.workers = max(1, min(4, (os.cpu_count() or 2) - 1)) if workers is None else workers
        self.augment = augment(recipe)
        self.classes = list(ATTRIBUTES[recipe.attribute])
        self.problems = list(table.problems)

    # ---- data -------------------------------------------------------------------------
    def _prepare(self):
        r, frame = self.recipe, self.table.frame
        frame = frame[frame[r.attribute] >= 0].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"the data has no {r.attribute} labels")
        if r.stratify == "class18":
            known = (frame[["mask", "gender", "age"]] >= 0).all(axis=1)
            if not known.all():
                raise ValueError("stratify=class18 needs mask, gender and age on every image")
            strat = pd.Series(combine_labels(frame["mask"], frame["gender"], frame["age"]))
        elif r.stratify == "attribute":
            strat = frame[r.attribute]
        else:
            raise ValueError(f"unknown stratify {r.stratify!r}: attribute or class18")
        train_rows, val_rows = split_by_person(frame, strat, r.folds, r.fold, r.seed)
        images, bad = build_cache(frame["path"].tolist(), r.preprocess, self.cache_dir,
                                  workers=max(2, self.workers * 2))
        self.problems += [msg for _, msg in bad]
        bad_rows = {i for i, _ in bad}
        train_labels = training_labels(frame, r.attribute, r.age_rule).to_numpy()
        train_rows = np.array([i for i in train_rows if i not in bad_rows and train_labels[i] >= 0])
        val_rows = np.array([i for i in val_rows if i not in bad_rows])
        if r.train_fraction < 1:
            persons = frame["person"].iloc[train_rows]
            kept = np.random.default_rng(r.seed).choice(
                persons.unique(), max(1, round(persons.nunique() * r.train_fraction)), replace=False)
            train_rows = train_rows[persons.isin(kept).to_numpy()]
        self.split = {
            "train_images": len(train_rows), "val_images": len(val_rows),
            "train_persons": int(frame["person"].iloc[train_rows].nunique()),
            "val_persons": int(frame["person"].iloc[val_rows].nunique()),
            "dropped_boundary_ages": int((training_labels(frame, r.attribute, r.age_rule) < 0).sum()),
        }
        self.frame = frame
        self.val_rows = val_rows
        true_labels = frame[r.attribute].to_numpy()
        self.train_set = CachedImages(images, train_rows, train_labels[train_rows], r.preprocess,
                                      self.augment)
        self.val_set = CachedImages(images, val_rows, true_labels[val_rows], r.preprocess)

    def _loaders(self):
        r = self.recipe
        labels = self.train_set.labels
        n = r.samples_per_epoch or len(labels)
        common = dict(num_workers=self.workers, persistent_workers=self.workers > 0,
                      pin_memory=self.device.type == "cuda")
        train = DataLoader(self.train_set, batch_size=r.batch_size, drop_last=True,
                           sampler=_sampler(labels, r.sampler, n, r.seed), **common)
        val = DataLoader(self.val_set, batch_size=r.batch_size * 2, shuffle=False, **common)
        return train, val

    # ---- model ------------------------------------------------------------------------
    def _build(self, steps_per_epoch: int):
        r = self.recipe
        self.pretrained_from = resolve_pretrained(r.pretrained, r.backbone)
        model, self.weights_origin = create_model(r.backbone, r.num_classes, self.pretrained_from,
                                                  r.drop_rate)
        if not self.weights_origin.startswith("none"):
            sample = torch.stack([self.train_set[i][0] for i in
                                  np.random.default_rng(r.seed).choice(len(self.train_set),
                                                                       min(256, len(self.train_set)),
                                                                       replace=False)])
            if recalibrate_batchnorm(model, sample):
                self.weights_origin += " (folded BatchNorm re-calibrated on 256 training images)"
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(self.model, opt=r.optimizer, lr=r.lr,
                                             weight_decay=r.weight_decay,
                                             layer_decay=r.layer_decay or None)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=r.scheduler, num_epochs=r.epochs, min_lr=r.lr * 0.01,
            warmup_lr=r.lr * 0.05, warmup_epochs=r.warmup_epochs, step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=r.ema, use_warmup=True) if r.ema else None
        counts = torch.bincount(torch.as_tensor(self.train_set.labels), minlength=r.num_classes)
        weight = class_weights(r.class_weights, counts)
        self.criterion = build_loss(r.loss, r.num_classes,
                                    weight.to(self.device) if weight is not None else None,
                                    r.label_smoothing, r.focal_gamma, r.f1_weight)
        # Mixed precision on CUDA only: bf16 autocast is several times slower on CPUs.
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=self.device.type == "cuda")

    # ---- loop -------------------------------------------------------------------------
    def _mix(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        r = self.recipe
        draw = rng.random()
        if draw < r.cutmix:
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, rng.beta(1.0, 1.0))
            perm = torch.randperm(len(x))
            x = x.clone()
            x[:, :, yl:yh, xl:xh] = x[perm][:, :, yl:yh, xl:xh]
            return x, y[perm], lam
        if draw < r.cutmix + r.mixup:
            lam = float(rng.beta(0.4, 0.4))
            perm = torch.randperm(len(x))
            return lam * x + (1 - lam) * x[perm], y[perm], lam
        return x, y, 1.0

    def _train_epoch(self, loader, epoch: int, step: int, rng) -> tuple[float, float, int]:
        r = self.recipe
        self.model.train()
        cm = torch.zeros(r.num_classes, r.num_classes, dtype=torch.long)
        total, seen, start = 0.0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"{r.attribute} epoch {epoch}/{r.epochs}", unit="batch",
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x = x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            x, y2, lam = self._mix(x, y, rng)
            with self.autocast:
                logits = self.model(x)
                loss = lam * self.criterion(logits, y)
                if lam < 1.0:
                    loss = loss + (1 - lam) * self.criterion(logits, y2)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            step += 1
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            self.scheduler.step_update(num_updates=step)
            target = y if lam >= 0.5 else y2
            cm += torch.bincount((target * r.num_classes + logits.argmax(1)).cpu(),
                                 minlength=r.num_classes ** 2).view(r.num_classes, -1)
            total += loss.item() * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{total / seen:.4f}", f1=f"{_macro_f1_from_confusion(cm):.3f}")
        return total / max(seen, 1), seen / (time.perf_counter() - start), step

    @torch.inference_mode()
    def evaluate(self, loader) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean CE loss, probabilities, true labels) of the validated model on the val set."""
        model = self.validated_model.eval()
        probs, labels, total = [], [], 0.0
        for x, y in tqdm(loader, desc="validating", unit="batch", leave=False, dynamic_ncols=True):
            x = x.to(self.device, memory_format=torch.channels_last)
            with self.autocast:
                logits = model(x).float()
            total += float(F.cross_entropy(logits, y.to(self.device), reduction="sum"))
            probs.append(logits.softmax(1).cpu().numpy())
            labels.append(y.numpy())
        y_true = np.concatenate(labels)
        return total / len(y_true), np.concatenate(probs), y_true

    @property
    def validated_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _meta(self, epoch: int, metrics: dict) -> dict:
        r = self.recipe
        return {
            "attribute": r.attribute, "classes": self.classes, "epoch": epoch,
            "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"],
            "val_per_class_f1": metrics["per_class_f1"], "val_confusion": metrics["confusion"],
            "preprocess": r.preprocess.to_dict(),
            "age_rule": {"train": r.age_rule.to_dict(), "scored": TRUE_AGE_RULE.to_dict()},
            "recipe": r.to_dict(), "run": str(self.run_dir.resolve()),
        }

    def _resolved(self) -> dict:
        return {
            "recipe": self.recipe.to_dict(), "augmentations": A.to_dict(self.augment),
            "data": {"source": self.source, "summary": self.table.summary(), **self.split,
                     "problems": len(self.problems)},
            "pretrained": self.weights_origin, "device": str(self.device),
            "workers": self.workers, "torch": torch.__version__, "python": platform.python_version(),
        }

    def fit(self, resume: bool = False) -> RunResult:
        r = self.recipe
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        train_loader, val_loader = self._loaders()
        self._build(len(train_loader))
        val = self.frame.iloc[self.val_rows]
        pd.DataFrame({"path": val["path"], "person": val["person"], "age_years": val["age_years"],
                      "label": self.val_set.labels}).to_csv(self.run_dir / "val.csv", index=False)
        if self.problems:
            (self.run_dir / "problems.txt").write_text("\n".join(self.problems) + "\n")
            log.warning("%d data problem(s) skipped; see %s", len(self.problems),
                        self.run_dir / "problems.txt")
        (self.run_dir / "recipe.json").write_text(json.dumps(self._resolved(), indent=2))
        history, start_epoch, step, best, stale = [], 1, 0, -1.0, 0
        last = self.run_dir / "last.pt"
        if resume and last.exists():
            state = torch.load(last, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
            best, stale = float(state["best"]), int(state["stale"])
            history = pd.read_csv(self.run_dir / "metrics.csv").to_dict("records")
            log.info("resumed %s at epoch %d (best val macro-F1 %.4f)", self.run_dir,
                     start_epoch, best)
        rng = np.random.default_rng(r.seed + start_epoch)
        torch.manual_seed(r.seed + start_epoch)
        for epoch in range(start_epoch, r.epochs + 1):
            train_loss, speed, step = self._train_epoch(train_loader, epoch, step, rng)
            val_loss, probs, y_true = self.evaluate(val_loader)
            m = scores(y_true, probs.argmax(1), r.num_classes)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"],
                            **{f"val_f1_{c}": f for c, f in zip(self.classes, m["per_class_f1"])},
                            "train_img_per_s": speed,
                            "lr": max(g["lr"] for g in self.optimizer.param_groups)})
            pd.DataFrame(history).to_csv(self.run_dir / "metrics.csv", index=False)
            improved = m["macro_f1"] > best
            if improved:
                best, stale = m["macro_f1"], 0
                save_weights(self.validated_model, self._meta(epoch, m),
                             self.run_dir / "best.safetensors")
                np.save(self.run_dir / "val_probs.npy", probs)
            else:
                stale += 1
            tqdm.write(f"{r.attribute} epoch {epoch}: train loss {train_loss:.4f} | val loss "
                       f"{val_loss:.4f} macro-F1 {m['macro_f1']:.4f} acc {m['accuracy']:.4f} | "
                       f"{speed:.0f} img/s{' | best' if improved else ''}")
            self._save_last(last, epoch, step, best, stale)
            if stale >= r.patience:
                tqdm.write(f"early stop: no val macro-F1 gain for {stale} epoch(s)")
                break
        return self._finish(pd.DataFrame(history))

    def _save_last(self, path: Path, epoch: int, step: int, best: float, stale: int) -> None:
        tmp = path.with_suffix(".tmp")
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                 "best": best, "stale": stale}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash while saving keeps the previous last.pt

    def _finish(self, history: pd.DataFrame) -> RunResult:
        r = self.recipe
        best_row = history.loc[history["val_macro_f1"].idxmax()]
        meta = json.loads((self.run_dir / "best.json").read_text())
        plot_curves(history, self.run_dir / "curves.png", f"{r.attribute} ({r.backbone})")
        plot_confusion(meta["val_confusion"], self.classes, self.run_dir / "confusion.png",
                       f"{r.attribute}: val confusion, epoch {meta['epoch']} "
                       f"(macro-F1 {meta['val_macro_f1']:.3f})")
        bands = by_age_band(self.val_set.labels, np.load(self.run_dir / "val_probs.npy").argmax(1),
                            self.frame["age_years"].iloc[self.val_rows])
        if len(bands):  # needs real ages: the competition layout has them, a manifest may not
            bands.to_csv(self.run_dir / "val_by_age.csv", index=False)
            plot_by_age_band(bands, self.run_dir / "val_by_age.png",
                             f"{r.attribute}: val macro-F1 by age, epoch {meta['epoch']}")
        return RunResult(self.run_dir, int(best_row["epoch"]), float(best_row["val_macro_f1"]),
                         history)
