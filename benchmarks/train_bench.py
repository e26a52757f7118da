"""Train all three attribute models on a competition-layout dataset and report val macro-F1
and training speed per attribute.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.train_bench \
        --data ../shared/data/maskfaces/train --out runs/bench
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data", required=True)
p.add_argument("--out", default="runs/bench")
p.add_argument("--attributes", nargs="+", default=["mask", "gender", "age"])
p.add_argument("--set", action="append", default=[], help="recipe override for every attribute")
args = p.parse_args()

rows = []
for attribute in args.attributes:
    run = Path(args.out) / attribute
    cmd = [sys.executable, "-m", "facet.cli", "train", attribute, "--data", args.data,
           "--run-dir", str(run), *[f"--set={s}" for s in args.set]]
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    history = pd.read_csv(run / "metrics.csv")
    best = json.loads((run / "best.json").read_text())
    rows.append({"attribute": attribute, "val_macro_f1": round(best["val_macro_f1"], 4),
                 "val_accuracy": round(best["val_accuracy"], 4), "best_epoch": best["epoch"],
                 "epochs_run": len(history),
                 "train_img_per_s_median": round(float(history["train_img_per_s"].median()), 1),
                 "wall_min": round(wall / 60, 1)})
    print(rows[-1], flush=True)

(Path(args.out) / "bench.json").write_text(json.dumps(rows, indent=2))
table = pd.DataFrame(rows)
print(table.to_string(index=False))
print(f"total wall: {table['wall_min'].sum():.1f} min")
