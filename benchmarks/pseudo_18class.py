"""Pseudo-labels for all three attributes, scored on the 18 classes: for each of mask, gender
and age a teacher (a 3-fold ensemble of the competition layout's model, flip TTA in its
graph), today's single model and a student (one model: the competition layout + the teacher's
pseudo-labels cut per class and per source, strong noise, twice the epochs: the best student
of benchmarks/pseudo_bench.py), each at pseudo_bench.py's budget.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.pseudo_18class --shared ../shared/data

Unlabelled (labels never read): maskfaces eval's images and aaf's training split, one
`facet pseudo-label --by source` pass of the teacher for all three attributes. Scored:
maskfaces eval (every attribute and the 18 classes; pseudo-labelled, so the transductive
gain) and aaf val (gender and age: real faces nobody pseudo-labelled). Writes
benchmarks/results/pseudo_18class.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.pseudo_bench import BUDGET, LABELLED, LONGER, aaf_split, facet, maskfaces_eval

from facet.combine import ATTRIBUTES
from facet.metrics import scores
from facet.serve.batch import predict_paths
from facet.serve.predictor import Predictor


def f1(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    return round(scores(truth, predicted, classes)["macro_f1"], 4)


def score(models: Path, eval_set: pd.DataFrame, aaf_val: pd.DataFrame) -> dict:
    """Macro-F1 per attribute and over the 18 classes on maskfaces eval, gender and age on
    aaf val; kept beside the models once measured."""
    cached = models / "bench_scores_18.json"
    if cached.exists():
        return json.loads(cached.read_text())
    predictor = Predictor(models, mode="separate")
    result = predict_paths(predictor, [Path(p) for p in eval_set["path"]], progress=False)
    out = {"maskfaces eval": {"18 classes": f1(eval_set["ans"].to_numpy(), result.labels, 18),
                              **{a: f1(eval_set[a].to_numpy(), result.attributes[a].argmax(1),
                                       len(c)) for a, c in ATTRIBUTES.items()}}}
    real = predict_paths(predictor, [Path(p) for p in aaf_val["path"]], progress=False)
    out["aaf val"] = {a: f1(aaf_val[a].to_numpy(), real.attributes[a].argmax(1),
                            len(ATTRIBUTES[a])) for a in ("gender", "age")}
    cached.write_text(json.dumps(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/pseudo_18class"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/pseudo_18class.json"))
    args = p.parse_args()
    faces, runs = args.shared / "maskfaces", args.runs
    runs.mkdir(parents=True, exist_ok=True)
    attributes = list(ATTRIBUTES)
    for a in attributes:
        if not (runs / f"teacher_{a}" / "oof.csv").exists():
            facet("train", a, "--data", faces / "train", "--fold", "all", "--folds", 3,
                  "--run-dir", runs / f"teacher_{a}", *BUDGET, *LABELLED)
        if not (runs / f"single_{a}" / "best.safetensors").exists():
            facet("train", a, "--data", faces / "train", "--run-dir", runs / f"single_{a}",
                  *BUDGET, *LABELLED)
    exported = {"teacher": runs / "export_teacher", "single": runs / "export_single",
                "student": runs / "export_student"}
    for name, extra in (("teacher", ["--tta"]), ("single", [])):
        if not (exported[name] / "facet.json").exists():
            facet("export", *[runs / f"{name}_{a}" for a in attributes], "--out", exported[name],
                  "--no-ensemble", *extra)
    aaf_train, aaf_val = aaf_split(args.shared)
    pseudo, unlabelled = runs / "pseudo.csv", runs / "unlabelled.csv"
    eval_images = sorted((faces / "eval/images").glob("*.jpg"))
    if not pseudo.exists():
        pd.DataFrame({"path": [str(p.resolve()) for p in eval_images]
                      + [str(Path(p).resolve()) for p in aaf_train["path"]],
                      "source": ["maskfaces"] * len(eval_images) + ["aaf"] * len(aaf_train)}
                     ).to_csv(unlabelled, index=False)
        facet("pseudo-label", unlabelled, "--models", exported["teacher"], "--out", pseudo,
              "--by", "source")
    for a in attributes:
        if not (runs / f"student_{a}" / "best.safetensors").exists():
            facet("train", a, "--data", faces / "train", "--manifest",
                  f"{pseudo},group=group,name=pseudo", "--run-dir", runs / f"student_{a}",
                  *BUDGET, *LONGER)
    if not (exported["student"] / "facet.json").exists():
        facet("export", *[runs / f"student_{a}" for a in attributes], "--out",
              exported["student"], "--no-ensemble")
    eval_set = maskfaces_eval(faces)
    rows = {name: score(models, eval_set, aaf_val) for name, models in exported.items()}
    kept = pd.read_csv(pseudo)
    result = {"budget": " ".join(BUDGET), "student": "pseudo.csv " + " ".join(LONGER),
              "unlabelled": len(eval_images) + len(aaf_train),
              "pseudo_labelled": {a: int(kept[a if a != "age" else "age_group"].notna().sum())
                                  for a in attributes},
              "macro_f1": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
