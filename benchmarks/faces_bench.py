"""Photos to faces on real street photos: detection, photo -> mask state against the
annotated-box oracle, the mask model with real crops in the mix, and speed against crop: none.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.faces_bench --shared ../shared/data

Trains what is missing with `facet train --set crop=face` (runs/faces/{mask,gender,age}; the
mask model on maskfaces + maskon + realmasks grouped by photo, as benchmarks/mask_real.py's
default step; gender and age as the quick models), exports them to artifacts/faces, then:

1. Detection on every realphotos photo: YuNet at a low threshold, detections matched greedily
   by score to the annotated boxes at IoU >= 0.4; recall over faces >= 24 px, precision over
   all detections (one on a smaller annotated face is neither right nor wrong), per threshold;
   as the photos come and enlarged --upscale times (`--only-detection`: just these curves).
2. Photo -> mask state on the photos held out from training (realmasks' val split, by photo):
   (a) `facet predict --faces all` on the photos, a missed face counted wrong; (b) the same
   models on the annotated boxes (mapped to the detector's box convention), the oracle crop.
3. The crop=face mask model on realmasks val crops and maskfaces eval, beside the crop=none
   models of benchmarks/mask_real.py (read from its results, same splits).
4. Speed: photos/s of the in-process batch path for the crop=face models (detector on
   onnxruntime and on OpenCV) against the crop=none models (artifacts/quick), interleaved
   rounds in one run, and the detector's share of the time.

Writes benchmarks/results/faces.json, faces.md and faces_pr.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.mask_real import eval_sets, source_args
from facet.combine import ATTRIBUTES
from facet.faces import FACE_SCORE, Face, YuNet
from facet.metrics import scores
from facet.release.plan import read_boxes as load_boxes
from facet.preprocess import cut_face, read_image
from facet.score import match_faces, score_photo_faces
from facet.serve.batch import predict_paths
from facet.serve.predictor import Predictor

MASKS = ATTRIBUTES["mask"]
QUICK = ["--set", "epochs=1", "--set", "samples_per_epoch=1280"]


def facet(*args) -> None:
    cmd = [sys.executable, "-m", "facet.cli", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_and_export(shared: Path, runs: Path, models: Path) -> None:
    plans = {"mask": source_args(shared, ["maskfaces", "maskon", "realmasks"]),
             "gender": ["--data", shared / "maskfaces/train", *QUICK],
             "age": ["--data", shared / "maskfaces/train", *QUICK]}
    for attribute, sources in plans.items():
        if not (runs / attribute / "best.safetensors").exists():
            facet("train", attribute, *sources, "--set", "crop=face", "--run-dir", runs / attribute)
    if not (models / "facet.json").exists():
        facet("export", *(runs / a for a in plans), "--out", models)


def detection(boxes: pd.DataFrame, upscale: float = 1.0,
              detector_file: Path | None = None) -> tuple[dict, list[dict]]:
    detector = YuNet(detector_file, score_threshold=0.3, upscale=upscale)  # low: the whole curve
    records, pairs, ms = [], [], []
    for path, group in boxes.groupby("path", sort=True):
        rgb = read_image(path)
        start = time.perf_counter()
        faces = detector.detect(rgb)
        ms.append((time.perf_counter() - start) * 1000)
        truth = list(group["box"])
        for face, k in zip(faces, match_faces(truth, [f.box for f in faces])):
            big = k >= 0 and bool(group["big"].iloc[k])
            records.append({"score": face.score, "tp": big, "ignored": k >= 0 and not big})
            if big:
                pairs.append((truth[k], face.box))
    n_big = int(boxes["big"].sum())
    curve = []
    for t in np.round(np.arange(0.3, 0.96, 0.05), 2):
        kept = [r for r in records if r["score"] >= t and not r["ignored"]]
        tp = sum(r["tp"] for r in kept)
        curve.append({"threshold": float(t), "recall": round(tp / n_big, 4),
                      "precision": round(tp / max(1, len(kept)), 4), "detections": len(kept)})
    return {"detector": detector.path.name, "upscale": upscale,
            "photos": boxes["path"].nunique(), "faces": len(boxes), "faces_24px": n_big,
            "median_ms_per_photo": round(float(np.median(ms)), 2), "curve": curve,
            "best": best_threshold(curve), "box_convention": convention(pairs)}, pairs


def best_threshold(curve: list[dict]) -> dict:
    """The operating point the curve picks: the threshold of the highest detection F1 (recall
    and precision weighed alike; a tie goes to the higher threshold)."""
    def f1(c: dict) -> float:
        return 2 * c["recall"] * c["precision"] / max(c["recall"] + c["precision"], 1e-9)
    best = max(curve, key=lambda c: (round(f1(c), 4), c["threshold"]))
    return {**best, "f1": round(f1(best), 4)}


def convention(pairs: list[tuple]) -> dict:
    """How the detector's box relates to the annotators' (medians over matched faces): centre
    shift in annotated widths/heights, and size ratio."""
    t, d = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    return {"dx": float(np.median((d[:, 0] + d[:, 2] / 2 - t[:, 0] - t[:, 2] / 2) / t[:, 2])),
            "dy": float(np.median((d[:, 1] + d[:, 3] / 2 - t[:, 1] - t[:, 3] / 2) / t[:, 3])),
            "sw": float(np.median(d[:, 2] / t[:, 2])), "sh": float(np.median(d[:, 3] / t[:, 3]))}


def as_detected(box: tuple, c: dict) -> Face:
    x, y, w, h = box
    cx, cy = x + w / 2 + c["dx"] * w, y + h / 2 + c["dy"] * h
    dw, dh = w * c["sw"], h * c["sh"]
    return Face((cx - dw / 2, cy - dh / 2, dw, dh), 1.0)


def f1_row(truth, pred) -> dict:
    s = scores(np.asarray(truth), np.asarray(pred), len(MASKS))
    return {"macro_f1": round(s["macro_f1"], 4), "faces": len(truth),
            "missed": int((np.asarray(pred) < 0).sum()),
            "per_class_f1": {c: round(f, 4) for c, f in zip(MASKS, s["per_class_f1"])}}


def photo_to_mask(boxes: pd.DataFrame, models: Path, work: Path, conv: dict) -> dict:
    """(a) facet predict --faces all on the photos; (b) the oracle crops of the annotated boxes."""
    held = boxes[boxes["held_out"] & boxes["big"]]
    photos = sorted(boxes.loc[boxes["held_out"], "path"].unique())
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": photos}).to_csv(work / "photos.csv", index=False)
    facet("predict", work / "photos.csv", "--models", models, "--out", work / "answers.csv",
          "--faces", "all", "--details", work / "faces.csv")
    found = pd.read_csv(work / "faces.csv")
    found = found[found["face"] >= 0]
    detections = {path: [(tuple(r[:4]), int(r[4]) // 6) for r in group[
                      ["face_x", "face_y", "face_w", "face_h", "label"]].to_numpy()]
                  for path, group in found.groupby("path", sort=False)}
    competing = boxes[boxes["path"].isin(held["path"])]
    detected = score_photo_faces(competing, detections, scored=competing.index.isin(held.index))
    truth = np.concatenate([g["label"].to_numpy() for _, g in held.groupby("path", sort=False)])

    predictor = Predictor(models)
    oracle = []
    for path, group in held.groupby("path", sort=False):
        rgb = read_image(path)
        inputs = [{s: cut_face(rgb, as_detected(box, conv), s) for s in predictor.distinct_specs}
                  for box in group["box"]]
        oracle += list(predictor.predict(Predictor.stack(inputs)).attributes["mask"].argmax(1))
    return {"photos": len(photos), "detected": detected, "oracle": f1_row(truth, oracle)}


def mask_model_table(shared: Path, models: Path, runs: Path) -> list[dict]:
    meta = json.loads((runs / "mask" / "best.json").read_text())
    from types import SimpleNamespace
    predictor = Predictor(models)
    row = {"step": "mixed sources, crop=face", "sets": {}}
    for name, frame in eval_sets(shared, SimpleNamespace(**meta["recipe"])).items():
        if name == "maskon val":
            continue
        out = predict_paths(predictor, [Path(p) for p in frame["path"]], progress=False)
        row["sets"][name] = f1_row(frame["label"].to_numpy(), out.attributes["mask"].argmax(1))
        row["sets"][name]["no_face_found"] = sum(f is False for f in out.face_found)
    earlier = Path("benchmarks/results/mask_real.json")
    rows = []
    if earlier.exists():  # the crop=none models, same splits
        for r in json.loads(earlier.read_text())[:3:2]:
            rows.append({"step": r["step"] + ", crop=none", "sets": {
                k: v for k, v in r["sets"].items() if k != "maskon val"}})
    return rows + [row]


def speed(models: Path, baseline: Path, sets: dict[str, list[Path]], rounds: int) -> dict:
    """Photos/s of predict_paths: crop=face with the detector on onnxruntime and on OpenCV, and
    the crop=none models, interleaved per round; and the detector alone on decoded photos."""
    engines = {e: YuNet(engine=e) for e in ("onnxruntime", "opencv")}
    predictors = {f"crop=face, {e}": Predictor(models, face_detector=d) for e, d in engines.items()}
    predictors["crop=none"] = Predictor(baseline)
    out = {}
    for name, paths in sets.items():
        times = {k: [] for k in predictors}
        for _ in range(rounds):
            for k, predictor in predictors.items():
                start = time.perf_counter()
                predict_paths(predictor, paths, progress=False)
                times[k].append(time.perf_counter() - start)
        decoded = [read_image(p) for p in paths]
        row = {"images": len(paths), **{f"{k} photos/s": round(len(paths) / float(np.median(v)), 1)
                                        for k, v in times.items()}}
        for engine, detector in engines.items():
            start = time.perf_counter()
            for rgb in decoded:
                detector.detect(rgb)
            detect_s = time.perf_counter() - start
            row[f"{engine} detector ms/photo"] = round(1000 * detect_s / len(paths), 2)
            row[f"{engine} detector share"] = round(
                detect_s / float(np.median(times[f"crop=face, {engine}"])), 3)
        row["crop=face / crop=none"] = round(float(np.median(times["crop=none"])) / float(
            np.median(times["crop=face, onnxruntime"])), 3)
        out[name] = row
        print(name, row, flush=True)
    return out


def plot(runs: list[dict], chosen: float, path: Path) -> None:
    """Every detection run's PR curve, its operating point at ``chosen`` starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for run, colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        curve = [c for c in run["curve"] if c["detections"]]  # nothing passes: no precision
        ax.plot([c["recall"] for c in curve], [c["precision"] for c in curve],
                "o-" if run["upscale"] == 1 else "s--", ms=3, color=colour,
                label=f"{run['detector']}, x{run['upscale']:g} ({run['median_ms_per_photo']:.0f} ms/photo)")
        for c in curve:
            if c["threshold"] == chosen:
                ax.plot(c["recall"], c["precision"], "*", ms=11, color=colour)
            ax.annotate(f"{c['threshold']:g}", (c["recall"], c["precision"]), fontsize=5,
                        xytext=(3, 3), textcoords="offset points", color=colour)
    ax.axvline(0.95, color="gray", ls=":", lw=1)
    ax.axhline(0.90, color="gray", ls=":", lw=1)
    ax.set(xlabel="recall (faces >= 24 px)", ylabel="precision",
           title=f"YuNet on realphotos (IoU >= 0.4; stars: threshold {chosen:g})")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def detection_only(boxes: pd.DataFrame, out: Path, upscale: float,
                   detectors: list[Path]) -> None:
    """The detection curves of each detector file, as photos come and enlarged ``upscale``
    times, into an existing faces.json, and one PR plot of them all."""
    result = json.loads(out.read_text()) if out.exists() else {}
    result["detectors"] = [detection(boxes, u, d)[0] for d in [None, *detectors]
                           for u in (1.0, upscale)]
    result["detection"] = result["detectors"][0]  # the shipped file as photos come
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result["detectors"], FACE_SCORE, out.with_name("faces_pr.png"))
    for d in result["detectors"]:
        print(f"{d['detector']} x{d['upscale']:g}: {d['median_ms_per_photo']} ms/photo, best "
              f"threshold {d['best']['threshold']} (recall {d['best']['recall']}, precision "
              f"{d['best']['precision']}, F1 {d['best']['f1']}); at {FACE_SCORE}: "
              + next(f"recall {c['recall']}, precision {c['precision']}" for c in d["curve"]
                     if c["threshold"] == FACE_SCORE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=Path("runs/faces"))
    p.add_argument("--models", type=Path, default=Path("artifacts/faces"))
    p.add_argument("--baseline", type=Path, default=Path("artifacts/quick"), help="crop=none models.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=2100, help="maskfaces eval images timed.")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/faces.json"))
    p.add_argument("--upscale", type=float, default=1.5, help="The enlarged detection curve.")
    p.add_argument("--only-detection", action="store_true",
                   help="Only the detection curves (no training, no models).")
    p.add_argument("--detector", type=Path, action="append", default=[],
                   help="Another YuNet file whose curves join the shipped one's (repeatable).")
    args = p.parse_args()
    boxes = load_boxes(args.shared)
    if args.only_detection:
        return detection_only(boxes, args.out, args.upscale, args.detector)
    train_and_export(args.shared, args.runs, args.models)
    detect, _ = detection(boxes)
    print(json.dumps(detect), flush=True)
    meta = json.loads((args.runs / "mask" / "best.json").read_text())
    from types import SimpleNamespace
    held = eval_sets(args.shared, SimpleNamespace(**meta["recipe"]))["realmasks val"]
    labels = pd.read_csv(args.shared / "realmasks/labels.csv")
    held_photos = set(labels.loc[labels["path"].isin(
        [str(Path(x).relative_to(args.shared / "realmasks")) for x in held["path"]]), "photo"])
    boxes["held_out"] = boxes["photo"].isin(held_photos)
    result = {"detection": detect,
              "photo_to_mask": photo_to_mask(boxes, args.models, Path("runs/faces_bench"),
                                             detect["box_convention"]),
              "mask_model": mask_model_table(args.shared, args.models, args.runs)}
    print(json.dumps(result["photo_to_mask"]), flush=True)
    photos = sorted(Path(x) for x in boxes["path"].unique())
    eval_images = sorted((args.shared / "maskfaces/eval/images").glob("*.jpg"))[:args.eval_images]
    result["speed"] = speed(args.models, args.baseline,
                            {"realphotos": photos, "maskfaces eval": eval_images}, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    detection_only(boxes, args.out, args.upscale, args.detector)


if __name__ == "__main__":
    main()
