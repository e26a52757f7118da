"""Manifests: CSV files of training images and their labels, read by `facet train --manifest`
and written by `facet pseudo-label`; the one place their columns are spelled.

A manifest has ``path`` and any of ``mask``, ``gender``, ``age`` (years) or ``age_group``
(:data:`LABELS`), a group column, optionally a face box (:data:`BOX_COLUMNS`) and ``pseudo``
(:data:`PSEUDO`). Reading gives a :class:`Table`, the form every training data reader returns
(``facet.models.data`` reads the competition layout into it too). No torch: pandas only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from facet.atomic import write_csv
from facet.combine import TRUE_AGE_RULE, parse_code
from facet.csvfile import read_csv
from facet.faces import image_face
from facet.image_files import header_size

MAX_AGE = 120
#: A :class:`Table`'s columns: one row per image (or per face, for a manifest with face boxes):
#: codes (-1 where a label is unknown), ``age_years`` (-1: unknown), ``box`` the face's
#: (x, y, w, h) in the image or None, ``pseudo`` True for a pseudo-labelled manifest's rows.
COLUMNS = ["path", "person", "mask", "gender", "age_years", "age", "source", "box", "pseudo"]
#: attribute -> the manifest column its code or class name is written to (``age``: the group;
#: a manifest may give ``age`` in years instead)
LABELS = {"mask": "mask", "gender": "gender", "age": "age_group"}
#: A manifest's face box, as either set of column names: corners in the image's pixels; the
#: first is what facet writes.
BOX_COLUMNS = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))
PSEUDO = "pseudo"  # all 1: a pseudo-labelled manifest, trained on and never validated on
NO_GROUP = "none"

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad training data under ``--strict``; the message names the file."""


@dataclass
class Table:
    frame: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    group: str = "person"  # what keeps images together in the split; "none": nothing
    name: str = ""  # the source's name (a combined table: its sources' names)

    def summary(self) -> str:
        f = self.frame
        text = (f"{len(f):,} images of {f['person'].nunique():,} persons"
                if self.group != NO_GROUP
                else f"{len(f):,} images, each its own group (val scores optimistic)")
        if f["source"].nunique() > 1:
            text += " from " + ", ".join(f"{name} ({n:,})" for name, n in
                                         f["source"].value_counts(sort=False).items())
        pseudo = int(f["pseudo"].eq(True).sum()) if "pseudo" in f.columns else 0
        if pseudo:
            text += f"; {pseudo:,} pseudo-labelled (trained on, never validated on)"
        drawn = int(f["drawn"].eq(True).sum()) if "drawn" in f.columns else 0
        if drawn:
            text += f"; {drawn:,} with masks drawn (trained on, never validated on)"
        if self.problems:
            text += f"; {len(self.problems)} problem(s) skipped"
        return text


def as_face_crops(table: Table) -> Table:
    """A source of face crops (``,crops=1``: one face filling each image): every row without a
    box gets the whole image as its face box, so crop=face training cuts it by the crop rule
    (no detector), framed as serving frames an image where no face is found
    (:func:`facet.faces.image_face`). An unreadable header keeps no box: the cache reports it."""
    frame = table.frame.copy()
    sizes = {p: header_size(p) for p in frame.loc[frame["box"].isna(), "path"].unique()}
    frame["box"] = [box if box is not None and box == box
                    else (image_face(*sizes[path]).box if sizes[path] else None)
                    for path, box in zip(frame["path"], frame["box"])]
    return Table(frame, table.problems, table.group, table.name)


class Problems(list):
    """A reader's problems: listed, or raised at the first under ``strict``."""

    def __init__(self, strict: bool):
        super().__init__()
        self.strict = strict

    def add(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.append(message)


def source_name(path: str | Path) -> str:
    """A data source's default name: ``maskfaces/train`` -> maskfaces, ``street.csv`` -> street,
    ``realmasks/labels.csv`` -> realmasks (a generic file name names its folder)."""
    path = Path(path).resolve()
    if path.suffix and path.stem.lower() not in ("labels", "manifest", "train", "data", "index"):
        return path.stem
    folder = path.parent if path.suffix else path
    return folder.parent.name if folder.name in ("train", "images") else folder.name


def parse_age(text) -> int:
    try:
        age = int(float(str(text).strip()))
    except ValueError:
        raise ValueError(f"age {text!r} is not a number") from None
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"age {age} is outside 0..{MAX_AGE}")
    return age


def read_manifest(csv: str | Path, root: str | Path | None = None, group: str = "person",
                  strict: bool = False, name: str | None = None,
                  path_column: str = "path") -> Table:
    """A CSV with ``path`` and any of ``mask``, ``gender``, ``age`` (years) or ``age_group``.

    Paths are relative to ``root`` (default: the CSV's folder); ``path_column`` names their
    column. ``group`` names the column that keeps related images on one side of the split (a
    person, a source photo); ``"none"`` makes each image its own group, which lets one person's
    images land on both sides. A face box (``x0,y0,x1,y1`` or ``xmin,ymin,xmax,ymax``) makes
    each row one face of its photo: the crop is cut around it, and a photo may have many rows;
    a row with the box columns empty is the whole photo (the crop rule finds its face).
    Other columns are ignored, but ``pseudo``: all 1 marks the manifest pseudo-labelled (`facet
    pseudo-label`): its rows are trained on and never validated on.
    """
    csv = Path(csv)
    root = Path(root) if root else csv.parent
    name = name or source_name(csv)
    if not csv.is_file():
        raise DataError(f"{csv}: manifest not found")
    df = read_csv(csv, DataError, dtype=str, keep_default_na=False)
    if path_column not in df.columns:
        raise DataError(f"{csv}: needs a {path_column!r} column (the image paths), has "
                        f"{list(df.columns)}")
    if path_column != "path":
        df = df.drop(columns=["path"], errors="ignore").rename(columns={path_column: "path"})
    corners = next((c for c in BOX_COLUMNS if set(c) <= set(df.columns)), None)
    labels = [c for c in ("mask", "gender", "age", "age_group") if c in df.columns]
    if not labels:
        raise DataError(f"{csv}: needs at least one of mask, gender, age, age_group columns")
    pseudo = is_pseudo(csv, df)
    if group == NO_GROUP:
        log.warning("%s: no group column: each image is its own group, so a person's images can "
                    "be in both train and val and val scores will be optimistic", csv)
    elif group not in df.columns:
        raise DataError(f"{csv}: no group column {group!r} (columns: {list(df.columns)}); name "
                        "the column that keeps a person's images together (--group), or split "
                        f"image by image with --group {NO_GROUP}")
    problems = Problems(strict)
    rows, sizes = [], {}  # sizes: photo -> (width, height), read once per photo
    for i, rec in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        where = f"{csv}:{i} ({rec['path']})"
        path = root / rec["path"]
        if not path.is_file():
            problems.add(f"{where}: image file not found")
            continue
        try:
            codes = {a: parse_code(a, rec[a]) if rec.get(a, "") != "" else -1
                     for a in ("mask", "gender")}
            years = parse_age(rec["age"]) if rec.get("age", "") != "" else -1
            if years >= 0:
                age = TRUE_AGE_RULE.group(years)
            elif rec.get("age_group", "") != "":
                age = parse_code("age", rec["age_group"])
            else:
                age = -1
            box = (_box(rec, corners, sizes.setdefault(path, header_size(path)))
                   if corners and any(rec[c] != "" for c in corners) else None)
        except ValueError as exc:
            problems.add(f"{where}: {exc}")
            continue
        person = f"row{i}" if group == NO_GROUP else rec[group]
        rows.append((str(path), person, codes["mask"], codes["gender"], years, age, name, box,
                     pseudo))
    return Table(pd.DataFrame(rows, columns=COLUMNS), list(problems), group, name)


def is_pseudo(csv: Path, df: pd.DataFrame) -> bool:
    """Whether a manifest is pseudo-labelled: a ``pseudo`` column of 1s (0s or empty: not)."""
    if PSEUDO not in df.columns:
        return False
    values = set(df[PSEUDO].str.strip().str.lower())
    if values <= {"1", "true"}:
        return True
    if values <= {"0", "false", ""}:
        return False
    raise DataError(f"{csv}: the pseudo column marks the whole manifest pseudo-labelled: all 1 "
                    f"(or all 0), got {sorted(values)}; write pseudo-labels into a manifest of "
                    "their own")


def _box(rec: dict, corners: tuple[str, ...], size: tuple[int, int] | None
         ) -> tuple[float, float, float, float]:
    """The row's face box as (x, y, w, h); it must lie in the image (``size``: its width and
    height; None: unreadable, which the image cache reports)."""
    try:
        x0, y0, x1, y1 = (float(rec[c]) for c in corners)
    except ValueError:
        raise ValueError(f"face box {[rec[c] for c in corners]} is not four numbers") from None
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"face box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not a box in the image")
    if size is not None and (x1 > size[0] or y1 > size[1]):
        raise ValueError(f"face box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches past the edge of "
                         f"the {size[0]}x{size[1]} image")
    return (x0, y0, x1 - x0, y1 - y0)


def write_manifest(path: str | Path, frame: pd.DataFrame) -> None:
    """A manifest CSV, whole or not at all; ``frame`` has ``path``, label columns
    (:data:`LABELS`) and optionally a box (:data:`BOX_COLUMNS`'s first names) and ``pseudo``."""
    if "path" not in frame.columns or not set(LABELS.values()) & set(frame.columns):
        raise ValueError(f"a manifest needs path and a label column, got {list(frame.columns)}")
    write_csv(path, frame)
