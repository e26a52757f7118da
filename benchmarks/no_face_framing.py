"""Face crops where the detector finds no face: how the shipped mask model answers them when they
are framed as today (the whole image stretched to the input), as one face filling the image (the
crop rule with the image as the face box), or always so (no detection at all). Inference only:
it says whether the framing alone helps the models as trained.

    python -m benchmarks.no_face_framing --shared ../shared/data
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet import shipped
from facet.combine import MASK
from facet.faces import Face, crop_box, cut
from facet.metrics import macro_f1_counts
from facet.preprocess import read_image, resize
from facet.serve.options import AnswerOptions
from facet.serve.predictor import Predictor

RESULTS = Path(__file__).parent / "results"


def framings(rgb: np.ndarray, faces: list[Face], spec) -> dict[str, np.ndarray]:
    height, width = rgb.shape[:2]
    left, top, side = crop_box(Face((0, 0, width, height), 1.0), spec.margin)
    as_face = resize(cut(rgb, left, top, side, side), spec)
    stretched = resize(rgb, spec)
    if not faces:
        return {"detected, else stretched (today)": stretched,
                "detected, else framed as a face": as_face, "always framed as a face": as_face}
    largest = max(faces, key=lambda f: f.box[2] * f.box[3])
    left, top, side = crop_box(largest, spec.margin)
    detected = resize(cut(rgb, left, top, side, side), spec)
    return {"detected, else stretched (today)": detected,
            "detected, else framed as a face": detected, "always framed as a face": as_face}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    args = parser.parse_args()
    root = args.shared / "realmasks"
    labels = pd.read_csv(root / "labels.csv")
    truth = labels["mask"].map({m: i for i, m in enumerate(MASK)}).to_numpy()
    predictor = Predictor(shipped.resolve(None)[0])
    spec = predictor.distinct_specs[0]  # the shipped set: one spec (128 px, crop=face x2.0)
    detector = AnswerOptions().face_detector()  # as `facet predict` finds faces
    found, inputs = [], {}
    for path in labels["path"]:
        rgb = read_image(root / path)
        faces = detector.detect(rgb)
        found.append(bool(faces))
        for name, image in framings(rgb, faces, spec).items():
            inputs.setdefault(name, []).append(image)
    found = np.array(found)
    result = {"crops": len(labels), "no_face_found": int((~found).sum())}
    for name, images in inputs.items():
        batch = np.stack(images)
        pred = predictor.predict({s: batch for s in predictor.distinct_specs}
                                 ).attributes["mask"].argmax(1)
        result[name] = {part: round(macro_f1_counts(truth[rows], pred[rows], 3), 4)
                        for part, rows in (("all", slice(None)), ("no face found", ~found),
                                           ("face found", found))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "no_face_framing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
