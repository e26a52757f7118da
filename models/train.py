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
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from facet.atomic import atomic_path
from facet.combine import ATTRIBUTES, TRUE_AGE_RULE
from facet.faces import default_detector
from facet.manifest import Table
from facet.metrics import (by_age_band, macro_f1_from_confusion, plot_by_age_band, plot_confusion,
                           plot_curves, scores)
from facet.progress import progress_bar

from . import distributed, run_folder
from .checkpoint import create_model, recalibrate_batchnorm, resolve_pretrained, save_weights
from .losses import build_loss, class_weights
from .recipe import Recipe
from .resume import resumable
from .training_data import DeviceInput, loaders, prepare

log = logging.getLogger(__name__)

LOG_EVERY = 25  # steps between reads of the running loss and F1 (each read waits for the GPU)


def default_workers() -> int:
    """DataLoader workers when none are asked for: every core this process may use but one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_f1: float
    history: pd.DataFrame


class Trainer:
    def __init__(self, recipe: Recipe, augment: Callable[[Recipe], A.Compose], table: Table,
                 run_dir: str | Path, cache_dir: str | Path = ".cache/facet",
                 device: str = "auto", workers: int | None = None, source: str = ""):
        self.recipe, self.table, self.source = recipe, table, source
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir)
        self.ranks, self.device = distributed.join(torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)))
        self.workers = default_workers() if workers is None else workers
        self.augment = augment(recipe)
        self.classes = list(ATTRIBUTES[recipe.attribute])
        self.problems = list(table.problems)

    # ---- data -------------------------------------------------------------------------
    def _prepare(self):
        self.data = prepare(self.recipe, self.table, self.augment, self.cache_dir, self.workers)
        self.problems += self.data.problems

    def _seed_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Every random draw of an epoch follows from (seed, epoch) alone, so a resumed run
        replays the epochs it missed exactly: sampling order, augmentations (in this process or
        per worker), CutMix/MixUp (timm draws from numpy's global generator) and dropout."""
        sampler, workers, transform, others = (
            np.random.SeedSequence([self.recipe.seed, epoch]).generate_state(4).tolist())
        loader.sampler.draws.generator.manual_seed(sampler)
        # the base seed a DataLoader draws for workers it starts; each DDP rank's workers
        # augment apart
        base = torch.empty((), dtype=torch.int64).random_(
            generator=torch.Generator().manual_seed(workers)).item()
        loader.sampler.worker_seed = base + self.ranks.rank * max(self.workers, 1)
        self.data.train_set.transform.set_random_seed(transform)  # used when there are no workers
        random.seed(others)
        np.random.seed(others)
        torch.manual_seed(others)  # CUDA generators too

    # ---- model ------------------------------------------------------------------------
    def _build(self, steps_per_epoch: int):
        r = self.recipe
        self.pretrained_from = resolve_pretrained(r.pretrained, r.backbone)
        torch.manual_seed(r.seed)  # weights not loaded from a file start the same in every run
        model, self.weights_origin = create_model(r.backbone, r.num_classes, self.pretrained_from,
                                                  r.drop_rate)
        if not self.weights_origin.startswith("none"):
            n = min(r.bn_calibration_images, len(self.data.train_set))
            rows = np.random.default_rng(r.seed).choice(len(self.data.train_set), n, replace=False)
            sample = DeviceInput(r.preprocess, torch.device("cpu"))(
                torch.stack([self.data.train_set[i][0] for i in rows])).contiguous()
            if recalibrate_batchnorm(model, sample):
                self.weights_origin += (f" (folded BatchNorm re-calibrated on {len(sample)} "
                                        "training images)")
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(self.model, opt=r.optimizer, lr=r.lr,
                                             weight_decay=r.weight_decay,
                                             layer_decay=r.layer_decay or None)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=r.scheduler, num_epochs=r.epochs,
            min_lr=r.lr * r.min_lr_factor, warmup_lr=r.lr * r.warmup_lr_factor,
            warmup_epochs=r.warmup_epochs, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=r.ema, use_warmup=True) if r.ema else None
        # The recipe's cutmix and mixup are the shares of batches each gets; label smoothing
        # stays with the loss, which takes Mixup's (N, C) targets.
        mixed = r.cutmix + r.mixup
        self.mixer = Mixup(mixup_alpha=r.mixup_alpha if r.mixup else 0.0,
                           cutmix_alpha=r.cutmix_alpha if r.cutmix else 0.0, prob=mixed,
                           switch_prob=r.cutmix / mixed, label_smoothing=0.0,
                           num_classes=r.num_classes) if mixed else None
        counts = torch.bincount(torch.as_tensor(self.data.train_set.labels),
                                minlength=r.num_classes)
        weight = class_weights(r.class_weights, counts)
        self.criterion = build_loss(r.loss, r.num_classes,
                                    weight.to(self.device) if weight is not None else None,
                                    r.label_smoothing, r.focal_gamma, r.f1_weight)
        # Mixed precision on CUDA only (bf16 autocast is several times slower on CPUs): bf16
        # where the GPU has it, else fp16, whose narrow range needs the loss scaled. cuDNN
        # picks the fastest kernels for the fixed batch shape; fp32 matmuls run as TF32.
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        self.precision = ("bf16" if dtype == torch.bfloat16 else "fp16") if cuda else "fp32"
        self.autocast = torch.autocast("cuda", dtype=dtype, enabled=cuda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.input = DeviceInput(r.preprocess, self.device)
        # DDP averages the gradients over the ranks; checkpoints and EMA use the plain module
        step = (DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)
                if self.ranks.world > 1 else self.model)
        self.forward = torch.compile(step) if r.compile else step
        # validation runs the plain module (compiled when compile is on), never DDP's wrapper:
        # the ranks' slices may differ by a batch
        self.validate = (self.validated_model if not r.compile else
                         self.forward if self.validated_model is step else
                         torch.compile(self.validated_model))

    # ---- loop -------------------------------------------------------------------------
    def _train_epoch(self, loader, epoch: int, step: int) -> tuple[float, float, int]:
        """(mean training loss, img/s, step). The loss and the confusion add up on the device:
        the host reads them every LOG_EVERY steps, so it never waits on the GPU in between."""
        r, n = self.recipe, self.recipe.num_classes
        self.model.train()
        cm = torch.zeros(n * n, dtype=torch.long, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, start = 0, time.perf_counter()
        bar = progress_bar(loader, desc=f"{r.attribute} epoch {epoch}/{r.epochs}", unit="batch",
                           leave=False, dynamic_ncols=True, disable=not self.ranks.main)
        for k, (x, y) in enumerate(bar, 1):
            x, y = self.input(x), y.to(self.device, non_blocking=True)
            x, target = self.mixer(x, y) if self.mixer else (x, y)
            with self.autocast:
                logits = self.forward(x)
                loss = self.criterion(logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # the scaler passes everything through when off
            self.scaler.step(self.optimizer)
            self.scaler.update()
            step += 1
            if self.ema is not None:
                self.ema.update(self.model, step=step)
            self.scheduler.step_update(num_updates=step)
            hard = target.argmax(1) if target.ndim == 2 else target  # a mix's larger share
            # index_add_, not bincount: CUDA's bincount reads the largest value on the host
            cm.index_add_(0, hard * n + logits.argmax(1), torch.ones_like(hard))
            total += loss.detach().double() * len(x)
            seen += len(x)
            if k % LOG_EVERY == 0 or k == len(loader):
                bar.set_postfix(loss=f"{total.item() / seen:.4f}",
                                f1=f"{macro_f1_from_confusion(cm.view(n, n).cpu().numpy()):.3f}")
        seen_all = torch.tensor(seen, dtype=torch.float64, device=self.device)
        total, seen_all = distributed.total(total, seen_all)
        seen_all = float(seen_all)
        return float(total) / max(seen_all, 1), seen_all / (time.perf_counter() - start), step

    @torch.inference_mode()
    def evaluate(self, loader) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean CE loss, probabilities, true labels) of the validated model on the val set
        (under DDP: every rank's slice, gathered)."""
        self.validated_model.eval()
        probs, labels = [], []
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, y in progress_bar(loader, desc="validating", unit="batch", leave=False,
                                 dynamic_ncols=True, disable=not self.ranks.main):
            with self.autocast:
                logits = self.validate(self.input(x)).float()
            total += F.cross_entropy(logits, y.to(self.device), reduction="sum").double()
            probs.append(logits.softmax(1))
            labels.append(y.numpy())
        (total,) = distributed.total(total)
        probs, y_true = distributed.gathered(torch.cat(probs).cpu().numpy(),
                                             np.concatenate(labels))
        return float(total) / len(y_true), probs, y_true

    @property
    def validated_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _meta(self, epoch: int, metrics: dict) -> dict:
        r = self.recipe
        return {
            "attribute": r.attribute, "classes": self.classes, "epoch": epoch,
            "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"],
            "val_per_class_f1": metrics["per_class_f1"], "val_confusion": metrics["confusion"],
            "val_selected": {"on": self.data.select_on, "macro_f1": metrics["selected"]},
            "val_by_source": {name: {"macro_f1": b["macro_f1"], "per_class_f1": b["per_class_f1"],
                                     "images": int(np.sum(b["confusion"]))}
                              for name, b in metrics["by_source"].items()},
            "preprocess": r.preprocess.to_dict(),
            "detector": default_detector().describe() if r.crop == "face" else None,
            "age_rule": {"train": r.age_rule.to_dict(), "scored": TRUE_AGE_RULE.to_dict()},
            "recipe": r.to_dict(), "run": str(self.run_dir.resolve()),
        }

    def _resolved(self) -> dict:
        return {
            "recipe": self.recipe.to_dict(), "augmentations": A.to_dict(self.augment),
            "data": {"source": self.source, "group": self.table.group,
                     "summary": self.table.summary(), **self.data.split,
                     "problems": len(self.problems)},
            "pretrained": self.weights_origin, "device": str(self.device),
            "precision": self.precision,
            "workers": self.workers, "processes": self.ranks.world, "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def fit(self, resume: bool = False,
            on_epoch: Callable[[int, dict], None] | None = None) -> RunResult:
        """Train; ``resume`` continues from the run folder's last.pt, which must exist and hold
        the same recipe (but for :data:`RESUME_MAY_CHANGE`). ``on_epoch(epoch, row)`` is called
        after each epoch is saved, with its metrics.csv row (tracking, pruning: an exception it
        raises ends the run there, with the best checkpoint so far kept)."""
        r = self.recipe
        last = self.run_dir / run_folder.LAST
        state = resumable(last, r, self.run_dir) if resume else None
        main = self.ranks.main  # under DDP, rank 0 alone writes the run folder
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        train_loader, val_loader = loaders(self.data, r, self.device, self.workers,
                                           self.ranks.world, self.ranks.rank)
        self._build(len(train_loader))
        if main:
            self._write_start()
        history, start_epoch, step, best, stale = [], 1, 0, -1.0, 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
            best, stale, history = float(state["best"]), int(state["stale"]), state["history"]
            if main:
                self._write_metrics(history)  # drops any row of an epoch last.pt did not commit
            log.info("resumed %s at epoch %d (best val macro-F1 %.4f)", self.run_dir,
                     start_epoch, best)
        for epoch in range(start_epoch, r.epochs + 1):
            if stale >= r.patience:
                if main:
                    tqdm.write(f"early stop: no val macro-F1 gain for {stale} epoch(s)")
                break
            self._seed_epoch(train_loader, epoch)
            train_loss, speed, step = self._train_epoch(train_loader, epoch, step)
            val_loss, probs, y_true = self.evaluate(val_loader)
            m = scores(y_true, probs.argmax(1), r.num_classes)
            by_source = self._by_source(y_true, probs.argmax(1))
            on = self.data.select_on
            m["selected"] = (m["macro_f1"] if on == "all" else
                             float(np.mean([b["macro_f1"] for b in by_source.values()]))
                             if on == "mean" else by_source[on]["macro_f1"])
            m["by_source"] = by_source
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"],
                            **{f"val_f1_{c}": f for c, f in zip(self.classes, m["per_class_f1"])},
                            **({f"val_macro_f1@{name}": b["macro_f1"] for name, b in by_source.items()}
                               if len(by_source) > 1 else {}),
                            **({f"val_f1_{c}@{name}": f for name, b in by_source.items()
                                for c, f in zip(self.classes, b["per_class_f1"])}
                               if len(by_source) > 1 else {}),
                            "val_selected": m["selected"], "train_img_per_s": speed,
                            "lr": max(g["lr"] for g in self.optimizer.param_groups)})
            improved = m["selected"] > best
            if improved:
                best, stale = m["selected"], 0
                if main:
                    save_weights(self.validated_model, self._meta(epoch, m),
                                 self.run_dir / run_folder.BEST)
                    np.save(self.run_dir / run_folder.VAL_PROBS, probs)
            else:
                stale += 1
            if not main:
                continue
            per_source = "".join(f" | {name} {b['macro_f1']:.4f}" for name, b in by_source.items()
                                 if len(by_source) > 1)
            tqdm.write(f"{r.attribute} epoch {epoch}: train loss {train_loss:.4f} | val loss "
                       f"{val_loss:.4f} macro-F1 {m['macro_f1']:.4f} acc {m['accuracy']:.4f}"
                       f"{per_source} | {speed:.0f} img/s{' | best' if improved else ''}")
            # last.pt commits the epoch, history included; metrics.csv is rewritten from it
            # after, so a crash in between leaves metrics.csv behind, never ahead.
            self._save_last(last, epoch, step, best, stale, history)
            self._write_metrics(history)
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
        if not main:
            best_row = pd.DataFrame(history)["val_selected"].idxmax()
            return RunResult(self.run_dir, int(history[best_row]["epoch"]),
                             float(history[best_row]["val_selected"]), pd.DataFrame(history))
        return self._finish(pd.DataFrame(history))

    def _write_start(self) -> None:
        """What the run folder holds from its start: the val set, the problems, the recipe."""
        tqdm.write(f"{self.recipe.attribute}: {self.recipe.backbone}, initial weights: "
                   f"{self.weights_origin}")
        val = self.data.frame.iloc[self.data.val_rows]
        pd.DataFrame({"path": val["path"], "person": val["person"], "age_years": val["age_years"],
                      "source": val["source"], "label": self.data.val_set.labels}).to_csv(
            self.run_dir / run_folder.VAL, index=False)
        if self.problems:
            (self.run_dir / run_folder.PROBLEMS).write_text("\n".join(self.problems) + "\n")
            log.warning("%d data problem(s) skipped; see %s", len(self.problems),
                        self.run_dir / run_folder.PROBLEMS)
        (self.run_dir / run_folder.RECIPE).write_text(json.dumps(self._resolved(), indent=2))

    def _by_source(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict]:
        sources = self.data.frame["source"].to_numpy()[self.data.val_rows]
        return {name: scores(y_true[sources == name], y_pred[sources == name],
                             self.recipe.num_classes) for name in self.data.val_sources}

    def _write_metrics(self, history: list[dict]) -> None:
        pd.DataFrame(history).to_csv(self.run_dir / run_folder.METRICS, index=False)

    def _save_last(self, path: Path, epoch: int, step: int, best: float, stale: int,
                   history: list[dict]) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": epoch, "step": step,
                 "best": best, "stale": stale, "history": history,
                 "recipe": json.dumps(self.recipe.to_dict())}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        # a crash while saving keeps the previous last.pt; the temporary file keeps its fixed
        # name (last.tmp): torch.save names the archive inside after the file
        with atomic_path(path, tmp_name=path.with_suffix(".tmp").name) as tmp:
            torch.save(state, tmp)

    def _finish(self, history: pd.DataFrame) -> RunResult:
        r = self.recipe
        best_row = history.loc[history["val_selected"].idxmax()]
        meta = json.loads((self.run_dir / run_folder.BEST_META).read_text())
        plot_curves(history, self.run_dir / run_folder.CURVES, f"{r.attribute} ({r.backbone})")
        plot_confusion(meta["val_confusion"], self.classes, self.run_dir / run_folder.CONFUSION,
                       f"{r.attribute}: val confusion, epoch {meta['epoch']} "
                       f"(macro-F1 {meta['val_macro_f1']:.3f})")
        bands = by_age_band(self.data.val_set.labels,
                            np.load(self.run_dir / run_folder.VAL_PROBS).argmax(1),
                            self.data.frame["age_years"].iloc[self.data.val_rows])
        if len(bands):  # needs real ages: the competition layout has them, a manifest may not
            bands.to_csv(self.run_dir / run_folder.VAL_BY_AGE, index=False)
            plot_by_age_band(bands, self.run_dir / run_folder.VAL_BY_AGE_PLOT,
                             f"{r.attribute}: val macro-F1 by age, epoch {meta['epoch']}")
        return RunResult(self.run_dir, int(best_row["epoch"]), float(best_row["val_selected"]),
                         history)
