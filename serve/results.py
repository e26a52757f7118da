"""What answering gives back: per row the primary face's answer, per face with ``every``, and
the rows that failed; one collector fills it for every front end (the local batch loop, the
Ray actors and parts, the HTTP service), so each returns the same result for the same rows,
and a NaN answer is an error in each."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facet.combine import ATTRIBUTES, class_names
from facet.faces import Face

NAN_ANSWER = "the models answered NaN (try the fp32 variant)"  # e.g. an fp16 overflow


@dataclass
class FaceAnswer:
    """One answered face of a row's photo (``index`` -1: the fallback region, no face found);
    ``error`` when the models could not answer it."""

    row: int
    index: int
    face: Face | None
    primary: bool
    attributes: dict[str, np.ndarray]  # name -> (k,)
    probs: np.ndarray  # (18,)
    error: str = ""

    def __post_init__(self):
        if not self.error and np.isnan(self.probs).any():
            self.error = NAN_ANSWER


@dataclass
class BatchResult:
    labels: np.ndarray  # (N,) int, -1 where the image failed
    attributes: dict[str, np.ndarray]  # name -> (N, k), NaN rows for failures
    probs: np.ndarray  # (N, 18)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (row, path, message)
    face_found: list[bool | None] = field(default_factory=list)  # None: no detection ran
    primary: list[Face | None] = field(default_factory=list)  # the face that answers the row
    faces: list[FaceAnswer] = field(default_factory=list)  # every face, with ``every``

    def row(self, i: int) -> dict:
        """Answered row ``i`` as plain JSON-able data (the HTTP service's answer)."""
        label = int(self.labels[i])
        return {
            "label": label, "class": class_names()[label],
            "confidence": float(self.probs[i, label]),
            "attributes": {
                a: {"label": ATTRIBUTES[a][int(p[i].argmax())], "code": int(p[i].argmax()),
                    "probs": {c: round(float(v), 6) for c, v in zip(ATTRIBUTES[a], p[i])}}
                for a, p in self.attributes.items()},
        }


class Collector:
    """The answers of ``n`` rows as they come in, in any order and any number of times (a
    retried Ray task): NaN probabilities and label -1 until a row is answered."""

    def __init__(self, n: int):
        self.probs = np.full((n, len(class_names())), np.nan, np.float32)
        self.attributes = {a: np.full((n, len(c)), np.nan, np.float32)
                           for a, c in ATTRIBUTES.items()}
        self.errors: dict[int, str] = {}
        self.face_found: list[bool | None] = [None] * n  # None: no detection ran
        self.primary: list[Face | None] = [None] * n
        self.faces: list[FaceAnswer] = []

    def put(self, rows, attributes: dict[str, np.ndarray], probs: np.ndarray,
            face_found: list | None = None, primary: list | None = None) -> None:
        """Rows' answers (``attributes`` and ``probs`` in the rows' order), with whether a
        face was found and the face that answers each row."""
        rows = np.asarray(rows, np.int64)
        self.probs[rows] = probs
        for a, p in self.attributes.items():
            p[rows] = attributes[a]
        broken = np.isnan(probs).any(1)
        for j, row in enumerate(rows.tolist()):
            if broken[j]:
                self.errors[row] = NAN_ANSWER
            else:
                self.errors.pop(row, None)
            if face_found is not None:
                self.face_found[row], self.primary[row] = face_found[j], primary[j]

    def fail(self, row: int, message: str) -> None:
        self.errors[row] = message

    def result(self, paths: list) -> BatchResult:
        answered = ~np.isnan(self.probs).any(1)
        labels = np.where(answered, np.nan_to_num(self.probs).argmax(1), -1)
        return BatchResult(labels, self.attributes, self.probs,
                           [(i, str(paths[i]), m) for i, m in sorted(self.errors.items())],
                           self.face_found, self.primary, self.faces)
