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

import numpy as np
import pandas as pd

from facet.atomic import write_json
from facet.metrics import scores

from . import run_folder
from .multirun import Run
from .recipe import Recipe
from .resume import ResumeError

log = logging.getLogger(__name__)


def fold_runs(root: str | Path) -> list[Path]:
    """The fold run folders of a cross-validation folder, in fold order ([] if it is not one)."""
    root = Path(root)
    if not (root / run_folder.CV_SUMMARY).is_file():
        return []
    return [root / run_folder.fold(k)
            for k in json.loads((root / run_folder.CV_SUMMARY).read_text())["finished"]]


class Folds:
    """The folds of ``recipe.folds`` under ``root``: which are left to train (:meth:`runs`),
    each recorded in ``cv.json`` as it finishes (:meth:`finished`, from the one process that
    trains them or hands them out), then the summary (:meth:`summary`).

    With ``resume``, finished folds are kept, a fold with a ``last.pt`` continues from it, and
    the others start; the recipe must be the one the folder was started with.
    """

    def __init__(self, recipe: Recipe, root: Path, resume: bool = False, name: str = ""):
        self.recipe, self.root, self.name, self.resume = recipe, root, name, resume
        self.path = root / run_folder.CV_SUMMARY
        recipe_key = {**recipe.to_dict(), "fold": "all"}
        self.state = {"recipe": recipe_key, "finished": []}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if not resume:
                raise ResumeError(f"{root} already holds folds {saved['finished']}: give "
                                  "--resume to continue it, or another --run-dir")
            if json.loads(json.dumps(recipe_key)) != saved["recipe"]:
                raise ResumeError(f"cannot resume {root}: its folds were trained with another "
                                  "recipe")
            self.state = saved
        root.mkdir(parents=True, exist_ok=True)

    def runs(self) -> list[Run]:
        """The folds left to train, in fold order, named ``<name>/fold<k>``."""
        for k in self.state["finished"]:
            log.info("fold %d/%d: finished, kept", k + 1, self.recipe.folds)
        return [Run(f"{self.name}/{run_folder.fold(k)}" if self.name else run_folder.fold(k),
                    self.recipe.override([f"fold={k}"]), self.root / run_folder.fold(k),
                    self.resume and (self.root / run_folder.fold(k) / run_folder.LAST).exists())
                for k in range(self.recipe.folds) if k not in self.state["finished"]]

    def finished(self, run: Run) -> bool:
        """Records a fold as done (only once its run has finished); True when it was the last."""
        self.state["finished"] = sorted({*self.state["finished"], run.recipe.fold})
        write_json(self.path, self.state)
        return len(self.state["finished"]) == self.recipe.folds

    def summary(self) -> dict:
        """The out-of-fold answers (oof.csv) and the scores, added to cv.json."""
        recipe, root, state = self.recipe, self.root, self.state
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
        write_json(self.path, state)
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
