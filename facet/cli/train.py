"""`facet train`: one attribute model with its recipe, one fold or all of them."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import (CACHE_DIR, DATA, DEVICE, FIXES, GROUP, MANIFEST, ROOT, STRICT, TRACK,
                               WORKERS, Attribute, _fail, _read_table, _tracker)
from facet.cli.tune import _best_overrides


def train(attribute: str = Attribute,
          data: list[str] = DATA,
          manifest: list[str] = MANIFEST,
          root: Optional[Path] = ROOT,
          group: str = GROUP,
          fixes: Optional[Path] = FIXES,
          strict: bool = STRICT,
          set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set lr=3e-4"),
          out: Path = typer.Option(Path("runs"), help="Runs go to OUT/<attribute>/<timestamp>."),
          run_dir: Optional[Path] = typer.Option(None, help="Exact run folder (overrides --out)."),
          resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last.pt, with "
                                      "its recipe (--set may change only patience)."),
          cache_dir: Path = CACHE_DIR,
          device: str = DEVICE,
          workers: Optional[int] = WORKERS,
          folds: Optional[int] = typer.Option(None, min=2, help="Folds of the person-level split (default: the recipe's, 5)."),
          fold: Optional[str] = typer.Option(None, help="The fold held out for validation (default: the recipe's, 0), "
                                             "or 'all': every fold in turn into RUN_DIR/fold<k>, then the "
                                             "out-of-fold macro-F1 (RUN_DIR/cv.json, oof.csv); --resume continues it."),
          from_study: Optional[str] = typer.Option(None, help="Train with the best trial's overrides of a "
                                                   "`facet tune` study: its folder or RDB URL (--set still wins)."),
          study_name: Optional[str] = typer.Option(None, help="The study in --from-study (needed when it holds several)."),
          track: Optional[str] = TRACK,
          ):
    """Train one attribute model with its recipe.

    The recipe is models/<attribute>/recipe.py; --set overrides its fields."""
    from facet.models.recipe import Recipe, load_recipe
    from facet.manifest import DataError
    from facet.models.folds import fit_folds
    from facet.models.run_folder import CV_SUMMARY, RECIPE
    from facet.models.resume import ResumeError
    from facet.models.train import Trainer
    if fold not in (None, "all") and not fold.isdigit():
        _fail(f"--fold must be a fold number or 'all', got {fold!r}")
    if from_study and resume:
        _fail("--from-study starts a new run: give it without --resume")
    studied = _best_overrides(attribute, from_study, study_name) if from_study else []
    tracker = _tracker(track)
    try:
        recipe, augment = load_recipe(attribute)
        if resume:
            saved = run_dir and next((run_dir / f for f in (CV_SUMMARY, RECIPE)
                                      if (run_dir / f).exists()), None)
            if saved is None:
                _fail("--resume needs --run-dir pointing at an earlier run")
            fields = json.loads(saved.read_text())["recipe"]
            recipe = Recipe.from_dict({**fields,
                                       "fold": 0 if fields["fold"] == "all" else fields["fold"]})
        recipe = recipe.override([*studied, *set_, *([f"folds={folds}"] if folds else []),
                                  *([f"fold={fold}"] if fold not in (None, "all") else [])])
    except ValueError as exc:
        _fail(str(exc))
    table = _read_table(data, manifest, root, group, fixes, strict)
    run_dir = run_dir or out / attribute / time.strftime("%Y%m%d-%H%M%S")

    def fit(recipe: Recipe, run: Path, again: bool):
        try:
            trainer = Trainer(recipe, augment, table, run, cache_dir, device, workers,
                              source=" + ".join([*data, *manifest]))
        except ValueError as exc:  # a recipe the attribute's augmentations refuse
            _fail(str(exc))
        with tracker.training(recipe, run):
            return trainer.fit(resume=again, on_epoch=tracker.log_epoch)

    try:
        if fold == "all":
            cv = fit_folds(recipe, run_dir, fit, resume)
            typer.echo(f"{attribute}: {recipe.folds} folds, val macro-F1 "
                       + " ".join(f"{f:.4f}" for f in cv["per_fold_macro_f1"])
                       + f" (mean {cv['mean_macro_f1']:.4f} ± {cv['std_macro_f1']:.4f}); "
                       f"out-of-fold macro-F1 {cv['oof_macro_f1']:.4f} on {cv['oof_images']:,} "
                       f"images; {run_dir / CV_SUMMARY}")
            return
        result = fit(recipe, run_dir, resume)
    except (ResumeError, DataError) as exc:
        _fail(str(exc))
    typer.echo(f"{attribute}: best val macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch}; "
               f"run folder {result.run_dir}")
