"""The model set that ships with facet (facet/assets/models), built by `facet build-set
--from-data` (the runs trained, exported and built on the benchmark sets; see the README), then
measured for speed; `--check` rebuilds and compares answers.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.default_models --shared ../shared/data
    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.default_models --shared ../shared/data \\
        --check --attributes mask

Speed: the photo path (the set, faces found by the detector) against the crop path (the same
files told the images are face crops: no detector), photos/s, interleaved rounds.

--check: train --attributes anew in --check-runs (the other attributes' runs are the build's),
export them the same way, build the set again and compare its answers with --out's
(`facet build-set --against`). All results in benchmarks/results/default_models.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from benchmarks.faces_bench import speed
from facet import shipped
from facet.combine import ATTRIBUTES
from facet.model_folder import INDEX, read_index
from facet.release.plan import facet, read_boxes
from facet.serve.model_set import COMPACT


def crop_none_copy(models: Path, out: Path) -> Path:
    """The same model files told their images are face crops (no detector): the crop path."""
    import onnx
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(models / INDEX, out / INDEX)
    for name in read_index(models)["models"][COMPACT].values():
        proto = onnx.load(str(models / name))
        for prop in proto.metadata_props:
            if prop.key == "facet":
                info = json.loads(prop.value)
                info["preprocess"]["crop"] = "none"
                prop.value = json.dumps(info)
        onnx.save(proto, str(out / name))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/shipped"))
    p.add_argument("--out", type=Path, default=shipped.MODELS)
    p.add_argument("--budget", default="auto", help="cpu, gpu or auto (facet build-set --budget).")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/default_models.json"))
    p.add_argument("--check", action="store_true", help="Rebuild and compare with --out.")
    p.add_argument("--attributes", default="mask,gender,age", help="--check: which to retrain.")
    p.add_argument("--check-runs", type=Path, default=Path("runs/shipped_check"))
    p.add_argument("--speed-rounds", type=int, default=3, help="0: no speed measurement.")
    args = p.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    runs = args.check_runs if args.check else args.runs
    runs.mkdir(parents=True, exist_ok=True)
    if args.check:
        wanted = args.attributes.split(",")
        for attribute in set(ATTRIBUTES) - set(wanted):  # the build's own runs
            target = runs / attribute
            if not target.exists():
                target.symlink_to((args.runs / attribute).resolve())
    built = runs / "built.json"
    out = runs / "set" if args.check else args.out
    facet(["build-set", "--from-data", str(args.shared), "--runs", str(runs), "--out", str(out),
           "--budget", args.budget, "--results", str(built),
           *(["--against", str(args.out)] if args.check else [])])
    built = json.loads(built.read_text())
    if args.check:
        results["rebuild_check"] = {"retrained": wanted, "found": built["compared"]}
        args.results.write_text(json.dumps(results, indent=2))
        return
    results.pop("rebuild_check", None)  # it checked the set this build replaces
    card = {k: built[k] for k in ("scores", "chosen", "trained_on", "detector", "fails")}
    card["budget"] = built["release"]["budget"]
    card["commands"] = built["release"]["commands"]
    results.update({"by_variant": built["by_variant"], "int8_delta": built["int8_delta"],
                    "card": card, "sets": built["release"]["sets"],
                    "sizes_bytes": {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}})
    if args.speed_rounds:
        photos = sorted(Path(x) for x in read_boxes(args.shared)["path"].unique())
        evals = [Path(x) for x in sorted(pd.read_csv(runs / "sets/maskfaces_eval.csv")["path"])[:2100]]
        results["speed"] = speed(args.out, crop_none_copy(args.out, runs / "crop_path"),
                                 {"realphotos": photos, "maskfaces eval": evals}, args.speed_rounds)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
