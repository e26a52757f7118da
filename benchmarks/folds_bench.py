"""1 vs 3 vs 5 fold models per attribute: eval quality and inference cost, in one run.

Trains a 5-fold cross-validation of each attribute (`facet train ATTR --folds 5 --fold all`,
resumable), exports the first 1, 3 and 5 folds of each as ensembles averaged inside the graph,
predicts the eval set with each, and times the three model sets on the same images, interleaved.
Writes benchmarks/results/folds.json.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.folds_bench \\
        --data ../shared/data/maskfaces --set epochs=1 --set samples_per_epoch=1280
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from facet.combine import ATTRIBUTES
from facet.export.pipeline import export_all
from facet.score import score_files
from facet.atomic import write_csv
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.tables import submission
from facet.serve.predictor import Predictor

SIZES = (1, 3, 5)


def cross_validate(attribute: str, data: Path, root: Path, overrides: list[str]) -> dict:
    run = root / attribute
    cmd = [sys.executable, "-m", "facet.cli", "train", attribute, "--data", str(data / "train"),
           "--run-dir", str(run), "--folds", "5", "--fold", "all",
           *[a for s in overrides for a in ("--set", s)]]
    if (run / "cv.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)
    return json.loads((run / "cv.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="competition layout: train/, eval/")
    p.add_argument("--runs", type=Path, default=Path("runs/folds"))
    p.add_argument("--models", type=Path, default=Path("artifacts/folds"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--speed-images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/folds.json"))
    args = p.parse_args()
    cv = {a: cross_validate(a, args.data, args.runs, args.overrides) for a in ATTRIBUTES}
    inputs = read_inputs(args.data / "eval")
    answers = args.data / "eval" / "answers.csv"
    result: dict = {"overrides": args.overrides, "cv": {
        a: {k: c[k] for k in ("per_fold_macro_f1", "mean_macro_f1", "std_macro_f1",
                              "oof_macro_f1", "oof_images")} for a, c in cv.items()}, "sets": {}}
    predictors = {}
    for n in SIZES:
        folder = args.models / f"folds{n}"
        if not (folder / "facet.json").exists():
            export_all({a: [args.runs / a / f"fold{k}" for k in range(n)] for a in ATTRIBUTES},
                       folder)
        predictors[n] = predictor = Predictor(folder)
        start = time.perf_counter()
        batch = predict_paths(predictor, inputs.paths, progress=True)
        elapsed = time.perf_counter() - start
        sub = folder / "eval_submission.csv"
        write_csv(sub, submission(inputs, batch))
        scored = score_files(sub, answers)
        result["sets"][n] = {"models_per_attribute": n, "mode": predictor.mode,
                             "eval_macro_f1": scored["macro_f1"],
                             "eval_attributes": {a: scored["attributes"][a]["macro_f1"]
                                                 for a in ATTRIBUTES},
                             "eval_pass_img_s": round(len(inputs.paths) / elapsed, 1)}
        print(n, json.dumps(result["sets"][n]), flush=True)
    speed = {n: [] for n in SIZES}
    paths = inputs.paths[:args.speed_images]
    for _ in range(args.rounds):  # interleaved, so the machine's drift hits every set alike
        for n, predictor in predictors.items():
            start = time.perf_counter()
            predict_paths(predictor, paths, progress=False)
            speed[n].append(len(paths) / (time.perf_counter() - start))
    for n in SIZES:
        result["sets"][n]["img_s"] = round(statistics.median(speed[n]), 1)
        result["sets"][n]["img_s_vs_1"] = round(statistics.median(speed[n])
                                                / statistics.median(speed[1]), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
