"""Where a finished run's val errors are: macro-F1 by band of real age (written to the run as
val_by_age.csv and .png, which new runs write themselves), by image type (mask1..5 /
incorrect_mask / normal), and with each person's images averaged (an upper bound for any
per-image test-time trick).

    python benchmarks/by_age.py runs/bench/gender --data ../shared/data/maskfaces/train
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet.metrics import by_age_band, plot_by_age_band, scores
from facet.models.data import read_competition

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("run", type=Path)
p.add_argument("--data", required=True, help="the competition train/ folder the run used")
args = p.parse_args()

val = pd.read_csv(args.run / "val.csv")
frame = read_competition(args.data).frame
years = pd.Series(frame["age_years"].to_numpy(), index=[str(Path(x).resolve()) for x in frame["path"]])
probs = np.load(args.run / "val_probs.npy")
pred = probs.argmax(1)
table = by_age_band(val["label"], pred, val["path"].map(lambda x: years.get(str(Path(x).resolve()), -1)))
epoch = json.loads((args.run / "best.json").read_text())["epoch"]
table.to_csv(args.run / "val_by_age.csv", index=False)
plot_by_age_band(table, args.run / "val_by_age.png", f"{args.run.name}: val macro-F1 by age, epoch {epoch}")
print(table.to_string(index=False, float_format="%.4f"))

n = probs.shape[1]
kind = val["path"].map(lambda x: Path(x).stem.rstrip("0123456789"))
for name, rows in val.groupby(kind).groups.items():
    print(f"{name}: {len(rows)} images, macro-F1 {scores(val['label'][rows], pred[rows], n)['macro_f1']:.4f}")
person = val["path"].map(lambda x: Path(x).parent.name)
mean = pd.DataFrame(probs).groupby(person.to_numpy()).mean()
labels = val.groupby(person)["label"].first().loc[mean.index]
print(f"each person's {len(val) // len(mean)} images averaged: macro-F1 "
      f"{scores(labels, mean.to_numpy().argmax(1), n)['macro_f1']:.4f} over {len(mean)} persons")
