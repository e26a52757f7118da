"""`facet audit` against known wrong labels: a copy of maskfaces/train with flips planted (5 %
of persons' gender, 5 % of persons' age moved across a group boundary, 2 % of persons'
incorrect_mask and normal images swapped), a `--fold all` cross-validation of each attribute on
it, the audit, and the precision and recall of its ranked suspects against the flips.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.audit_bench --shared ../shared/data

Writes benchmarks/results/audit.json, audit.md and audit.png (precision and recall against the
number of suspects taken from the top), and each attribute's audit under runs/audit_bench.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from facet.models.audit import audit, write

SHARES = {"gender": 0.05, "age": 0.05, "mask": 0.02}
# the CPU budget of each fold (3 folds): one epoch of 4,000 samples
BUDGET = ["--folds", "3", "--set", "epochs=1", "--set", "samples_per_epoch=4000"]


def moved_age(age: int) -> int:
    """An age on the other side of the nearest group boundary (30 or 60)."""
    if age < 30:
        return 35
    if age >= 60:
        return 50
    return 25 if age < 45 else 65


def planted_copy(source: Path, out: Path, seed: int = 0) -> dict[str, list[str]]:
    """``out``/train: ``source``'s persons, images linked, with the flips; returns the flipped
    person ids per attribute."""
    listed = pd.read_csv(source / "train.csv", dtype=str)
    rng = np.random.default_rng(seed)
    ids = listed["id"].to_numpy()
    picked, rest = {}, ids
    for attribute, share in SHARES.items():  # disjoint: each person carries at most one flip
        picked[attribute] = list(rng.choice(rest, round(share * len(ids)), replace=False))
        rest = np.setdiff1d(rest, picked[attribute])
    images = out / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for person in listed.itertuples():
        gender, age = person.gender, int(person.age)
        if person.id in picked["gender"]:
            gender = "male" if gender == "female" else "female"
        if person.id in picked["age"]:
            age = moved_age(age)
        folder = images / f"{person.id}_{gender}_{person.race}_{age}"
        folder.mkdir(exist_ok=True)
        for image in sorted((source / "images" / person.path).iterdir()):
            name = image.name
            if person.id in picked["mask"] and image.stem in ("incorrect_mask", "normal"):
                name = name.replace(image.stem, "normal" if image.stem == "incorrect_mask"
                                    else "incorrect_mask")
            link = folder / name
            if not link.exists():
                link.symlink_to(image.resolve())
        rows.append({"id": person.id, "gender": gender, "race": person.race, "age": age,
                     "path": folder.name})
    pd.DataFrame(rows).to_csv(out / "train" / "train.csv", index=False)
    return picked


def cross_validate(data: Path, attribute: str, root: Path) -> None:
    if (root / "oof.csv").exists():
        return
    cmd = [sys.executable, "-m", "facet.cli", "train", attribute, "--data", str(data),
           "--fold", "all", "--run-dir", str(root), *BUDGET]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def curve(ranked: list[str], truth: set[str]) -> list[dict]:
    hits = np.cumsum([r in truth for r in ranked])
    return [{"k": k, "precision": round(float(hits[k - 1] / k), 4),
             "recall": round(float(hits[k - 1] / len(truth)), 4)} for k in range(1, len(ranked) + 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/audit_bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/audit.json"))
    p.add_argument("--attributes", default="gender,age,mask")
    args = p.parse_args()
    flips = planted_copy(args.shared / "maskfaces/train", args.runs / "planted")
    results = {}
    for attribute in args.attributes.split(","):
        root = args.runs / attribute
        cross_validate(args.runs / "planted" / "train", attribute, root)
        found = audit(root, attribute)
        write(found, root / "audit")
        truth = set(flips[attribute])
        if attribute == "mask":  # a swap is found when the draft fixes name the person
            ranked = found.fixes.sort_values("rank")["id"].tolist()
        else:
            ranked = [Path(p).parent.name.split("_")[0] for p in found.suspects["path"]]
        points = curve(ranked, truth)
        k = len(truth)
        at_k = points[min(k, len(points)) - 1] if points else {"precision": 0, "recall": 0}
        results[attribute] = {
            "planted": len(truth), "checked": found.checked, "suspects": len(ranked),
            "precision_all": points[-1]["precision"] if points else 0.0,
            "recall_all": points[-1]["recall"] if points else 0.0,
            f"precision_at_{k}": at_k["precision"], f"recall_at_{k}": at_k["recall"],
            "oof_macro_f1": json.loads((root / "cv.json").read_text())["oof_macro_f1"],
            "curve": points}
        print(attribute, {k: v for k, v in results[attribute].items() if k != "curve"}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": " ".join(BUDGET), "shares": SHARES, **results}, indent=2))
    lines = ["| attribute | planted | audited | suspects | precision / recall (all suspects) | "
             "precision / recall (top k = planted) | out-of-fold macro-F1 |", "|---|---|---|---|---|---|---|"]
    for a, r in results.items():
        k = r["planted"]
        lines.append(f"| {a} | {k} persons | {r['checked']:,} {'images' if a == 'mask' else 'persons'} | "
                     f"{r['suspects']} | {r['precision_all']:.3f} / {r['recall_all']:.3f} | "
                     f"{r[f'precision_at_{k}']:.3f} / {r[f'recall_at_{k}']:.3f} | {r['oof_macro_f1']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, args.out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for a, r in results.items():
        if r["curve"]:
            ks = [c["k"] for c in r["curve"]]
            ax.plot(ks, [c["precision"] for c in r["curve"]], label=f"{a} precision")
            ax.plot(ks, [c["recall"] for c in r["curve"]], "--", label=f"{a} recall")
            ax.axvline(r["planted"], color="grey", lw=0.5)
    ax.set_xlabel("suspects taken from the top of the audit")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("facet audit against planted wrong labels")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    os.environ.setdefault("FACET_WEIGHTS_DIR", "../shared/weights")
    main()
