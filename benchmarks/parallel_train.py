"""Two attribute runs (mask, gender) trained one after another with the threads each gets when
they run at once (half the cores), then at once as two local processes, then as two tasks on a
local Ray (sized to this machine): the wall-clock of each, and whether every run's metrics.csv
is the one trained alone (all but its img/s column); last, one after another on all the cores
(a float sum's order follows the threads, so its losses may differ in the last digits). Each
starts on a cold cache, so the parallel runs also build it together.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.parallel_train   # synthetic data
    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.parallel_train \
        --data ../shared/data/maskfaces/train --set samples_per_epoch=512

Writes benchmarks/results/parallel_train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ["backbone=mobilenetv2_100", "image_size=96", "epochs=2", "samples_per_epoch=1024",
          "batch_size=64"]
ATTRIBUTES = ["mask", "gender"]


def train(data: Path, out: Path, name: str, extra: list[str], sets: list[str]) -> float:
    """Wall seconds of `facet train mask gender` into out/name, on its own cold cache."""
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "facet.cli", "train", *ATTRIBUTES, "--data", str(data),
           "--run-dir", str(out / name / "runs"), "--cache-dir", str(out / name / "cache"),
           "--workers", "1", *[a for kv in sets for a in ("--set", kv)], *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def metrics(out: Path, name: str, attribute: str) -> pd.DataFrame:
    return pd.read_csv(out / name / "runs" / attribute / "metrics.csv")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="competition train/ folder (default: synthetic)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "parallel_bench")
    p.add_argument("--set", action="append", default=[], help="recipe override, after RECIPE's")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parallel_train.json")
    args = p.parse_args(argv)
    data = args.data
    if data is None:
        from facet.synthetic import make_dataset
        data = make_dataset(args.work / "data", persons=120, eval_persons=10, size=128,
                            seed=0) / "train"
    sets = [*RECIPE, *args.set]
    cores = len(os.sched_getaffinity(0))
    share = str(max(1, cores // 2))  # each of the two runs at once: half the cores
    wall = {"one_after_another": train(data, args.work, "one_after_another",
                                       ["--threads", share], sets),
            "local_processes": train(data, args.work, "local_processes",
                                     ["--devices", "cpu,cpu"], sets),
            "ray_tasks": train(data, args.work, "ray_tasks",
                               ["--engine", "ray", "--cpus-per-run", share], sets),
            "one_after_another_all_cores": train(data, args.work,
                                                 "one_after_another_all_cores", [], sets)}
    same = {name: {a: bool(metrics(args.work, name, a).drop(columns="train_img_per_s").equals(
                metrics(args.work, "one_after_another", a).drop(columns="train_img_per_s")))
                   for a in ATTRIBUTES}
            for name in ("local_processes", "ray_tasks", "one_after_another_all_cores")}
    result = {"data": str(data), "recipe": sets, "cores": cores, "wall_s": wall,
              "ratio_to_one_after_another": {k: round(v / wall["one_after_another"], 3)
                                             for k, v in wall.items()},
              "same_metrics_as_one_after_another": same,
              "train_img_per_s": {name: {a: [round(float(v), 1) for v in
                                             metrics(args.work, name, a)["train_img_per_s"]]
                                         for a in ATTRIBUTES} for name in wall}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
