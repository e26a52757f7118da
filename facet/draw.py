"""Photos with what the system saw drawn on them: each answered face's box, class and confidence.

Faces answered with low confidence are drawn in orange with a thin box, confident ones in
green; a photo answered without a face gets its label in the top-left corner, saying whether
no face was found or the models (crop=none) never looked for one. Numpy, OpenCV and Pillow only.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facet.combine import class_names
from facet.faces import Face
from facet.preprocess import DEFAULT_RULES, ImageError, ImageRules, read_image
from facet.progress import progress_bar

LOW_CONFIDENCE = 0.5
WHOLE_IMAGE = "whole image, no face search: "
_SURE, _UNSURE, _NOFACE = (40, 200, 60), (255, 150, 0), (220, 40, 40)


def draw_faces(rgb: np.ndarray, answers: list[tuple[Face | None, int, float]],
               searched: bool = True) -> np.ndarray:
    """``answers``: (face or None, 18-class label, confidence); ``searched``: whether faces
    were looked for (False: the models take the whole image as one face). Returns a drawn copy."""
    out = np.ascontiguousarray(rgb.copy())
    scale = max(0.35, min(out.shape[:2]) / 900)
    names = class_names()
    for face, label, confidence in answers:
        text = f"{names[label]} {confidence:.2f}"
        if face is None:
            _label(out, ("no face: " if searched else WHOLE_IMAGE) + text, 2, 2, _NOFACE, scale)
            continue
        colour = _SURE if confidence >= LOW_CONFIDENCE else _UNSURE
        x, y, w, h = (round(v) for v in face.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour,
                      max(1, round(3 * scale)) if confidence >= LOW_CONFIDENCE else 1)
        _label(out, text, x, y, colour, scale)
    return out


def _label(image: np.ndarray, text: str, x: int, y: int, colour, scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    top = max(0, y - th - base - 2)
    cv2.rectangle(image, (x, top), (x + tw + 2, top + th + base + 2), colour, -1)
    cv2.putText(image, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)


def draw_results(paths: list[Path], result, out_dir: Path,
                 rules: ImageRules = DEFAULT_RULES) -> int:
    """Draw every answered row of a ``serve.results.BatchResult`` into ``out_dir`` as JPEG
    (``<name>.jpg``; the row number is added when two rows share a name). Returns the count."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_row: dict[int, list] = {}
    for f in result.faces:  # every face, when all faces were answered
        per_row.setdefault(f.row, []).append((f.face, int(f.probs.argmax()),
                                              float(f.probs.max())))
    used, drawn = set(), 0
    for i in progress_bar(np.flatnonzero(result.labels >= 0), unit="photo", desc="drawing",
                          leave=False):
        answers = per_row.get(i) or [(result.primary[i], int(result.labels[i]),
                                      float(result.probs[i, result.labels[i]]))]
        try:
            rgb = read_image(paths[i], rules)
        except (ImageError, OSError):  # changed since it was predicted
            continue
        name = Path(paths[i]).stem
        name = f"{name}.{i + 1}" if name in used else name
        used.add(name)
        cv2.imwrite(str(out_dir / f"{name}.jpg"),
                    draw_faces(rgb, answers, result.face_found[i] is not None)[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        drawn += 1
    return drawn
