"""A small synthetic dataset in the competition layout, for the demo and the tests.

Cartoon faces drawn with OpenCV in seconds: hair length carries gender, hair colour and
wrinkles carry age, a drawn rectangle over nose and mouth (or mouth only) carries the mask.
It exercises every code path; it says nothing about accuracy on real photos.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from facet.combine import MASK_BY_STEM, TRUE_AGE_RULE, encode

RACES = ("White", "Black", "Asian", "Indian", "Other")
SKIN = {"White": (225, 195, 175), "Black": (95, 65, 50), "Asian": (230, 200, 160),
        "Indian": (170, 120, 90), "Other": (200, 160, 130)}
MASK_COLOURS = ((235, 235, 240), (60, 110, 200), (30, 30, 30), (210, 80, 80), (90, 170, 90))
AGE_RANGES = ((10, 28), (32, 57), (62, 85))


def draw_face(rng: np.random.Generator, gender: int, age: int, race: str, mask: int,
              style: int, size: int = 96) -> np.ndarray:
    """One RGB uint8 face; mask 0 worn, 1 worn wrongly (nose out), 2 none."""
    s = size / 96.0
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(40, 215, 3)
    cx, cy = size // 2 + int(rng.integers(-4, 5) * s), size // 2 + int(rng.integers(-3, 4) * s)
    old = age >= 60
    hair = (200, 200, 205) if old else ((95, 80, 70) if age >= 30 else (45, 30, 20))
    hair = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in hair)
    if gender == 1:  # long hair behind the face, down to the shoulders
        cv2.rectangle(img, (cx - int(30 * s), cy - int(28 * s)), (cx + int(30 * s), size), hair, -1)
    skin = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in SKIN[race])
    cv2.ellipse(img, (cx, cy), (int(24 * s), int(31 * s)), 0, 0, 360, skin, -1)
    cv2.ellipse(img, (cx, cy - int(22 * s)), (int(25 * s), int(13 * s)), 0, 180, 360, hair, -1)
    for dx in (-10, 10):
        cv2.circle(img, (cx + int(dx * s), cy - int(6 * s)), max(1, int(3 * s)), (20, 20, 20), -1)
    if age >= 30:  # wrinkles: more with age
        for k in range(1 + 2 * old):
            y = cy - int((15 - 3 * k) * s)
            cv2.line(img, (cx - int(10 * s), y), (cx + int(10 * s), y), (120, 90, 80), 1)
    cv2.line(img, (cx, cy - int(2 * s)), (cx - int(3 * s), cy + int(6 * s)), (140, 90, 80), 1)
    cv2.line(img, (cx - int(8 * s), cy + int(15 * s)), (cx + int(8 * s), cy + int(15 * s)),
             (150, 50, 60), max(1, int(2 * s)))
    if mask < 2:
        top = cy + int((1 if mask == 0 else 10) * s)
        cv2.rectangle(img, (cx - int(22 * s), top), (cx + int(22 * s), cy + int(26 * s)),
                      MASK_COLOURS[style % len(MASK_COLOURS)], -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _person(rng: np.random.Generator, pid: int):
    gender = int(rng.integers(0, 2))
    group = int(rng.choice(3, p=(0.45, 0.4, 0.15)))
    age = int(rng.integers(*AGE_RANGES[group], endpoint=True))
    race = RACES[int(rng.integers(len(RACES)))]
    return f"{pid:06d}", gender, age, race


def _write(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    path.write_bytes(buf.tobytes())


def make_dataset(root: str | Path, persons: int = 60, eval_persons: int = 20, size: int = 96,
                 seed: int = 0) -> Path:
    """Write ``root/train`` (images/<id>_<gender>_<race>_<age>/*.jpg, train.csv) and
    ``root/eval`` (images/*.jpg, info.csv with ans=0, answers.csv with the truth)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    gender_names = ("male", "female")
    train_rows = []
    for i in range(persons):
        pid, gender, age, race = _person(rng, i + 1)
        folder = f"{pid}_{gender_names[gender]}_{race}_{age}"
        d = root / "train" / "images" / folder
        d.mkdir(parents=True, exist_ok=True)
        for k, (stem, mask) in enumerate(MASK_BY_STEM.items()):
            _write(d / f"{stem}.jpg", draw_face(rng, gender, age, race, mask, k, size))
        train_rows.append((pid, gender_names[gender], race, age, folder))
    pd.DataFrame(train_rows, columns=["id", "gender", "race", "age", "path"]).to_csv(
        root / "train" / "train.csv", index=False)
    answers = []
    (root / "eval" / "images").mkdir(parents=True, exist_ok=True)
    for i in range(eval_persons):
        pid, gender, age, race = _person(rng, persons + i + 1)
        for k, (stem, mask) in enumerate(MASK_BY_STEM.items()):
            name = hashlib.sha1(f"{seed}/{pid}/{stem}".encode()).hexdigest() + ".jpg"
            _write(root / "eval" / "images" / name, draw_face(rng, gender, age, race, mask, k, size))
            group = TRUE_AGE_RULE.group(age)
            answers.append((name, encode(mask, gender, group), mask, gender, group, pid))
    answers = pd.DataFrame(answers, columns=["ImageID", "ans", "mask", "gender", "age", "person"])
    answers = answers.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    answers.to_csv(root / "eval" / "answers.csv", index=False)
    answers[["ImageID"]].assign(ans=0).to_csv(root / "eval" / "info.csv", index=False)
    return root
