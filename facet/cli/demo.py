"""`facet demo`: the whole pipeline, each step run as a user would type it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from facet.cli._common import _fail

DEMO_RECIPE = ["backbone=test_efficientnet", "pretrained=none", "image_size=64", "epochs=4",
               "samples_per_epoch=640", "lr=3e-3", "patience=4"]
# The mask recipe's street-condition augmentations need more than the demo's 40 steps on a
# tiny model trained from scratch (mask val macro-F1 0.46 with them, 0.98 with flips only).
DEMO_EXTRA = {"mask": ["aug_groups=flip"]}


def demo(out: Path = typer.Option(Path("demo"), help="Folder for the data, runs, models and results."),
         persons: int = typer.Option(120, help="Synthetic training persons."),
         ):
    """The whole pipeline in minutes on embedded synthetic data.

    Make data, train the three models (a tiny backbone), export to ONNX, predict the eval set
    and score it."""
    data, runs, models = out / "data", out / "runs", out / "artifacts"
    steps = [["make-data", str(data), "--persons", str(persons), "--eval-persons", str(persons // 4)]]
    for attribute in ("mask", "gender", "age"):
        steps.append(["train", attribute, "--data", str(data / "train"), "--run-dir",
                      str(runs / attribute), "--cache-dir", str(out / "cache"),
                      *[a for kv in [*DEMO_RECIPE, *DEMO_EXTRA.get(attribute, [])]
                        for a in ("--set", kv)]])
    steps += [["export", *(str(runs / a) for a in ("mask", "gender", "age")), "--out", str(models)],
              ["predict", str(data / "eval"), "--models", str(models), "-o", str(out / "submission.csv"),
               "--details", str(out / "details.csv")],
              ["score", "--pred", str(out / "submission.csv"), "--answers",
               str(data / "eval" / "answers.csv"), "--plot", str(out / "confusion.png")]]
    for step in steps:  # each step exactly as a user would type it, progress bars and all
        typer.secho(f"$ facet {' '.join(step)}", fg="cyan", err=True)
        code = subprocess.call([sys.executable, "-m", "facet.cli", *step])
        if code:
            _fail(f"demo step failed: facet {' '.join(step)}", code)
    typer.secho(f"done: models in {models}, submission {out / 'submission.csv'}, "
                f"serve them with: facet serve --models {models}", fg="green", err=True)
