"""k-fold cross-validation: every fold a normal run folder, then the out-of-fold estimate.

``ROOT/fold<k>/`` holds fold k's run (its val split is fold k of the person-level split), and
``ROOT/cv.json`` the summary: macro-F1 per fold, their mean and spread, and the out-of-fold
macro-F1 over ``ROOT/oof.csv`` (every labelled image predicted once, by the fold that did not
train on it): the honest estimate to quote. ``facet export`` takes ROOT as one ensemble.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from facet.atomic import write_json
from facet.metrics import scores

from . import run_folder
from .recipe import Recipe
from .resume import ResumeError
from .train import RunResult

log = logging.getLogger(__name__)


def fold_runs(root: str | Path) -> list[Path]:
    """The fold run folders of a cross-validation folder, in fold order ([] if it is not one)."""
    root = Path(root)
    if not (root / run_folder.CV_SUMMARY).is_file():
        return []
    return [root / run_folder.fold(k)
            for k in json.loads((root / run_folder.CV_SUMMARY).read_text())["finished"]]


def fit_folds(recipe: Recipe, root: Path, fit: Callable[[Recipe, Path, bool], RunResult],
              resume: bool = False) -> dict:
    """Train every fold of ``recipe.folds`` in turn; ``fit(recipe, run_dir, resume)`` trains one.

    With ``resume``, finished folds are kept, a fold with a ``last.pt`` continues from it, and
    the others start; the recipe must be the one the folder was started with.
    """
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / run_folder.CV_SUMMARY
    recipe_key = {**recipe.to_dict(), "fold": "all"}
    state = {"recipe": recipe_key, "finished": []}
    if summary_path.exists():
        saved = json.loads(summary_path.read_text())
        if not resume:
            raise ResumeError(f"{root} already holds folds {saved['finished']}: give --resume to "
                              "continue it, or another --run-dir")
        if json.loads(json.dumps(recipe_key)) != saved["recipe"]:
            raise ResumeError(f"cannot resume {root}: its folds were trained with another recipe")
        state = saved
    for k in range(recipe.folds):
        if k in state["finished"]:
            log.info("fold %d/%d: finished, kept", k + 1, recipe.folds)
            continue
        run = root / run_folder.fold(k)
        fit(recipe.override([f"fold={k}"]), run, resume and (run / run_folder.LAST).exists())
        state["finished"].append(k)
        write_json(summary_path, state)  # a fold counts as done only once its run has finished
    oof = out_of_fold(root, recipe)
    oof.to_csv(root / run_folder.OOF, index=False)
    per_fold = [json.loads((root / run_folder.fold(k) / run_folder.BEST_META).read_text())
                ["val_macro_f1"] for k in range(recipe.folds)]
    truth, pred = oof["label"].to_numpy(), oof["pred"].to_numpy()
    state.update({
        "per_fold_macro_f1": per_fold, "mean_macro_f1": float(np.mean(per_fold)),
        "std_macro_f1": float(np.std(per_fold)),
        "oof_macro_f1": scores(truth, pred, recipe.num_classes)["macro_f1"],
        "oof_images": len(oof)})
    write_json(summary_path, state)
    return state


def out_of_fold(root: Path, recipe: Recipe) -> pd.DataFrame:
    """Each fold's val images with the probabilities of that fold's kept checkpoint."""
    frames = []
    for k in range(recipe.folds):
        run = root / run_folder.fold(k)
        val, probs = pd.read_csv(run / run_folder.VAL, dtype={"person": str}), np.load(run / run_folder.VAL_PROBS)
        val.insert(0, "fold", k)
        for c, name in enumerate(json.loads((run / run_folder.BEST_META).read_text())["classes"]):
            val[f"p_{name}"] = probs[:, c].round(6)
        val["pred"] = probs.argmax(1)
        frames.append(val)
    oof = pd.concat(frames, ignore_index=True)
    repeated = oof["path"].duplicated().sum()
    if repeated:  # the person-level split promises each image in exactly one val fold
        raise AssertionError(f"{repeated} images are in more than one val fold")
    return oof
