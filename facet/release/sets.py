"""The benchmark sets a release is chosen and scored on, written as manifests (paths absolute)
into RUNS/sets: maskfaces eval, the held-out street crops and photos, the val split each gender
and age run makes of every real-face source (the rows no run of that attribute trained on), and
aaf's gender val images with a mask drawn on each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet.manifest import read_manifest

from .plan import REAL_FACES, read_boxes, val_rows

MASKED = "aaf val, masks drawn (gender)"
MASK_SEED = 42  # the drawn masks'


def _csv_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") + ".csv"


def source_val(data: Path, source: str, attribute: str) -> pd.DataFrame:
    """``source``'s rows a run of ``attribute`` validates on: path, the attribute's label (age:
    years) and ``age_years`` (real age, for the age bands; not a label), with the CSV's own
    group columns (utkextra's race) joined on the path."""
    csv = data / source / "labels.csv"
    val = val_rows(read_manifest(csv, group="group").frame, attribute)
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw["path"] = [str(csv.parent / p) for p in raw["path"]]
    extra = [c for c in ("race",) if c in raw.columns]
    val = val.merge(raw[["path", *extra]], on="path", how="left")
    out = pd.DataFrame({"path": [str(Path(p).resolve()) for p in val["path"]]})
    out[attribute] = val["age_years"] if attribute == "age" else val[attribute]
    out["age_years"] = val["age_years"]
    for c in extra:
        out[c] = val[c]
    return out


def masked_set(frame: pd.DataFrame, folder: Path, seed: int = MASK_SEED) -> tuple[pd.DataFrame, int]:
    """``frame``'s images with a mask drawn over the largest face each (YuNet's landmarks),
    JPEGs in ``folder``; (the new set, how many images had no face found and were left out)."""
    import cv2
    from facet.faces import default_detector
    from facet.models.occlusion import occlude
    from facet.preprocess import read_image
    folder.mkdir(parents=True, exist_ok=True)
    detector, rng = default_detector(), np.random.default_rng(seed)
    kept, skipped = [], 0
    for i, row in enumerate(frame.itertuples(index=False)):
        rgb = read_image(row.path)
        faces = detector.detect(rgb)
        if not faces:
            skipped += 1
            continue
        face = max(faces, key=lambda f: f.box[2] * f.box[3])
        drawn = occlude(rgb, np.array(face.landmarks, np.float32), rng)
        out = folder / f"{i:05d}_{Path(row.path).stem}.jpg"
        cv2.imwrite(str(out), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        kept.append({**row._asdict(), "path": str(out.resolve())})
    return pd.DataFrame(kept, columns=frame.columns), skipped


def write_sets(data: Path, runs: Path, held: set[str]) -> tuple[list[str], list[str], dict]:
    """The sets as `facet build-set` specs: (--eval NAME=CSV ..., --photos NAME=CSV ...,
    what was written: rows per set, the masked set's images without a face)."""
    folder = runs / "sets"
    folder.mkdir(parents=True, exist_ok=True)
    sets: dict[str, pd.DataFrame] = {}
    answers = pd.read_csv(data / "maskfaces/eval/answers.csv")
    sets["maskfaces eval"] = pd.DataFrame({
        "path": [str((data / "maskfaces/eval/images" / i).resolve()) for i in answers["ImageID"]],
        "mask": answers["mask"], "gender": answers["gender"], "age_group": answers["age"]})
    realmasks = read_manifest(data / "realmasks/labels.csv", group="photo").frame
    crops = realmasks[realmasks["person"].isin(held)]
    sets["realmasks val"] = pd.DataFrame({"path": [str(Path(p).resolve()) for p in crops["path"]],
                                          "mask": crops["mask"].to_numpy()})
    for attribute in ("gender", "age"):
        for source in REAL_FACES:
            sets[f"{source} val ({attribute})"] = source_val(data, source, attribute)
    record = {"sets": {}}
    masked_csv = folder / _csv_name(MASKED)
    info = folder / "aaf_masked.json"
    if masked_csv.exists() and info.exists():
        record["masked"] = json.loads(info.read_text())
    else:
        masked, skipped = masked_set(sets["aaf val (gender)"], folder / "aaf_masked")
        masked.to_csv(masked_csv, index=False)
        record["masked"] = {"images": len(masked), "no_face_found": skipped, "seed": MASK_SEED}
        info.write_text(json.dumps(record["masked"]))
    evals = []
    for name, frame in sets.items():
        csv = folder / _csv_name(name)
        frame.to_csv(csv, index=False)
        evals.append(f"{name}={csv}")
        record["sets"][name] = len(frame)
    if record["masked"]["images"]:  # no face found in any image: no such set
        evals.append(f"{MASKED}={masked_csv}")
        record["sets"][MASKED] = record["masked"]["images"]
    boxes = read_boxes(data)
    scored = boxes.loc[boxes["photo"].isin(held) & boxes["big"], "path"]  # a face to score
    faces = boxes[boxes["path"].isin(scored)]
    x, y, w, h = (np.array([b[k] for b in faces["box"]]) for k in range(4))
    photos_csv = folder / "realphotos_held_out.csv"
    pd.DataFrame({"path": faces["path"], "x0": x, "y0": y, "x1": x + w, "y1": y + h,
                  "mask": faces["mask"]}).to_csv(photos_csv, index=False)
    record["sets"]["realphotos held-out photos"] = len(faces)
    return evals, [f"realphotos held-out photos={photos_csv}"], record
