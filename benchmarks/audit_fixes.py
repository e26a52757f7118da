"""`facet audit` on real labels (gender), and the score change after the suspects a person
confirmed by eye are fixed, on maskfaces/train or on aaf's training split.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.audit_fixes --shared ../shared/data \\
        --collection maskfaces --confirmed 1,2,3,5,9,31
    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.audit_fixes --shared ../shared/data \\
        --collection aaf --confirmed ...

maskfaces: the 3-fold cross-validation that benchmarks/pseudo_bench.py trains (its teacher, the
unmodified labels). aaf: a 3-fold cross-validation of aaf's training split (the split every
gender run makes of aaf, by file serial; a manifest source, so its persons are the file
serials), trained here. Both at pseudo_bench.py's budget (2 epochs x 4,000 samples a fold).
The audit goes to runs/audit_real/<collection>; its contact sheet of the top 40 is what was
checked by eye. Without --confirmed the script stops there. With it, the draft fixes of those
ranks are kept (confirmed.csv), the single model of the budget is trained on the same labels
with and without `--fixes`, and both are scored on maskfaces eval and aaf val. Only gender is
read from the exported folders; their mask and age models are small filler runs. Writes the
collection's entry of benchmarks/results/audit_fixes.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from benchmarks.pseudo_bench import BUDGET, LABELLED, aaf_split, facet, gender_f1, maskfaces_eval

FILLER = ["--set", "epochs=1", "--set", "samples_per_epoch=256"]


def fillers(faces: Path, runs: Path) -> list[Path]:
    """Mask and age runs that complete an exported folder (only its gender model is scored)."""
    out = []
    for attribute in ("mask", "age"):
        run = runs / f"filler_{attribute}"
        if not (run / "best.safetensors").exists():
            facet("train", attribute, "--data", faces / "train", "--run-dir", run, *FILLER,
                  *LABELLED)
        out.append(run)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--collection", choices=("maskfaces", "aaf"), default="maskfaces")
    p.add_argument("--confirmed", default="", help="Ranks of the suspects confirmed by eye.")
    p.add_argument("--pseudo-runs", type=Path, default=Path("runs/pseudo_bench"),
                   help="pseudo_bench.py's runs (the maskfaces cross-validation).")
    p.add_argument("--runs", type=Path, default=Path("runs/audit_real"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/audit_fixes.json"))
    args = p.parse_args()
    faces, runs = args.shared / "maskfaces", args.runs
    runs.mkdir(parents=True, exist_ok=True)
    aaf_train, aaf_val = aaf_split(args.shared)
    if args.collection == "maskfaces":
        source, cv = ["--data", faces / "train"], args.pseudo_runs / "teacher"
        units = 2700
    else:
        listed = runs / "aaf_train.csv"  # aaf's own rows (age in years), its training split
        labels = pd.read_csv(args.shared / "aaf/labels.csv", dtype={"group": str})
        labels["path"] = [str((args.shared / "aaf" / p).resolve()) for p in labels["path"]]
        train = {str(Path(p).resolve()) for p in aaf_train["path"]}
        labels[labels["path"].isin(train)].to_csv(listed, index=False)
        source, cv = ["--manifest", f"{listed},group=group,name=aaf"], runs / "aaf_cv"
        units = aaf_train["person"].nunique()
        if not (cv / "oof.csv").exists():
            facet("train", "gender", *source, "--fold", "all", "--folds", 3, "--run-dir", cv,
                  *BUDGET, *LABELLED)
    audit_dir = runs / args.collection
    if not (audit_dir / "fixes.csv").exists():
        facet("audit", "gender", "--cv", cv, "--out", audit_dir, "--sheet", 40)
    suspects = pd.read_csv(audit_dir / "suspects.csv")
    if not args.confirmed:
        print(f"{len(suspects)} suspects: check {audit_dir / 'suspects.png'} by eye, then "
              "re-run with --confirmed RANKS")
        return
    ranks = {int(r) for r in args.confirmed.split(",")}
    drafts = pd.read_csv(audit_dir / "fixes.csv", dtype={"id": str})
    confirmed = audit_dir / "confirmed.csv"
    drafts[drafts["rank"].isin(ranks)].to_csv(confirmed, index=False)
    others = fillers(faces, runs)
    sets = {"maskfaces eval": maskfaces_eval(faces), "aaf val": aaf_val}
    scores = {}
    for name, fixes in (("single", []), ("with fixes", ["--fixes", confirmed])):
        run = runs / f"{args.collection}_{name.replace(' ', '_')}"
        if not (run / "best.safetensors").exists():
            facet("train", "gender", *source, *fixes, "--run-dir", run, *BUDGET, *LABELLED)
        export = runs / f"export_{run.name}"
        if not (export / "facet.json").exists():
            facet("export", run, *others, "--out", export, "--no-ensemble")
        scores[name] = {s: gender_f1(export, frame) for s, frame in sets.items()}
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result[args.collection] = {"persons": int(units), "suspects": len(suspects),
                               "checked_by_eye": 40, "confirmed": sorted(ranks),
                               "gender_macro_f1": scores}
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result[args.collection], indent=2))


if __name__ == "__main__":
    main()
