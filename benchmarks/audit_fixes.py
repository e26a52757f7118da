"""`facet audit` on the real labels of maskfaces/train (gender), and the score change after the
suspects a person confirmed by eye are fixed.

    FACET_WEIGHTS_DIR=../shared/weights python benchmarks/audit_fixes.py --shared ../shared/data \\
        --confirmed 1,2,3,5,9,31

Reads the 3-fold cross-validation that benchmarks/pseudo_bench.py trains (its teacher, 2 epochs
x 4,000 samples a fold, the unmodified labels), audits it into runs/audit_real/gender (the
contact sheet of the top 40 is what was checked by eye), keeps the draft fixes whose ranks are
--confirmed, trains the single model of pseudo_bench.py's budget again with `--fixes`, and
scores both on maskfaces eval and aaf val. Writes benchmarks/results/audit_fixes.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from pseudo_bench import BUDGET, LABELLED, aaf_split, facet, gender_f1  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--confirmed", required=True, help="Ranks of the suspects confirmed by eye.")
    p.add_argument("--runs", type=Path, default=Path("runs/pseudo_bench"))
    p.add_argument("--others", type=Path, default=Path("runs/default_models"))
    p.add_argument("--audit", type=Path, default=Path("runs/audit_real/gender"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/audit_fixes.json"))
    args = p.parse_args()
    faces = args.shared / "maskfaces"
    if not (args.audit / "fixes.csv").exists():
        facet("audit", "gender", "--cv", args.runs / "teacher", "--out", args.audit, "--sheet", 40)
    ranks = {int(r) for r in args.confirmed.split(",")}
    drafts = pd.read_csv(args.audit / "fixes.csv", dtype={"id": str})
    confirmed = args.audit / "confirmed.csv"
    drafts[drafts["rank"].isin(ranks)].to_csv(confirmed, index=False)
    fixed, export = args.audit.parent / "gender_fixed", args.audit.parent / "export_fixed"
    if not (fixed / "best.safetensors").exists():
        facet("train", "gender", "--data", faces / "train", "--fixes", confirmed,
              "--run-dir", fixed, *BUDGET, *LABELLED)
    if not (export / "facet.json").exists():
        facet("export", fixed, args.others / "mask", args.others / "age", "--out", export,
              "--no-ensemble")
    answers = pd.read_csv(faces / "eval/answers.csv")
    sets = {"maskfaces eval": pd.DataFrame({
        "path": [str(faces / "eval/images" / i) for i in answers["ImageID"]],
        "gender": answers["gender"]}), "aaf val": aaf_split(args.shared)[1]}
    scores = {name: {s: gender_f1(models, frame) for s, frame in sets.items()}
              for name, models in (("single", args.runs / "export_single"), ("with fixes", export))}
    suspects = pd.read_csv(args.audit / "suspects.csv")
    result = {"persons": 2700, "suspects": len(suspects), "checked_by_eye": 40,
              "confirmed": sorted(ranks), "gender_macro_f1": scores}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
