"""Photos -> mask state: the crop the mask model learns against the crop it is shown, and the
detector that finds the faces. Trains the crop=face mask model (maskfaces + maskon + real street
faces, the default mask recipe) on the street faces two ways: today's tight crops (realmasks),
which the 1.6x square fills with black padding, and crops cut from the full photos around their
annotated boxes (realphotos: real context, the serving rule), the latter at several margins.
Every step is scored on the same held-out photos (realmasks' val split by photo, as training
makes it; the box-cut source is written without them): the detector finds the faces, each
annotated face >= 24 px is matched at IoU >= 0.4, the model answers the matched face's crop,
and a missed face counts wrong.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.photo_crops --shared ../shared/data

Writes benchmarks/results/photo_crops.json and .md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.mask_real import classify, load_run, source_args
from facet.faces import YUNET, YUNET_S, YuNet
from facet.preprocess import cut_face, read_image
from facet.release.plan import boxed_source, held_out_photos, read_boxes
from facet.score import score_photo_faces

BOXED = {"source_weights": "maskfaces=1,maskon=1,realphotos=2", "select_on": "realphotos,all"}
# (step, street source, crop margin), in the order they are trained
STEPS = [("street crops (realmasks)", "realmasks", 1.6), ("box-cut photos", "realphotos", 1.6),
         ("box-cut photos", "realphotos", 1.4), ("box-cut photos", "realphotos", 2.0),
         ("box-cut photos", "realphotos", 1.2)]
# today's detector and threshold, the new file at the same threshold and at its best detection F1
DETECTORS = {"YuNet-s, 0.6": (YUNET_S, 0.6), "YuNet-n, 0.6": (YUNET, 0.6),
             "YuNet-n, 0.75": (YUNET, 0.75)}


def train(shared: Path, run: Path, street: str, margin: float, boxed: Path) -> None:
    if (run / "best.safetensors").exists():
        return
    sources = (source_args(shared, ["maskfaces", "maskon"])
               + (source_args(shared, ["realmasks"]) if street == "realmasks" else
                  ["--manifest", f"{boxed},group=photo,name=realphotos"]))
    sets = [f"crop=face", f"crop_margin={margin}",
            *([f"{k}={v}" for k, v in BOXED.items()] if street == "realphotos" else [])]
    cmd = [sys.executable, "-m", "facet.cli", "train", "mask", *sources, "--run-dir", str(run),
           *[a for kv in sets for a in ("--set", kv)]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def detect_all(photos: list[str], detector_file: Path, threshold: float) -> dict[str, list]:
    detector = YuNet(detector_file, score_threshold=threshold)
    return {p: detector.detect(read_image(p)) for p in photos}


def photo_to_mask(run: Path, held: pd.DataFrame, boxes: pd.DataFrame, found: dict) -> dict:
    """Mask-state F1 over the held-out annotated faces >= 24 px; a missed face counts wrong."""
    model, spec = load_run(run)
    answers = {}
    for path in held["path"].unique():
        rgb = read_image(path)
        crops = [cut_face(rgb, face, spec) for face in found[path]]
        answers[path] = [(face.box, int(a)) for face, a in
                         zip(found[path], classify(model, spec, crops) if crops else [])]
    competing = boxes[boxes["path"].isin(held["path"])]
    return score_photo_faces(competing, answers, scored=competing.index.isin(held.index))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/photo_crops"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/photo_crops.json"))
    p.add_argument("--steps", type=int, default=len(STEPS), help="Train and score the first N steps.")
    args = p.parse_args()
    held_photos = held_out_photos(args.shared)
    boxed = boxed_source(args.shared, held_photos, args.runs / "realphotos_train.csv")
    boxes = read_boxes(args.shared)
    held = boxes[boxes["photo"].isin(held_photos) & boxes["big"]]
    found = {name: detect_all(sorted(held["path"].unique()), *d) for name, d in DETECTORS.items()}
    rows = []
    for k, (name, street, margin) in enumerate(STEPS[:args.steps]):
        run = args.runs / f"step{k}"
        train(args.shared, run, street, margin, boxed)
        for detector in DETECTORS:
            row = {"step": f"{name}, margin {margin:g}", "detector": detector, "run": str(run),
                   **photo_to_mask(run, held, boxes, found[detector])}
            rows.append(row)
            print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"photos": len(held_photos), "faces": len(held),
                                        "rows": rows}, indent=2))
    lines = [f"{len(held_photos)} held-out photos, {len(held)} annotated faces >= 24 px", "",
             "| mask model (crop=face) | detector, threshold | mask macro-F1 | wear | incorrect | "
             "not_wear | faces missed |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['detector']} | **{r['macro_f1']:.3f}** | "
              + " | ".join(f"{v:.3f}" for v in r["per_class_f1"].values())
              + f" | {r['missed']} of {r['faces']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
