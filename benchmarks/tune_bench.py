"""Hyperparameter search on a fixed CPU budget: `facet tune gender` against the hand-tuned
gender recipe, every trial trained with the same shortened budget on the same split.

A study's first trial is the recipe's own values, so trial 0 is the hand-tuned recipe at this
budget (exactly `facet train gender --set ...` with the same overrides). The best trial is
chosen on the val split, which flatters it; both checkpoints are therefore also scored on the
held-out eval set (persons that no trial saw).

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.tune_bench \
        --data ../shared/data/maskfaces/train --eval ../shared/data/maskfaces/eval \
        --study-dir runs/tune_bench/gender --timeout 1020
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from benchmarks.ensemble_val import val_probs
from facet.metrics import scores

BUDGET = ["epochs=2", "samples_per_epoch=1500"]  # about 2.5 minutes a trial on 2 CPU cores
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="competition train/ folder")
    p.add_argument("--eval", type=Path, required=True, help="eval/ folder with answers.csv")
    p.add_argument("--study-dir", type=Path, default=Path("runs/tune_bench/gender"))
    p.add_argument("--timeout", type=int, default=1020, help="no new trial after this many seconds")
    args = p.parse_args()
    command = [sys.executable, "-m", "facet.cli", "tune", "gender", "--data", args.data,
               *[a for o in BUDGET for a in ("--set", o)], "--timeout", str(args.timeout),
               "--min-epochs", "1", "--study-dir", str(args.study_dir), "--track", "none"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((args.study_dir / "study.json").read_text())
    study = optuna.load_study(study_name=summary["study"],
                              storage=f"sqlite:///{(args.study_dir / 'tune.db').resolve()}")
    answers = pd.read_csv(args.eval / "answers.csv")
    paths = [str(args.eval / "images" / name) for name in answers["ImageID"]]
    eval_f1 = {}  # by run folder: the best trial may be the baseline
    for name in ("baseline", "best"):
        run = summary[name]["run_dir"]
        if run not in eval_f1:
            probs = val_probs(Path(run), paths)[0]
            eval_f1[run] = scores(answers["gender"], probs.argmax(1), 2)["macro_f1"]
    compared = {name: {**summary[name], "eval_macro_f1": eval_f1[summary[name]["run_dir"]]}
                for name in ("baseline", "best")}
    result = {
        "command": " ".join(["facet", *command[3:]]), "budget": BUDGET,
        "tuning_wall_s": round(wall, 1), "trials": summary["trials"],
        "hand_tuned": compared["baseline"], "tuned": compared["best"],
        "eval_images": len(paths),
        "per_trial": [{"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                       "epochs": len(t.intermediate_values),
                       "seconds": round((t.datetime_complete - t.datetime_start).total_seconds()),
                       "overrides": t.user_attrs.get("overrides")} for t in study.trials],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tune.json").write_text(json.dumps(result, indent=2))
    for plot in ("optimization_history", "param_importances"):
        if (args.study_dir / f"{plot}.png").exists():
            shutil.copy(args.study_dir / f"{plot}.png", RESULTS / f"tune_{plot}.png")
    for label, entry in (("hand-tuned", compared["baseline"]), ("tuned", compared["best"])):
        print(f"{label:>10}: trial {entry['trial']} | val macro-F1 {entry['value']:.4f} | eval "
              f"macro-F1 {entry['eval_macro_f1']:.4f} | {' '.join(entry['overrides'])}")
    print(f"{summary['trials']} in {wall / 60:.1f} min; {RESULTS / 'tune.json'}")


if __name__ == "__main__":
    main()
