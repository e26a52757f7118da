"""The model set that ships with facet (facet/assets/models): trained from ../shared/data with
the default recipes, exported with calibration and int8, each model's variant chosen on the
benchmark sets, scored, its card written; `--check` rebuilds and compares answers.

    FACET_WEIGHTS_DIR=../shared/weights python benchmarks/default_models.py --shared ../shared/data
    FACET_WEIGHTS_DIR=../shared/weights python benchmarks/default_models.py --shared ../shared/data \\
        --check --attributes mask

Steps (each skipped when its output is there):
1. Train each attribute with its default recipe and seed (42) and `--set crop=face`: mask on
   maskfaces/train + maskon + the realphotos boxes of the training photos (cut from the photos;
   the held-out photos, realmasks' val split by photo, left out); gender and age on
   maskfaces/train + aaf. Runs in --runs.
2. `facet export --quantize --eval-limit 0` (temperature calibration, int8 calibrated on val
   images) into RUNS/export.
3. Each attribute's fp32 and int8 scored on the benchmark sets; int8 is kept where it loses at
   most INT8_LOSS macro-F1 on every set, else fp32.
4. The set written to --out: the chosen files, facet.json (variant "compact", the default, and
   the card's scores), MODEL_CARD.md; all scores in benchmarks/results/default_models.json.
5. Speed: the photo path (the set, faces found by the detector) against the crop path (the same
   files told the images are face crops: no detector), photos/s, interleaved rounds.

--check: train --attributes anew in --check-runs (the other attributes' runs are the build's),
export them the same way and compare the answers on a fixed image list with the set in --out:
label agreement and max |dp| per attribute, held against TOLERANCE.
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

sys.path.insert(0, str(Path(__file__).parent))
from faces_bench import f1_row, load_boxes, match, speed  # noqa: E402
from photo_crops import boxed_source, held_out_photos  # noqa: E402

from facet import shipped  # noqa: E402
from facet.combine import ATTRIBUTES, class_names  # noqa: E402
from facet.metrics import by_age_band, scores  # noqa: E402
from facet.manifest import read_manifest  # noqa: E402
from facet.models.recipe import load_recipe  # noqa: E402
from facet.models.split import split_by_source  # noqa: E402
from facet.serve.batch import predict_paths  # noqa: E402
from facet.model_folder import INDEX, read_index  # noqa: E402
from facet.serve.predictor import Predictor  # noqa: E402

INT8_LOSS = 0.005  # macro-F1 an int8 model may lose on any benchmark set and still ship
TOLERANCE = {"agreement": 0.99, "max_abs_dp": 0.05}  # a rebuilt set against the shipped one
VARIANT = "compact"
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


def score_sets(models: Path, variant: str, sets: dict[str, pd.DataFrame],
               photos: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, dict]:
    """macro-F1 of every labelled attribute on every set (18 classes where `ans` is known;
    gender by age band where ages are), and photo -> mask on the held-out photos."""
    predictor = Predictor(models, variant=variant)
    out = {}
    for name, frame in sets.items():
        result = predict_paths(predictor, [Path(p) for p in frame["path"]], progress=False)
        row = {"images": len(frame), "no_face_found": sum(f is False for f in result.face_found)}
        for attribute, classes in ATTRIBUTES.items():
            if attribute in frame:
                pred = result.attributes[attribute].argmax(1)
                row[attribute] = round(scores(frame[attribute].to_numpy(), pred, len(classes))["macro_f1"], 4)
                if "age_years" in frame:
                    bands = by_age_band(frame[attribute].to_numpy(), pred, frame["age_years"].to_numpy())
                    row[f"{attribute} by age band"] = {r.ages: round(r.macro_f1, 4)
                                                       for r in bands.itertuples()}
        if "ans" in frame:
            row["18 classes"] = round(scores(frame["ans"].to_numpy(), result.labels,
                                             len(class_names()))["macro_f1"], 4)
        out[name] = row
        print(variant, name, json.dumps(row), flush=True)
    out["realphotos held-out photos"] = photo_to_mask(predictor, *photos)
    print(variant, "photos", json.dumps(out["realphotos held-out photos"]), flush=True)
    return out


def photo_to_mask(predictor: Predictor, held: pd.DataFrame, boxes: pd.DataFrame) -> dict:
    """Each annotated face >= 24 px of the held-out photos takes its detection (IoU >= 0.4,
    every annotated face of the photo competing); a missed face counts wrong."""
    photos = sorted(held["path"].unique())
    result = predict_paths(predictor, [Path(p) for p in photos], progress=False, every=True)
    truth, pred = [], []
    for row, path in enumerate(photos):
        faces = [f for f in result.faces if f.row == row and f.face is not None]
        everyone = boxes[boxes["path"] == path]
        owner = match(list(everyone["box"]), [f.face.box for f in faces])
        answers = {everyone.index[k]: int(faces[j].attributes["mask"].argmax())
                   for j, k in enumerate(owner) if k >= 0}
        group = held[held["path"] == path]
        truth += group["label"].tolist()
        pred += [answers.get(i, -1) for i in group.index]
    found = f1_row(truth, pred)
    return {"photos": len(photos), "faces": found["faces"], "missed": found["missed"],
            "face recall": round(1 - found["missed"] / found["faces"], 4),
            "mask": found["macro_f1"], "mask per class": found["per_class_f1"]}


def choose(fp32: dict, int8: dict) -> tuple[dict[str, str], dict]:
    """Per attribute: int8 where its worst set loses at most INT8_LOSS macro-F1, else fp32."""
    chosen, losses = {}, {}
    for attribute in ATTRIBUTES:
        deltas = {name: round(int8[name][attribute] - row[attribute], 4)
                  for name, row in fp32.items() if attribute in row}
        if attribute == "mask":
            deltas["realphotos held-out photos"] = round(
                int8["realphotos held-out photos"]["mask"] - fp32["realphotos held-out photos"]["mask"], 4)
        losses[attribute] = deltas
        chosen[attribute] = "int8" if min(deltas.values()) >= -INT8_LOSS else "fp32"
    return chosen, losses


def assemble(export: Path, out: Path, chosen: dict[str, str]) -> None:
    """The chosen files and a facet.json whose default variant names them."""
    index = read_index(export)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.onnx"):
        old.unlink()
    files = {a: index["models"][v][a] for a, v in chosen.items()}
    for name in files.values():
        shutil.copy2(export / name, out / name)
    shipped_index = {"models": {VARIANT: files}, "default_variant": VARIANT,
                     "variants_chosen": chosen, "calibration": index["calibration"],
                     "parity": index["parity"], "int8_eval": index["int8_eval"], "tta": False}
    (out / INDEX).write_text(json.dumps(shipped_index, indent=2))


def add_card(out: Path, card: dict) -> None:
    index = json.loads((out / INDEX).read_text())
    index["card"] = card
    (out / INDEX).write_text(json.dumps(index, indent=2))
    (out / "MODEL_CARD.md").write_text(card_markdown(out, card))


def card_markdown(out: Path, card: dict) -> str:
    s = card["scores"]
    index = json.loads((out / INDEX).read_text())
    files = index["models"][VARIANT]
    meta = {a: json.loads(Path(card["runs"][a], "best.json").read_text()) for a in ATTRIBUTES}
    rows = [f"| {a} | `{files[a]}` ({(out / files[a]).stat().st_size / 1e6:.1f} MB) | "
            f"{meta[a]['recipe']['backbone']}, {meta[a]['recipe']['image_size']} px, crop=face "
            f"x{meta[a]['preprocess']['margin']} | {card['trained_on'][a]} | "
            f"{meta[a]['recipe']['epochs']} x {meta[a]['recipe']['samples_per_epoch']:,}, seed "
            f"{meta[a]['recipe']['seed']} | {index['calibration'][a]['temperature']:.2f} |"
            for a in ATTRIBUTES]
    me, rm, photos = s["maskfaces eval"], s["realmasks val"], s["realphotos held-out photos"]
    ag, aa = s["aaf val (gender)"], s["aaf val (age)"]
    bands = " | ".join(f"{k} {v:.2f}" for k, v in ag["gender by age band"].items())
    return f"""# facet's shipped models: model card

Three attribute models (mask state, gender, age group) that `facet predict`, `facet serve` and
the try-it page use when no `--models` folder is given. Photo models: each finds the faces with
the shipped YuNet-n detector (score >= {card['detector']['score_threshold']}) and answers for the
square crop of {meta['mask']['preprocess']['margin']}x the face box. Built by
`benchmarks/default_models.py` from the data sets named below; `facet info` prints this folder's
metadata.

**Research use only.** The training data is licensed for non-commercial research (UTKFace,
MaskedFace-Net/FFHQ CC BY-NC-SA 4.0, All-Age-Faces: no license stated), and the models inherit
that. Gender is predicted as two classes and age as three groups from appearance alone: they are
estimates of how a face looks, not facts about a person.

| model | file | network | trained on | epochs x samples | temperature |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Variants: int8 (static, calibrated on val images) where it loses at most {INT8_LOSS} macro-F1 on
every set below against fp32, else fp32: {', '.join(f'{a} {v}' for a, v in card['chosen'].items())}.
Sources: {'; '.join(f'{k}: {v}' for k, v in LICENSES.items())}.

## Measured (the shipped files, macro-F1)

| set | what | mask | gender | age | 18 classes |
|---|---|---|---|---|---|
| maskfaces eval ({me['images']:,} images, drawn masks on UTKFace) | every attribute | {me['mask']:.3f} | {me['gender']:.3f} | {me['age']:.3f} | {me['18 classes']:.3f} |
| realmasks val ({rm['images']} tight street crops) | mask | {rm['mask']:.3f} | | | |
| realphotos, {photos['photos']} held-out street photos ({photos['faces']} faces >= 24 px) | photo -> faces -> mask, a missed face wrong | {photos['mask']:.3f} | | | |
| aaf val ({ag['images']} real faces, gender split) | gender | | {ag['gender']:.3f} | | |
| aaf val ({aa['images']} real faces, age split) | age | | | {aa['age']:.3f} | |

- Faces found on the held-out photos: {photos['face recall']:.3f} of the annotated faces >= 24 px
  ({photos['missed']} missed). Over all 375 photos of realphotos the detector finds 0.892 of
  them at precision 0.903 (BENCHMARKS.md, "Detection").
- Gender by real age (aaf val): {bands}.

## Known failure modes

- Children: gender is weakest under 13 (above); age groups blur at the 30 and 60 boundaries.
- Small, turned or partly hidden faces: about one face in ten on street photos is not found,
  and a face that is not found gets no answer of its own (the photo's answer then comes from the
  whole image, `face_found=false`).
- `incorrect` masks are rare in real photos (7 of the held-out faces): their F1 moves by 0.1 per
  face, so it is the least certain number here.
- Tight face crops (the realmasks row) score lower than photos: the models are trained to see
  the surroundings of a face; for crops, train with `--set crop=none`.
- Gender and age of masked faces in street photos: no labelled set measures them (realphotos has
  mask labels only; maskfaces' masks are drawn): treat these answers as the least certain.
- The faces are mostly East Asian (aaf) and UTKFace's mix: other populations are not measured.
"""


def fixed_images(shared: Path, sets: dict[str, pd.DataFrame], held: pd.DataFrame) -> list[Path]:
    """The image list of the rebuild check: the test photos, maskfaces eval, aaf val, photos."""
    tests = sorted(Path(__file__).parent.parent.glob("tests/fixtures/photos/*.jpg"))
    return [*tests, *map(Path, sorted(sets["maskfaces eval"]["path"])[:210]),
            *map(Path, sorted(sets["aaf val (gender)"]["path"])[:90]),
            *map(Path, sorted(held["path"].unique())[:20])]


def compare(a: Path, b: Path, paths: list[Path]) -> dict:
    """Label agreement and max |dp| per attribute of two model folders on ``paths``."""
    results = [predict_paths(Predictor(m), paths, progress=False) for m in (a, b)]
    out = {}
    for attribute in ATTRIBUTES:
        pa, pb = (r.attributes[attribute] for r in results)
        ok = ~np.isnan(pa).any(1) & ~np.isnan(pb).any(1)
        out[attribute] = {"images": int(ok.sum()),
                          "agreement": round(float((pa[ok].argmax(1) == pb[ok].argmax(1)).mean()), 4),
                          "max_abs_dp": round(float(np.abs(pa[ok] - pb[ok]).max()), 5)}
    return out


def crop_none_copy(models: Path, out: Path) -> Path:
    """The same model files told their images are face crops (no detector): the crop path."""
    import onnx
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(models / INDEX, out / INDEX)
    for name in read_index(models)["models"][VARIANT].values():
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
    if args.check:
        return check(args, held, sets, held_photos, results)
    boxed = boxed_source(args.shared, held_photos, args.runs / "realphotos_train.csv")
    commands = train_commands(args.shared, args.runs, boxed)
    export = build_runs(commands, args.runs)
    by_variant = {v: score_sets(export, v, sets, (held, boxes)) for v in ("fp32", "int8")}
    chosen, losses = choose(by_variant["fp32"], by_variant["int8"])
    assemble(export, args.out, chosen)
    card = {"scores": score_sets(args.out, VARIANT, sets, (held, boxes)), "chosen": chosen,
            "commands": {a: "facet " + " ".join(c) for a, c in commands.items()},
            "runs": {a: str(args.runs / a) for a in ATTRIBUTES},
            "trained_on": {a: json.loads((args.runs / a / "recipe.json").read_text())["data"]["summary"]
                           for a in ATTRIBUTES},
            "detector": json.loads((args.runs / "mask" / "best.json").read_text())["detector"]}
    add_card(args.out, card)
    results.update({"by_variant": by_variant, "int8_delta": losses, "card": card,
                    "sizes_bytes": {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}})
    if args.speed_rounds:
        photos = sorted(Path(x) for x in boxes["path"].unique())
        evals = [Path(x) for x in sorted(sets["maskfaces eval"]["path"])[:2100]]
        results["speed"] = speed(args.out, crop_none_copy(args.out, args.runs / "crop_path"),
                                 {"realphotos": photos, "maskfaces eval": evals}, args.speed_rounds)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(json.dumps({"chosen": chosen, "scores": card["scores"]}, indent=2))


def check(args, held: pd.DataFrame, sets: dict, held_photos: set, results: dict) -> None:
    """Retrain --attributes into --check-runs, export like the build, compare with --out."""
    wanted = args.attributes.split(",")
    args.check_runs.mkdir(parents=True, exist_ok=True)
    boxed = boxed_source(args.shared, held_photos, args.check_runs / "realphotos_train.csv")
    commands = train_commands(args.shared, args.check_runs, boxed)
    for attribute in set(ATTRIBUTES) - set(wanted):  # the build's own runs
        target = args.check_runs / attribute
        if not target.exists():
            target.symlink_to((args.runs / attribute).resolve())
    export = build_runs({a: commands[a] for a in wanted}, args.check_runs)
    rebuilt = args.check_runs / "set"
    assemble(export, rebuilt, json.loads((args.out / INDEX).read_text())["variants_chosen"])
    found = compare(args.out, rebuilt, fixed_images(args.shared, sets, held))
    ok = all(found[a]["agreement"] >= TOLERANCE["agreement"]
             and found[a]["max_abs_dp"] <= TOLERANCE["max_abs_dp"] for a in wanted)
    results["rebuild_check"] = {"retrained": wanted, "tolerance": TOLERANCE, "found": found, "ok": ok}
    args.results.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["rebuild_check"], indent=2))
    if not ok:
        sys.exit(f"the rebuilt set differs from {args.out} beyond the tolerance")


if __name__ == "__main__":
    main()
