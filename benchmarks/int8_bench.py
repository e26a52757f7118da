"""fp32 against static int8 on the eval set: model-only speed (median of interleaved rounds,
images decoded beforehand) and 18-class / per-attribute macro-F1 of each variant's answers.

    facet export runs/bench/mask runs/bench/gender runs/bench/age --out artifacts/bench --quantize
    python -m benchmarks.int8_bench --eval ../shared/data/maskfaces/eval --models artifacts/bench
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, split_labels
from facet.metrics import scores
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--eval", type=Path, required=True)
p.add_argument("--models", type=Path, required=True)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--out", type=Path, default=Path("benchmarks/results/int8.json"))
args = p.parse_args()

inputs = read_inputs(args.eval)
answers = pd.read_csv(args.eval / "answers.csv", dtype={"ImageID": str}).set_index("ImageID")["ans"]
truth = answers.loc[[Path(x).name for x in inputs.paths]].to_numpy()
variants = {"fp32 (ensemble graph)": Predictor(args.models, mode="ensemble"),
            "fp32 (three sessions)": Predictor(args.models, mode="separate"),
            "int8 (three sessions)": Predictor(args.models, variant="int8")}
first = next(iter(variants.values()))
decoded = Predictor.stack([first.load(x).inputs[0] for x in inputs.paths])
n = len(inputs.paths)


def run(predictor: Predictor) -> np.ndarray:
    labels = []
    for start in range(0, n, args.batch):
        labels.append(predictor.predict({s: b[start:start + args.batch]
                                         for s, b in decoded.items()}).labels)
    return np.concatenate(labels)


times: dict[str, list[float]] = {k: [] for k in variants}
labels: dict[str, np.ndarray] = {}
for r in range(args.repeats + 1):  # round 0 warms up
    for name, predictor in variants.items():
        t = time.perf_counter()
        labels[name] = run(predictor)
        if r:
            times[name].append(time.perf_counter() - t)
result = {"images": n, "repeats": args.repeats, "variants": {}}
for name in variants:
    s = scores(truth, labels[name], 18)
    result["variants"][name] = {
        "img_per_s": round(n / statistics.median(times[name]), 1),
        "eval_macro_f1": round(s["macro_f1"], 4),
        "attribute_macro_f1": {a: round(scores(t, q, len(ATTRIBUTES[a]))["macro_f1"], 4)
                               for a, t, q in zip(ATTRIBUTES, split_labels(truth),
                                                  split_labels(labels[name]))}}
fp32 = result["variants"]["fp32 (three sessions)"]["img_per_s"]
result["int8_speedup_vs_fp32_sessions"] = round(
    result["variants"]["int8 (three sessions)"]["img_per_s"] / fp32, 2)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
