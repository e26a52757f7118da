"""What `facet build-set --from-data` trains and how: the data folder's layout checked, the
held-out street photos chosen, the training manifests written, and the exact `facet train` and
`facet export` commands of each attribute for a budget."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, combine_labels
from facet.manifest import read_manifest
from facet.model_folder import INDEX
from facet.preprocess import DEFAULT_RULES
from serve.model_set import MIN_FACE

# What the data folder must hold (the layout of shared/data's DATASETS.md)
LAYOUT = ("maskfaces/train", "maskfaces/eval/answers.csv", "maskon/labels.csv",
          "realmasks/labels.csv", "realphotos/boxes.csv", "aaf/labels.csv",
          "aafrest/labels.csv", "utkextra/labels.csv")
BUDGETS = ("auto", "cpu", "gpu")
GPU_IMAGE_SIZE = 176  # the gpu budget's input side; it also trains twice each recipe's epochs
MASKS = ATTRIBUTES["mask"]
REAL_FACES = ("aaf", "aafrest", "utkextra")  # gender and age: real faces beside maskfaces


class PlanError(ValueError):
    """A data folder or runs folder a release cannot be built from; the message says why."""


@dataclass
class Plan:
    runs: Path
    budget: str  # cpu or gpu (auto resolved)
    commands: dict[str, list[str]]  # attribute -> `facet` arguments (after the program)
    held_out: set[str] = field(default_factory=set)  # realphotos photos never trained on

    def export_command(self) -> list[str]:
        return ["export", *(str(self.runs / a) for a in ATTRIBUTES), "--out",
                str(self.runs / "export"), "--quantize", "--eval-limit", "0", "--no-ensemble"]


def check_layout(data: Path) -> None:
    missing = [p for p in LAYOUT if not (data / p).exists()]
    if missing:
        raise PlanError(f"{data}: no {', '.join(missing)} (the data folder's layout: "
                        f"{', '.join(LAYOUT)})")


def resolve_budget(budget: str) -> str:
    """cpu: the recipes as they are; gpu: larger images and twice the epochs; auto: gpu when
    torch sees a CUDA device."""
    if budget not in BUDGETS:
        raise PlanError(f"unknown budget {budget!r}: {', '.join(BUDGETS)}")
    if budget == "auto":
        import torch
        return "gpu" if torch.cuda.is_available() else "cpu"
    return budget


def budget_shape(attribute: str, budget: str) -> dict[str, int]:
    """The input side and epochs ``budget`` trains ``attribute`` with."""
    from facet.models.recipe import load_recipe
    recipe = load_recipe(attribute)[0]
    if budget == "cpu":
        return {"image_size": recipe.image_size, "epochs": recipe.epochs}
    return {"image_size": GPU_IMAGE_SIZE, "epochs": 2 * recipe.epochs}


def budget_overrides(attribute: str, budget: str) -> list[str]:
    if budget == "cpu":
        return []
    return [x for k, v in budget_shape(attribute, budget).items() for x in ("--set", f"{k}={v}")]


def train_commands(data: Path, runs: Path, budget: str) -> dict[str, list[str]]:
    """The exact `facet train` arguments of each attribute (default recipe and seed, crop=face,
    the budget's overrides); mask reads the manifest :func:`boxed_source` writes."""
    faces = ["--data", str(data / "maskfaces/train")]
    real = [a for s in REAL_FACES for a in ("--manifest", f"{data / s / 'labels.csv'},group=group")]
    sources = {
        "mask": [*faces, "--manifest", f"{data / 'maskon/labels.csv'},group=group",
                 # the street crops (crops=1) and drawn masks on real faces (draw=masks)
                 # lowered photo -> mask on the held-out photos: BENCHMARKS, "Ready-made models"
                 "--manifest", f"{runs / 'realphotos_train.csv'},group=photo,name=realphotos"],
        "gender": [*faces, *real], "age": [*faces, *real]}
    return {a: ["train", a, *sources[a], "--set", "crop=face", *budget_overrides(a, budget),
                "--run-dir", str(runs / a)] for a in ATTRIBUTES}


def val_rows(frame: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """The rows of one source's table that a run of ``attribute`` validates on: its labelled
    rows split as training splits them (the recipe's folds, fold, seed and stratification; a
    source's split depends only on its own rows)."""
    from facet.models.recipe import load_recipe
    from facet.models.split import split_by_source
    recipe = load_recipe(attribute)[0]
    frame = frame[frame[attribute] >= 0].reset_index(drop=True)
    strat = (frame[attribute] if recipe.stratify == "attribute" else
             pd.Series(combine_labels(frame["mask"], frame["gender"], frame["age"])))
    _, val = split_by_source(frame, strat, recipe)
    return frame.iloc[val].reset_index(drop=True)


def held_out_photos(data: Path) -> set[str]:
    """The photos of realmasks' val split (by photo), as a default mask run makes it: neither
    their crops nor their boxes are trained on; they measure."""
    frame = read_manifest(data / "realmasks/labels.csv", group="photo").frame
    return set(val_rows(frame, "mask")["person"])


def read_boxes(data: Path) -> pd.DataFrame:
    """realphotos' annotated faces: a row each, with ``box`` (x, y, w, h), ``big`` (short side
    >= :data:`serve.model_set.MIN_FACE`), ``mask`` as a code and the photo's absolute ``path``."""
    boxes = pd.read_csv(data / "realphotos/boxes.csv")
    boxes["box"] = [(r.xmin, r.ymin, r.xmax - r.xmin, r.ymax - r.ymin) for r in boxes.itertuples()]
    boxes["big"] = [min(b[2], b[3]) >= MIN_FACE for b in boxes["box"]]
    boxes["label"] = boxes["mask"] = [MASKS.index(m) for m in boxes["mask"]]
    boxes["path"] = [str((data / "realphotos" / f).resolve()) for f in boxes["file"]]
    return boxes


def boxed_source(data: Path, held: set[str], out: Path) -> Path:
    """realphotos' boxes of the training photos (faces of the loader's minimum side or more)."""
    boxes = pd.read_csv(data / "realphotos/boxes.csv")
    keep = (~boxes["photo"].isin(held)) & (
        np.minimum(boxes["xmax"] - boxes["xmin"], boxes["ymax"] - boxes["ymin"])
        >= DEFAULT_RULES.min_side)
    boxes = boxes[keep].assign(path=[str((data / "realphotos" / f).resolve())
                                     for f in boxes.loc[keep, "file"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    boxes.drop(columns=["file"]).to_csv(out, index=False)
    return out


def plan(data: Path, runs: Path, budget: str = "auto") -> Plan:
    """Check the data folder, write RUNS' training manifests and say what runs."""
    check_layout(data)
    budget = resolve_budget(budget)
    runs.mkdir(parents=True, exist_ok=True)
    held = held_out_photos(data)
    boxed_source(data, held, runs / "realphotos_train.csv")
    return Plan(runs, budget, train_commands(data, runs, budget), held)


def facet(args: list[str]) -> None:
    """Run `facet ARGS` in a subprocess, the command printed first; fails on a non-zero exit."""
    cmd = [sys.executable, "-m", "facet.cli", *args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def train_and_export(p: Plan) -> Path:
    """Train what is missing (an attribute whose run has ``best.safetensors`` is kept when the
    budget would train it the same way), export what is missing; returns the export folder."""
    for attribute in ATTRIBUTES:
        run = p.runs / attribute
        if not (run / "best.safetensors").exists():
            facet(p.commands[attribute])
            continue
        if not (run / "recipe.json").exists():
            raise PlanError(f"{run} has best.safetensors but no recipe.json: not a facet run")
        recipe = json.loads((run / "recipe.json").read_text())["recipe"]
        wanted = budget_shape(attribute, p.budget)
        had = {k: recipe[k] for k in wanted}
        if had != wanted:
            raise PlanError(f"{run} was trained with {had}, the {p.budget} budget trains {wanted}: "
                            f"remove it to retrain, or pass the budget it was built with")
    export = p.runs / "export"
    if not (export / INDEX).exists():
        facet(p.export_command())
    return export
