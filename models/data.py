"""Reading training data: the competition folder layout, a generic manifest CSV, label fixes.

Every reader returns a :class:`Table`: one row per image (or per face, for a manifest with face
boxes) with the columns ``path, person, mask, gender, age_years, age`` (codes; -1 where a label
is unknown), ``source``, ``box`` (the face's (x, y, w, h) in the image, or None) and ``pseudo``
(True: a pseudo-labelled manifest's row, trained on and never validated on) and the problems
met on the way. Rows with a problem are left out; ``strict=True`` raises instead.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from facet.combine import MASK_BY_STEM, TRUE_AGE_RULE, AgeRule, parse_code
from facet.csvfile import read_csv
from facet.preprocess import SUFFIXES

FOLDER_RE = re.compile(r"^(?P<id>\d+)_(?P<gender>[A-Za-z]+)_(?P<race>[A-Za-z]+)_(?P<age>\d+)$")
MAX_AGE = 120
COLUMNS = ["path", "person", "mask", "gender", "age_years", "age", "source", "box", "pseudo"]
#: A manifest's face box, as either set of column names: corners in the image's pixels.
BOX_COLUMNS = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))
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
        if self.problems:
            text += f"; {len(self.problems)} problem(s) skipped"
        return text


class _Problems(list):
    def __init__(self, strict: bool):
        super().__init__()
        self.strict = strict

    def add(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.append(message)


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name.startswith("__")


def source_name(path: str | Path) -> str:
    """A data source's default name: ``maskfaces/train`` -> maskfaces, ``street.csv`` -> street,
    ``realmasks/labels.csv`` -> realmasks (a generic file name names its folder)."""
    path = Path(path).resolve()
    if path.suffix and path.stem.lower() not in ("labels", "manifest", "train", "data", "index"):
        return path.stem
    folder = path.parent if path.suffix else path
    return folder.parent.name if folder.name in ("train", "images") else folder.name


def read_competition(root: str | Path, strict: bool = False, name: str | None = None) -> Table:
    """``root`` is the competition's ``train/`` folder (holding ``images/``, maybe ``train.csv``)."""
    root = Path(root)
    name = name or source_name(root)
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images} does not exist: expected the competition layout "
                        "train/images/<id>_<gender>_<race>_<age>/")
    problems = _Problems(strict)
    rows = []
    for folder in sorted(p for p in images.iterdir() if not _is_hidden(p)):
        if not folder.is_dir():
            problems.add(f"{folder}: not a person folder, skipped")
            continue
        m = FOLDER_RE.match(folder.name)
        if not m:
            problems.add(f"{folder}: folder name is not <id>_<gender>_<race>_<age>")
            continue
        try:
            gender = parse_code("gender", m["gender"])
            age = _parse_age(m["age"])
        except ValueError as exc:
            problems.add(f"{folder}: {exc}")
            continue
        found = {}
        for f in sorted(folder.iterdir()):
            if _is_hidden(f) or f.suffix.lower() not in SUFFIXES:
                continue
            if f.stem not in MASK_BY_STEM:
                problems.add(f"{f}: unexpected image name (expected mask1..mask5, "
                             "incorrect_mask, normal)")
            elif f.stem in found:
                problems.add(f"{f}: second image for {f.stem!r} in {folder.name}")
            else:
                found[f.stem] = f
        for stem in MASK_BY_STEM:
            if stem not in found:
                problems.add(f"{folder / stem}.*: missing image")
        for stem, f in found.items():
            rows.append((str(f), m["id"], MASK_BY_STEM[stem], gender, age,
                         TRUE_AGE_RULE.group(age), name, None, False))
    _check_train_csv(root, {r[1] for r in rows}, problems)
    return Table(pd.DataFrame(rows, columns=COLUMNS), list(problems), name=name)


def _check_train_csv(root: Path, persons: set[str], problems: _Problems) -> None:
    csv = root / "train.csv"
    if not csv.exists():
        return
    listed = pd.read_csv(csv, dtype=str)
    if "id" not in listed.columns:
        problems.add(f"{csv}: no 'id' column")
        return
    for pid in sorted(set(listed["id"]) - persons):
        problems.add(f"{csv}: person {pid} is listed but has no usable image folder")


def _parse_age(text) -> int:
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
    pseudo = _pseudo(csv, df)
    if group == NO_GROUP:
        log.warning("%s: no group column: each image is its own group, so a person's images can "
                    "be in both train and val and val scores will be optimistic", csv)
    elif group not in df.columns:
        raise DataError(f"{csv}: no group column {group!r} (columns: {list(df.columns)}); name "
                        "the column that keeps a person's images together (--group), or split "
                        f"image by image with --group {NO_GROUP}")
    problems = _Problems(strict)
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        where = f"{csv}:{i} ({rec['path']})"
        path = root / rec["path"]
        if not path.is_file():
            problems.add(f"{where}: image file not found")
            continue
        try:
            codes = {a: parse_code(a, rec[a]) if rec.get(a, "") != "" else -1
                     for a in ("mask", "gender")}
            years = _parse_age(rec["age"]) if rec.get("age", "") != "" else -1
            if years >= 0:
                age = TRUE_AGE_RULE.group(years)
            elif rec.get("age_group", "") != "":
                age = parse_code("age", rec["age_group"])
            else:
                age = -1
            box = _box(rec, corners) if corners and any(rec[c] != "" for c in corners) else None
        except ValueError as exc:
            problems.add(f"{where}: {exc}")
            continue
        person = f"row{i}" if group == NO_GROUP else rec[group]
        rows.append((str(path), person, codes["mask"], codes["gender"], years, age, name, box,
                     pseudo))
    return Table(pd.DataFrame(rows, columns=COLUMNS), list(problems), group, name)


def _pseudo(csv: Path, df: pd.DataFrame) -> bool:
    """Whether a manifest is pseudo-labelled: a ``pseudo`` column of 1s (0s or empty: not)."""
    if "pseudo" not in df.columns:
        return False
    values = set(df["pseudo"].str.strip().str.lower())
    if values <= {"1", "true"}:
        return True
    if values <= {"0", "false", ""}:
        return False
    raise DataError(f"{csv}: the pseudo column marks the whole manifest pseudo-labelled: all 1 "
                    f"(or all 0), got {sorted(values)}; write pseudo-labels into a manifest of "
                    "their own")


def _box(rec: dict, corners: tuple[str, ...]) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(rec[c]) for c in corners)
    except ValueError:
        raise ValueError(f"face box {[rec[c] for c in corners]} is not four numbers") from None
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"face box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not a box in the image")
    return (x0, y0, x1 - x0, y1 - y0)


def combine(tables: list[Table]) -> Table:
    """Several sources as one table. Groups stay within their source (``source/person``), so
    each source is split by its own groups; the source names must differ."""
    for table in tables:
        if table.frame.empty:
            raise DataError(f"source {table.name}: no usable image (see the problems above)")
    if len(tables) == 1:
        return tables[0]
    names = _distinct_names(tables)
    frame = pd.concat([t.frame for t in tables], ignore_index=True)
    frame["person"] = frame["source"] + "/" + frame["person"].astype(str)
    groups = {t.group for t in tables}
    return Table(frame, [p for t in tables for p in t.problems],
                 NO_GROUP if NO_GROUP in groups else "person", "+".join(names))


def _distinct_names(tables: list[Table]) -> list[str]:
    names = [t.name for t in tables]
    if len(set(names)) < len(names):
        raise DataError(f"two sources share a name ({names}); give each its own with name=...")
    return names


def apply_fixes(tables: list[Table], fixes_csv: str | Path, strict: bool = False) -> list[Table]:
    """Correct known wrong labels of the sources, before they are combined and split.

    The CSV has ``id,field,value``. ``id`` is a person as their source names them (a competition
    folder's id, the group value of a manifest's rows), or ``SOURCE/PERSON`` where several
    sources hold that person (what ``facet audit`` writes for a run of several sources).
    ``field`` is ``gender`` or ``age`` (the new value), or ``mask_swap`` (value ignored) to
    swap that person's ``incorrect_mask`` and ``normal`` labels. Problems (an unknown person,
    a bad value) are reported with the first source's.
    """
    fixes = read_csv(fixes_csv, DataError, dtype=str, keep_default_na=False)
    missing = {"id", "field", "value"} - set(fixes.columns)
    if missing:
        raise DataError(f"{fixes_csv}: missing column(s) {sorted(missing)}")
    _distinct_names(tables)  # SOURCE/PERSON must name one source
    problems = _Problems(strict)
    problems.extend(tables[0].problems)
    frames = [t.frame.copy() for t in tables]
    for i, fix in enumerate(fixes.to_dict("records"), start=2):
        where = f"{fixes_csv}:{i}"
        hits = [(frame, rows) for table, frame in zip(tables, frames)
                if (rows := _person_rows(frame, table.name, fix["id"])).any()]
        if not hits:
            problems.add(f"{where}: person {fix['id']!r} is not in the data")
            continue
        if len(hits) > 1:
            problems.add(f"{where}: person {fix['id']!r} is in several sources: name one as "
                         "SOURCE/PERSON")
            continue
        df, rows = hits[0]
        try:
            if fix["field"] == "gender":
                df.loc[rows, "gender"] = parse_code("gender", fix["value"])
            elif fix["field"] == "age":
                years = _parse_age(fix["value"])
                df.loc[rows, ["age_years", "age"]] = (years, TRUE_AGE_RULE.group(years))
            elif fix["field"] == "mask_swap":
                swap = rows & df["mask"].isin([1, 2])
                df.loc[swap, "mask"] = 3 - df.loc[swap, "mask"]
            else:
                raise ValueError(f"unknown field {fix['field']!r} (gender, age or mask_swap)")
        except ValueError as exc:
            problems.add(f"{where}: {exc}")
    return [Table(frame, list(problems) if k == 0 else t.problems, t.group, t.name)
            for k, (t, frame) in enumerate(zip(tables, frames))]


def _person_rows(frame: pd.DataFrame, source: str, person_id: str) -> pd.Series:
    person = frame["person"].astype(str)
    return (person == person_id) | (source + "/" + person == person_id)


def training_labels(frame: pd.DataFrame, attribute: str, rule: AgeRule) -> pd.Series:
    """Labels the model is *trained* on: for age, the recipe's rule (moved thresholds, dropped
    boundary ages -> -1). Validation always uses the true ``frame[attribute]``."""
    if attribute != "age":
        return frame[attribute]
    years = frame["age_years"]
    moved = years.map(lambda y: -1 if y < 0 or rule.dropped(y) else rule.group(y))
    # Manifests with an age group but no years keep their group: no rule can move it.
    return moved.where(years >= 0, frame["age"])
