"""What `facet predict` writes: the submission (the inputs with their answer), the details (a
line per row, or per face with ``--faces all``) and the errors, from a ``BatchResult``, the
same for the local and the Ray engine.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, class_names
from facet.faces import Face

from .inputs import Inputs
from .results import BatchResult

ANSWER = "ans"  # the submission's answer column, as the competition names it


def submission(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    """The input rows with the answer column filled; failed rows are left empty, never guessed."""
    out = inputs.frame.copy()
    out[ANSWER] = [str(v) if v >= 0 else "" for v in result.labels]
    return out


def details(inputs: Inputs, result: BatchResult, faces: bool | None = None) -> pd.DataFrame:
    """One line per row: its answer, probabilities, primary face (when faces are detected, or
    when ``faces`` says so: the columns of a part of the rows must not depend on its rows)
    and error."""
    out = pd.DataFrame({"path": [str(p) for p in inputs.paths]})
    if faces if faces is not None else any(found is not None for found in result.face_found):
        out["face_found"] = [_flag(found) for found in result.face_found]
        out = pd.concat([out, _face_columns(result.primary)], axis=1)
    out = pd.concat([out, _answers(result.labels, result.probs, result.attributes)], axis=1)
    out["error"] = ""
    for i, _, message in result.errors:
        out.loc[i, "error"] = message
    return out


def face_details(inputs: Inputs, result: BatchResult) -> pd.DataFrame:
    """One line per answered face (``face`` -1: no face found, the fallback region answered),
    and one per failed row with its error (``face`` empty: it has none)."""
    answers = sorted(result.faces, key=lambda f: (f.row, f.index))
    rows = [f.row for f in answers]
    out = pd.DataFrame({"path": [str(inputs.paths[i]) for i in rows],
                        "face": [f.index for f in answers],
                        "primary": [_flag(f.primary) for f in answers],
                        "face_found": [_flag(result.face_found[i]) for i in rows]})
    probs = np.array([f.probs for f in answers], np.float32).reshape(len(answers), len(class_names()))
    attributes = {a: np.array([f.attributes[a] for f in answers], np.float32).reshape(len(answers), len(c))
                  for a, c in ATTRIBUTES.items()}
    errors = [f.error for f in answers]  # a face the models answered NaN: no label
    labels = np.where([bool(e) for e in errors], -1, np.nan_to_num(probs).argmax(1)).astype(int)
    out = pd.concat([out, _face_columns([f.face for f in answers], landmarks=True),
                     _answers(labels, probs, attributes)], axis=1)
    out["error"] = errors
    failed = pd.DataFrame({"path": [p for _, p, _ in result.errors], "face": "",  # no face
                           "error": [m for _, _, m in result.errors]})
    order = rows + [i for i, _, _ in result.errors]
    merged = pd.concat([out, failed], ignore_index=True) if len(failed) else out
    return merged.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _flag(found: bool | None) -> str:
    """Booleans as JSON spells them (true/false), in every CSV; empty: not applicable."""
    return "" if found is None else str(bool(found)).lower()


def _face_columns(faces: list[Face | None], landmarks: bool = False) -> pd.DataFrame:
    """Box (x, y, w, h in the photo's pixels), detector score and, optionally, the five
    landmarks; empty where there is no face."""
    names = ["face_x", "face_y", "face_w", "face_h", "face_score"]
    values = [[*f.box, f.score] if f else [np.nan] * 5 for f in faces]
    if landmarks:
        names += [f"{p}_{c}" for p in ("right_eye", "left_eye", "nose", "mouth_right",
                                       "mouth_left") for c in "xy"]
        values = [v + ([c for point in f.landmarks for c in point]
                       if f and len(f.landmarks) == 5 else [np.nan] * 10)
                  for v, f in zip(values, faces)]
    return pd.DataFrame(np.array(values, np.float64).reshape(len(faces), len(names)),
                        columns=names).round(2)


def _answers(labels: np.ndarray, probs: np.ndarray, attributes: dict[str, np.ndarray]
             ) -> pd.DataFrame:
    names = class_names()
    ok = labels >= 0
    out = pd.DataFrame({"label": np.where(ok, labels, -1)})
    out["class"] = [names[v] if v >= 0 else "" for v in labels]
    out["confidence"] = np.where(ok, probs[np.arange(len(ok)), labels.clip(0)], np.nan)
    for a, classes in ATTRIBUTES.items():
        p = attributes[a]
        out[a] = [classes[int(row.argmax())] if good else "" for row, good in zip(p, ok)]
        for k, c in enumerate(classes):
            out[f"p_{a}_{c}"] = p[:, k].round(6)
    return out


def errors_frame(errors: list[tuple[int, str, str]]) -> pd.DataFrame:
    """One line per failed image (``BatchResult.errors``); ``row`` counts data rows from 1, as
    a spreadsheet shows them."""
    return pd.DataFrame([(i + 1, p, m) for i, p, m in errors], columns=["row", "path", "error"])
