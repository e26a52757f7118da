"""Face crops, framed three ways, on the held-out street crops (realmasks' crops of the photos no
shipped model trains on): the largest face found, else the whole image stretched to the input
(the fallback of models trained before `frame`); the face found, else the image framed as one
face filling it (the crop rule with the image as the face box: `frame`, the default); and
always framed so, no detection at all. Mask macro-F1 with 95% bootstrap intervals (whole photos
resampled; the same draws for every row), for every model folder given, on all crops and on
those with / without a face found.

    python -m benchmarks.no_face_framing --shared ../shared/data \
        --models new=facet/assets/models --models previous=/tmp/previous_set
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from facet import shipped
from facet.combine import MASK
from facet.faces import Face, image_face
from facet.metrics import f1_interval, macro_f1_counts
from facet.preprocess import PreprocessSpec, cut_face, read_image, resize
from facet.release.plan import held_out_photos
from facet.serve.options import AnswerOptions
from facet.serve.predictor import Predictor

RESULTS = Path(__file__).parent / "results"
FRAMINGS = ("found, else stretched", "found, else framed (frame)", "always framed")


def framings(rgb: np.ndarray, faces: list[Face], spec: PreprocessSpec) -> list[np.ndarray]:
    """The crop's input under each of :data:`FRAMINGS`."""
    framed = cut_face(rgb, image_face(rgb.shape[1], rgb.shape[0]), spec)
    if not faces:
        return [resize(rgb, spec), framed, framed]
    found = cut_face(rgb, max(faces, key=lambda f: f.box[2] * f.box[3]), spec)
    return [found, found, framed]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    parser.add_argument("--models", action="append", default=[], metavar="NAME=DIR",
                        help="model folders (crop=face); default: the shipped set")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    root = args.shared / "realmasks"
    labels = pd.read_csv(root / "labels.csv")
    labels = labels[labels["photo"].isin(held_out_photos(args.shared))].reset_index(drop=True)
    truth = labels["mask"].map({m: i for i, m in enumerate(MASK)}).to_numpy()
    detector = AnswerOptions().face_detector()  # as `facet predict` finds faces
    images = [read_image(root / p) for p in labels["path"]]
    faces = [detector.detect(rgb) for rgb in images]
    found = np.array([bool(f) for f in faces])
    result = {"crops": len(labels), "photos": int(labels["photo"].nunique()),
              "no_face_found": int((~found).sum())}
    folders = dict(m.split("=", 1) for m in args.models) or {"shipped": shipped.resolve(None)[0]}
    for name, folder in folders.items():
        predictor = Predictor(Path(folder))
        spec = predictor.distinct_specs[0]
        inputs = list(zip(*(framings(rgb, f, spec) for rgb, f in zip(images, faces))))
        result[name] = {}
        for framing, batch in zip(FRAMINGS, inputs):
            pred = predictor.predict({s: np.stack(batch) for s in predictor.distinct_specs}
                                     ).attributes["mask"].argmax(1)
            result[name][framing] = {
                part: {"macro_f1": round(macro_f1_counts(truth[rows], pred[rows], 3), 4),
                       "ci": f1_interval(truth[rows], pred[rows], 3, np.random.default_rng(0),
                                         args.resamples,
                                         clusters=labels["photo"].to_numpy()[rows])}
                for part, rows in (("all", np.ones(len(found), bool)), ("no face found", ~found),
                                   ("face found", found))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "no_face_framing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
