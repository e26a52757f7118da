"""Learning curve of one attribute: best val macro-F1 against the number of training persons,
from runs of the same recipe that differ only in ``train_fraction`` (same split, same val set).
Writes a CSV (one row per run and epoch) and a plot.

    for f in 0.25 0.5 1.0; do
        FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.train_bench \\
            --data ../shared/data/maskfaces/train --out runs/lc$f --attributes gender \\
            --set train_fraction=$f
    done
    python -m benchmarks.learning_curve runs/lc0.25/gender runs/lc0.5/gender runs/lc1.0/gender \\
        --out benchmarks/results/gender_learning_curve
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def read_run(run: Path) -> tuple[dict, pd.DataFrame]:
    resolved = json.loads((run / "recipe.json").read_text())
    best = json.loads((run / "best.json").read_text())
    history = pd.read_csv(run / "metrics.csv")
    info = {"run": str(run), "attribute": best["attribute"],
            "train_fraction": resolved["recipe"].get("train_fraction", 1.0),
            "train_persons": resolved["data"]["train_persons"],
            "val_persons": resolved["data"]["val_persons"],
            "best_val_macro_f1": round(best["val_macro_f1"], 4), "best_epoch": best["epoch"]}
    return info, history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .csv and .png")
    args = p.parse_args()
    runs = sorted((read_run(r) for r in args.runs), key=lambda x: x[0]["train_persons"])
    infos = [info for info, _ in runs]
    if len({(i["attribute"], i["val_persons"]) for i in infos}) != 1:
        raise SystemExit("the runs must be of one attribute, validated on the same persons")
    rows = [{**info, "epoch": int(e), "val_macro_f1": round(float(f), 4)}
            for info, history in runs for e, f in zip(history["epoch"], history["val_macro_f1"])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out.with_suffix(".csv"), index=False)
    persons = np.array([i["train_persons"] for i in infos], float)
    best = np.array([i["best_val_macro_f1"] for i in infos])
    # points per doubling of the persons, by least squares on log2(persons)
    slope = float(np.polyfit(np.log2(persons), best, 1)[0]) if len(infos) > 1 else float("nan")
    for info in infos:
        print(f"{info['train_persons']:>6} persons (fraction {info['train_fraction']}): best val "
              f"macro-F1 {info['best_val_macro_f1']:.4f} at epoch {info['best_epoch']}")
    if len(infos) > 1:
        print(f"slope: {slope:+.4f} macro-F1 per doubling of the training persons")
    plot(runs, persons, best, slope, args.out.with_suffix(".png"))


def plot(runs, persons, best, slope: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attribute = runs[0][0]["attribute"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(persons, best, marker="o")
    left.set_xscale("log", base=2)
    left.set(xlabel="training persons", ylabel="best val macro-F1",
             title=f"{attribute}: {slope:+.3f} per doubling of the persons")
    left.set_xticks(persons, [str(int(p)) for p in persons])
    left.minorticks_off()
    for info, history in runs:
        right.plot(history["epoch"], history["val_macro_f1"], marker=".",
                   label=f"{info['train_persons']} persons")
    right.set(xlabel="epoch", ylabel="val macro-F1", title=f"{attribute}: val macro-F1 by epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
