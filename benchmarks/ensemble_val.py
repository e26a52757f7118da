"""Val macro-F1 of finished runs of one attribute, alone and averaged (a small ensemble), each
with and without horizontal-flip TTA: what the field's last two tricks give on a split.

The runs must share a val split (same data, fold and seed); each is scored at its own
preprocessing spec, on the PyTorch checkpoint.

    python -m benchmarks.ensemble_val runs/bench/gender runs/gld/gender runs/g160/gender \
        --out benchmarks/results/gender_ensemble.csv
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from facet.metrics import scores
from facet.models.checkpoint import load_model
from facet.preprocess import PreprocessSpec, load, normalize


@torch.inference_mode()
def val_probs(run: Path, paths: list[str], batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(plain, flipped) softmax probabilities of the run's best checkpoint on ``paths``."""
    model, meta = load_model(run)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    images = np.stack([load(p, spec) for p in paths])
    views = []
    for view in (images, images[:, :, ::-1]):
        chunks = [torch.softmax(model(torch.from_numpy(normalize(view[i:i + batch], spec))), 1)
                  for i in range(0, len(view), batch)]
        views.append(torch.cat(chunks).numpy())
    return views[0], views[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, help="CSV of every run and combination")
    args = p.parse_args()
    vals = [pd.read_csv(run / "val.csv") for run in args.runs]
    keys = [[str(Path(x).resolve()) for x in v["path"]] for v in vals]
    if any(k != keys[0] for k in keys[1:]):
        raise SystemExit("the runs were validated on different images: use runs of one split")
    labels = vals[0]["label"].to_numpy()
    probs = {run: val_probs(run, list(vals[0]["path"])) for run in args.runs}
    n = next(iter(probs.values()))[0].shape[1]
    rows = []
    for size in range(1, len(args.runs) + 1):
        for combo in itertools.combinations(args.runs, size):
            plain = np.mean([probs[r][0] for r in combo], axis=0)
            tta = np.mean([(probs[r][0] + probs[r][1]) / 2 for r in combo], axis=0)
            rows.append({"runs": " + ".join(str(r) for r in combo),
                         "macro_f1": scores(labels, plain.argmax(1), n)["macro_f1"],
                         "macro_f1_flip_tta": scores(labels, tta.argmax(1), n)["macro_f1"]})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.4f"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.4f")


if __name__ == "__main__":
    main()
