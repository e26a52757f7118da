"""Input size against accuracy and cost: runs of one attribute's recipe that differ only in
``image_size`` (and, for a schedule point, ``epochs``) share one val split; each run's best
checkpoint is scored per source with a 95% bootstrap interval (persons resampled) and its
paired difference to the first run (the same persons drawn for both), beside the cost of that
input size from ``benchmarks.capacity`` (``results/capacity.json``). Writes a JSON and a plot.

    for size in 128 160 192; do
        facet train gender ...the recipe's sources... --set crop=face \\
            --set image_size=$size --set epochs=4 --run-dir runs/capacity/gender$size
    done
    python -m benchmarks.capacity_curve runs/capacity/gender128 runs/capacity/gender160 \\
        runs/capacity/gender192 runs/shipped/gender --out benchmarks/results/capacity_gender
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet.metrics import RESAMPLES, macro_f1_counts

RESULTS = Path(__file__).parent / "results"


def read_run(run: Path) -> dict:
    recipe = json.loads((run / "recipe.json").read_text())["recipe"]
    best = json.loads((run / "best.json").read_text())
    val = pd.read_csv(run / "val.csv")
    val["pred"] = np.load(run / "val_probs.npy").argmax(1)
    return {"run": str(run), "image_size": recipe["image_size"], "epochs": recipe["epochs"],
            "best_epoch": best["epoch"], "classes": len(best["classes"]), "val": val}


def paired(base: pd.DataFrame, other: pd.DataFrame, n_classes: int,
           rng: np.random.Generator) -> dict:
    """Both runs' macro-F1 on ``other``'s rows, intervals from the same person draws."""
    persons = other["person"].to_numpy()
    members = list(pd.Series(np.arange(len(other))).groupby(persons).indices.values())
    y, a, b = other["label"].to_numpy(), base["pred"].to_numpy(), other["pred"].to_numpy()
    f1, diff = [], []
    for _ in range(RESAMPLES):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        fa, fb = macro_f1_counts(y[rows], a[rows], n_classes), macro_f1_counts(y[rows], b[rows], n_classes)
        f1.append(fb)
        diff.append(fb - fa)
    ci = lambda v: [round(float(x), 4) for x in np.percentile(v, [2.5, 97.5])]  # noqa: E731
    return {"images": len(other), "macro_f1": round(macro_f1_counts(y, b, n_classes), 4),
            "macro_f1_ci": ci(f1),
            "vs_first": round(macro_f1_counts(y, b, n_classes) - macro_f1_counts(y, a, n_classes), 4),
            "vs_first_ci": ci(diff)}


def curve(runs: list[dict], cost: dict, seed: int = 0) -> list[dict]:
    first = runs[0]
    for r in runs[1:]:
        if not r["val"]["path"].equals(first["val"]["path"]):
            raise SystemExit(f"{r['run']} validates on other rows than {first['run']}")
    rows = []
    for r in runs:
        rng = np.random.default_rng(seed)
        sources = {s: paired(first["val"][idx], r["val"][idx], r["classes"], rng)
                   for s in sorted(r["val"]["source"].unique())
                   for idx in [r["val"]["source"] == s]}
        rows.append({k: r[k] for k in ("run", "image_size", "epochs", "best_epoch")}
                    | {"cost": cost.get(str(r["image_size"]), {}), "by_source": sources})
    return rows


def plot(rows: list[dict], cost: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for source in rows[0]["by_source"]:
        points = [(r["image_size"], r["by_source"][source]) for r in rows if r["epochs"] == rows[0]["epochs"]]
        x = [p[0] for p in points]
        y = [p[1]["macro_f1"] for p in points]
        err = [[v - p[1]["macro_f1_ci"][0] for v, p in zip(y, points)],
               [p[1]["macro_f1_ci"][1] - v for v, p in zip(y, points)]]
        line = a.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=source)
        for r in rows:
            if r["epochs"] != rows[0]["epochs"]:
                a.plot(r["image_size"] + 2, r["by_source"][source]["macro_f1"], "*",
                       color=line[0].get_color(), markersize=11)
    a.set(xlabel=f"input side, px (lines: {rows[0]['epochs']} epochs; stars: "
                 f"{', '.join(str(r['epochs']) for r in rows if r['epochs'] != rows[0]['epochs'])} epochs)",
          ylabel="val macro-F1 (95% interval)", title="accuracy")
    a.legend(fontsize=8)
    sized = sorted((int(size), c) for size, c in cost.items())
    b.plot([s for s, _ in sized], [c["inference cost x (batch 64)"] for _, c in sized], "o-",
           label="onnxruntime inference (batch 64)")
    b.plot([s for s, _ in sized], [c["training time x"] for _, c in sized], "s-", label="CPU training")
    b.set(xlabel="input side, px", ylabel="cost, x the 128 px one", title="CPU cost")
    b.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the reference")
    p.add_argument("--cost", type=Path, default=RESULTS / "capacity.json")
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json and .png")
    args = p.parse_args()
    runs = [read_run(r) for r in args.runs]
    cost = json.loads(args.cost.read_text()) if args.cost.exists() else {}
    rows = curve(runs, cost)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, cost, args.out.with_suffix(".png"), f"{runs[0]['val']['source'].nunique()} val sources, "
         f"{len(runs[0]['val'])} images: input size and cost")
    for r in rows:
        print(r["image_size"], f"{r['epochs']} epochs (best {r['best_epoch']}):", ", ".join(
            f"{s} {v['macro_f1']:.3f} [{v['macro_f1_ci'][0]:.3f}, {v['macro_f1_ci'][1]:.3f}] "
            f"{v['vs_first']:+.3f} [{v['vs_first_ci'][0]:+.3f}, {v['vs_first_ci'][1]:+.3f}]"
            for s, v in r["by_source"].items()))


if __name__ == "__main__":
    main()
