"""The model set that ships with facet (facet/assets/models): trained from ../shared/data with
the default recipes, exported with calibration and int8, then built by `facet build-set` (each
model's variant chosen on the benchmark sets, scored, its card written); measured for speed;
`--check` rebuilds and compares answers.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.default_models --shared ../shared/data
    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.default_models --shared ../shared/data \\
        --check --attributes mask

Steps (each skipped when its output is there):
1. Train each attribute with its default recipe and seed (42) and `--set crop=face`: mask on
   maskfaces/train + maskon + the realphotos boxes of the training photos (cut from the photos;
   the held-out photos, realmasks' val split by photo, left out); gender and age on
   maskfaces/train + aaf. Runs in --runs.
2. `facet export --quantize --eval-limit 0` (temperature calibration, int8 calibrated on val
   images) into RUNS/export.
3. The benchmark sets written as manifests (RUNS/sets), and `facet build-set` on them into
   --out with the card's notes below; all scores in benchmarks/results/default_models.json.
4. Speed: the photo path (the set, faces found by the detector) against the crop path (the same
   files told the images are face crops: no detector), photos/s, interleaved rounds.

--check: train --attributes anew in --check-runs (the other attributes' runs are the build's),
export them the same way, build the set again and compare its answers with --out's
(`facet build-set --against`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.faces_bench import load_boxes, speed
from benchmarks.photo_crops import boxed_source, held_out_photos
from facet import shipped
from facet.combine import ATTRIBUTES
from facet.manifest import read_manifest
from facet.model_folder import INDEX, read_index
from facet.models.recipe import load_recipe
from facet.models.split import split_by_source
from facet.serve.model_set import COMPACT

LICENSES = {"maskfaces": "UTKFace faces: non-commercial research only",
            "aaf": "All-Age-Faces: no license stated, research use",
            "maskon": "MaskedFace-Net / FFHQ: CC BY-NC-SA 4.0",
            "realphotos": "Kaggle Face Mask Detection: CC0"}


def train_commands(shared: Path, runs: Path, boxed: Path) -> dict[str, list[str]]:
    """The exact `facet train` command of each attribute (default recipe and seed)."""
    faces = ["--data", str(shared / "maskfaces/train")]
    sources = {"mask": [*faces, "--manifest", f"{shared / 'maskon/labels.csv'},group=group",
                        "--manifest", f"{boxed},group=photo,name=realphotos"],
               "gender": [*faces, "--manifest", f"{shared / 'aaf/labels.csv'},group=group"]}
    sources["age"] = sources["gender"]
    return {a: ["train", a, *sources[a], "--set", "crop=face", "--run-dir", str(runs / a)]
            for a in ATTRIBUTES}


def facet(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "facet.cli", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_runs(commands: dict[str, list[str]], runs: Path) -> Path:
    """Train what is missing, export what is missing; returns the export folder."""
    for attribute, cmd in commands.items():
        if not (runs / attribute / "best.safetensors").exists():
            facet(cmd)
    export = runs / "export"
    if not (export / INDEX).exists():
        facet(["export", *(str(runs / a) for a in ATTRIBUTES), "--out", str(export),
               "--quantize", "--eval-limit", "0", "--no-ensemble"])
    return export


def benchmark_sets(shared: Path) -> dict[str, pd.DataFrame]:
    """path + the labels each set has (codes; age_years where known)."""
    answers = pd.read_csv(shared / "maskfaces/eval/answers.csv")
    sets = {"maskfaces eval": pd.DataFrame({
        "path": [str(shared / "maskfaces/eval/images" / i) for i in answers["ImageID"]],
        "mask": answers["mask"], "gender": answers["gender"], "age": answers["age"],
        "ans": answers["ans"]})}
    frame = read_manifest(shared / "realmasks/labels.csv", group="photo").frame
    _, val = split_by_source(frame, frame["mask"], load_recipe("mask")[0])
    sets["realmasks val"] = frame.iloc[val][["path", "mask"]].reset_index(drop=True)
    aaf = read_manifest(shared / "aaf/labels.csv", group="group").frame
    for attribute in ("gender", "age"):  # each run splits aaf stratified by its own attribute
        _, val = split_by_source(aaf, aaf[attribute], load_recipe(attribute)[0])
        sets[f"aaf val ({attribute})"] = aaf.iloc[val][["path", attribute, "age_years"]].reset_index(drop=True)
    return sets


def write_sets(sets: dict[str, pd.DataFrame], held: pd.DataFrame, boxes: pd.DataFrame,
               folder: Path) -> list[str]:
    """The benchmark sets as `facet build-set` options: a manifest each (paths absolute, codes,
    real ages where known); the held-out photos as every annotated face of theirs."""
    folder.mkdir(parents=True, exist_ok=True)
    options = []
    for name, frame in sets.items():
        csv = folder / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".csv")
        frame = frame.assign(path=[str(Path(p).resolve()) for p in frame["path"]])
        frame.rename(columns={"age_years": "age", "age": "age_group"}).drop(
            columns=["ans"], errors="ignore").to_csv(csv, index=False)
        options += ["--eval", f"{name}={csv}"]
    faces = boxes[boxes["path"].isin(held["path"])]
    x, y, w, h = (np.array([b[k] for b in faces["box"]]) for k in range(4))
    pd.DataFrame({"path": faces["path"], "x0": x, "y0": y, "x1": x + w, "y1": y + h,
                  "mask": faces["mask"]}).to_csv(folder / "realphotos_held_out.csv", index=False)
    return options + ["--photos", f"realphotos held-out photos={folder / 'realphotos_held_out.csv'}"]


NOTES = f"""**Research use only.** The training data is licensed for non-commercial research (UTKFace,
MaskedFace-Net/FFHQ CC BY-NC-SA 4.0, All-Age-Faces: no license stated), and the models inherit
that. Gender is predicted as two classes and age as three groups from appearance alone: they are
estimates of how a face looks, not facts about a person.

Sources: {'; '.join(f'{k}: {v}' for k, v in LICENSES.items())}.

## Known failure modes

- Children: gender is weakest under 13 (the gender by age band scores in `facet info --json`);
  age groups blur at the 30 and 60 boundaries.
- Small, turned or partly hidden faces: about one face in ten on street photos is not found,
  and a face that is not found gets no answer of its own (the photo's answer then comes from the
  whole image, `face_found=false`).
- `incorrect` masks are rare in real photos: their F1 moves by 0.1 per face, so it is the least
  certain number here.
- Tight face crops (the realmasks row) score lower than photos: the models are trained to see
  the surroundings of a face; for crops, train with `--set crop=none`.
- Gender and age of masked faces in street photos: no labelled set measures them (realphotos has
  mask labels only; maskfaces' masks are drawn): treat these answers as the least certain.
- The faces are mostly East Asian (aaf) and UTKFace's mix: other populations are not measured.
"""


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
    p.add_argument("--runs", type=Path, default=Path("runs/default_models"))
    p.add_argument("--out", type=Path, default=shipped.MODELS)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/default_models.json"))
    p.add_argument("--check", action="store_true", help="Rebuild and compare with --out.")
    p.add_argument("--attributes", default="mask,gender,age", help="--check: which to retrain.")
    p.add_argument("--check-runs", type=Path, default=Path("runs/default_models_check"))
    p.add_argument("--speed-rounds", type=int, default=3, help="0: no speed measurement.")
    args = p.parse_args()
    held_photos = held_out_photos(args.shared)
    boxes = load_boxes(args.shared)
    held = boxes[boxes["photo"].isin(held_photos) & boxes["big"]]
    sets = benchmark_sets(args.shared)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    runs = args.check_runs if args.check else args.runs
    runs.mkdir(parents=True, exist_ok=True)
    boxed = boxed_source(args.shared, held_photos, runs / "realphotos_train.csv")
    commands = train_commands(args.shared, runs, boxed)
    if args.check:
        wanted = args.attributes.split(",")
        for attribute in set(ATTRIBUTES) - set(wanted):  # the build's own runs
            target = runs / attribute
            if not target.exists():
                target.symlink_to((args.runs / attribute).resolve())
        commands = {a: commands[a] for a in wanted}
    export = build_runs(commands, runs)
    (runs / "notes.md").write_text(NOTES)
    built = runs / "built.json"
    out = runs / "set" if args.check else args.out
    facet(["build-set", str(export), "--out", str(out), *write_sets(sets, held, boxes, runs / "sets"),
           "--notes", str(runs / "notes.md"), "--results", str(built),
           *(["--against", str(args.out)] if args.check else [])])
    built = json.loads(built.read_text())
    if args.check:
        results["rebuild_check"] = {"retrained": wanted, "found": built["compared"]}
        args.results.write_text(json.dumps(results, indent=2))
        return
    card = {k: built[k] for k in ("scores", "chosen", "trained_on", "detector")}
    card["commands"] = {a: "facet " + " ".join(c) for a, c in commands.items()}
    results.update({"by_variant": built["by_variant"], "int8_delta": built["int8_delta"],
                    "card": card,
                    "sizes_bytes": {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}})
    if args.speed_rounds:
        photos = sorted(Path(x) for x in boxes["path"].unique())
        evals = [Path(x) for x in sorted(sets["maskfaces eval"]["path"])[:2100]]
        results["speed"] = speed(args.out, crop_none_copy(args.out, args.runs / "crop_path"),
                                 {"realphotos": photos, "maskfaces eval": evals}, args.speed_rounds)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
