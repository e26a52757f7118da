"""Pseudo-labels for gender: a teacher (a 3-fold ensemble of the competition layout's model,
flip TTA in its graph) answers unlabelled faces, `facet pseudo-label` keeps its confident
answers, and a student (one model: labelled + pseudo-labelled sources, stronger augmentation and
dropout) trains on them; a second student keeps the recipe's own augmentation and dropout, to
tell what the pseudo-labels do from what the extra noise does, and a third trains twice as long
(half of each student's samples are pseudo-labelled), a fourth the same on pseudo-labels cut
per source as well as per class (`--by source`). Teacher, students and the single
model of the same budget are scored on the same sets, and the pseudo-labels against the hidden
true labels.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.pseudo_bench --shared ../shared/data

Unlabelled (labels never read): maskfaces eval's images, and aaf's training split (the split
every gender run makes of aaf, by file serial). Scored: maskfaces eval (pseudo-labelled, so the
transductive gain) and aaf val (a labelled real-face split that was never pseudo-labelled).
Every model: mobilenetv2_100, 128 px, crop=none, 2 epochs x 4,000 samples (this CPU's budget).
The mask and age models of the exported folders are the shipped set's runs (only gender is
read). Writes benchmarks/results/pseudo.json and pseudo.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from facet.combine import ATTRIBUTES
from facet.metrics import scores
from facet.manifest import read_manifest
from facet.models.recipe import load_recipe
from facet.models.split import split_by_source
from facet.serve.batch import predict_paths
from facet.serve.predictor import Predictor

GENDERS = ATTRIBUTES["gender"]
BUDGET = ["--set", "epochs=2", "--set", "samples_per_epoch=4000"]
LABELLED = ["--set", "source_weights=", "--set", "select_on=all"]  # one source: the layout
SOURCES = ["--set", "source_weights=maskfaces=1,pseudo=1", "--set", "select_on=maskfaces"]
NOISE = ["--set", "drop_rate=0.4", "--set", "aug_groups=flip,crop,colour,lowres,blur,jpeg,noise"]
# the student proper (stronger augmentation and dropout), one with the recipe's own noise, one
# trained twice as long (as many labelled samples as the single model, the pseudo ones on top),
# and that one again on pseudo-labels cut per source as well as per class (--by source)
LONGER = [*SOURCES, *NOISE, "--set", "epochs=4"]
STUDENTS = {"student": ("pseudo", [*SOURCES, *NOISE]),
            "student, recipe noise": ("pseudo", SOURCES),
            "student, 2x epochs": ("pseudo", LONGER),
            "student, 2x epochs, cut per source": ("pseudo_by_source", LONGER)}
SELECTION = {"pseudo": [], "pseudo_by_source": ["--by", "source"]}


def facet(*args) -> None:
    cmd = [sys.executable, "-m", "facet.cli", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def aaf_split(shared: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = read_manifest(shared / "aaf/labels.csv", group="group").frame
    train, val = split_by_source(frame, frame["gender"], load_recipe("gender")[0])
    return frame.iloc[train], frame.iloc[val]


def maskfaces_eval(faces: Path) -> pd.DataFrame:
    """maskfaces eval's answers (every label, the 18-class ``ans``) with each image's path."""
    answers = pd.read_csv(faces / "eval/answers.csv")
    return answers.assign(path=[str(faces / "eval/images" / i) for i in answers["ImageID"]])


def label_quality(pseudo: pd.DataFrame, truth: pd.DataFrame, unlabelled: int) -> dict:
    """How many of a source's unlabelled images kept a pseudo-label, how many of those are
    right (the hidden true labels, as codes), and the kept and true class counts."""
    given = {str(Path(p).resolve()): GENDERS[g] for p, g in zip(truth["path"], truth["gender"])}
    kept = pseudo[pseudo["gender"].notna() & pseudo["path"].isin(given)]
    true = kept["path"].map(given)
    return {"unlabelled": unlabelled, "kept": len(kept),
            "correct": round(float((kept["gender"] == true).mean()), 4),
            "kept_by_class": kept["gender"].value_counts().to_dict(),
            "true_by_class": true.value_counts().to_dict()}


def gender_f1(models: Path, frame: pd.DataFrame) -> float:
    result = predict_paths(Predictor(models, mode="separate"), [Path(p) for p in frame["path"]],
                           progress=False)
    return round(scores(frame["gender"].to_numpy(), result.attributes["gender"].argmax(1), 2)["macro_f1"], 4)


def scored(models: Path, sets: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Gender macro-F1 of an exported folder on each set, kept beside it once measured."""
    cached = models / "bench_scores.json"
    if not cached.exists():
        cached.write_text(json.dumps({s: gender_f1(models, frame) for s, frame in sets.items()}))
    return json.loads(cached.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/pseudo_bench"))
    p.add_argument("--others", type=Path, default=Path("runs/default_models"),
                   help="Runs folder whose mask and age runs fill the exported folders.")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pseudo.json"))
    args = p.parse_args()
    faces, runs = args.shared / "maskfaces", args.runs
    others = [args.others / "mask", args.others / "age"]
    if not (runs / "teacher" / "oof.csv").exists():
        facet("train", "gender", "--data", faces / "train", "--fold", "all", "--folds", "3",
              "--run-dir", runs / "teacher", *BUDGET, *LABELLED)
    if not (runs / "single" / "best.safetensors").exists():  # today's model at the same budget
        facet("train", "gender", "--data", faces / "train", "--run-dir", runs / "single", *BUDGET,
              *LABELLED)
    aaf_train, aaf_val = aaf_split(args.shared)
    unlabelled = runs / "unlabelled.csv"
    eval_images = [str(p.resolve()) for p in sorted((faces / "eval/images").glob("*.jpg"))]
    pd.DataFrame({"path": eval_images + [str(Path(p).resolve()) for p in aaf_train["path"]],
                  "source": ["maskfaces"] * len(eval_images) + ["aaf"] * len(aaf_train)}
                 ).to_csv(unlabelled, index=False)
    exported = {}
    models = [("teacher", runs / "teacher", ["--tta"]), ("single", runs / "single", [])]
    for name, run, extra in models + [(n, runs / n.replace(", ", "_").replace(" ", "_"), [])
                                      for n in STUDENTS]:
        if name in STUDENTS and not (run / "best.safetensors").exists():
            labels, recipe = STUDENTS[name]
            if not (runs / f"{labels}.csv").exists():
                facet("pseudo-label", unlabelled, "--models", exported["teacher"], "--out",
                      runs / f"{labels}.csv", "--attributes", "gender", *SELECTION[labels])
            facet("train", "gender", "--data", faces / "train", "--manifest",
                  f"{runs / labels}.csv,group=group,name=pseudo", "--run-dir", run, *BUDGET,
                  *recipe)
        exported[name] = runs / f"export_{run.name}"
        if not (exported[name] / "facet.json").exists():
            facet("export", run, *others, "--out", exported[name], "--no-ensemble", *extra)
    sets = {"maskfaces eval": maskfaces_eval(faces), "aaf val": aaf_val}
    rows = {name: scored(models, sets) for name, models in exported.items()}
    truth = {"maskfaces eval": sets["maskfaces eval"], "aaf train": aaf_train}
    quality = {}
    for labels, selection in SELECTION.items():
        pseudo = pd.read_csv(runs / f"{labels}.csv")
        quality[f"{labels}.csv"] = {
            "selection": " ".join(selection) or "per class", "pseudo_labelled":
            int(pseudo["gender"].notna().sum()),
            **{name: label_quality(pseudo, frame, len(frame)) for name, frame in truth.items()}}
    result = {"budget": " ".join(BUDGET),
              "students": {n: f"{labels}.csv " + " ".join(a) for n, (labels, a) in STUDENTS.items()},
              "gender_macro_f1": rows, "unlabelled": len(pd.read_csv(unlabelled)),
              "pseudo_labels": quality}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lines = ["| gender model | maskfaces eval | aaf val |", "|---|---|---|"]
    lines += [f"| {n} | {r['maskfaces eval']:.3f} | {r['aaf val']:.3f} |" for n, r in rows.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), json.dumps(result), sep="\n")


if __name__ == "__main__":
    main()
