"""Reading training data: the competition folder layout, several sources as one, label fixes.

Every reader returns a ``facet.manifest.Table`` (a manifest CSV is read by ``facet.manifest``):
one row per image with its codes, source, face box and pseudo flag, and the problems met on
the way. Rows with a problem are left out; ``strict=True`` raises instead.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from facet.combine import MASK, MASK_BY_STEM, TRUE_AGE_RULE, AgeRule, parse_code
from facet.csvfile import read_csv
from facet.manifest import COLUMNS, NO_GROUP, DataError, Problems, Table, parse_age, source_name
from facet.preprocess import SUFFIXES

FOLDER_RE = re.compile(r"^(?P<id>\d+)_(?P<gender>[A-Za-z]+)_(?P<race>[A-Za-z]+)_(?P<age>\d+)$")


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name.startswith("__")


def read_competition(root: str | Path, strict: bool = False, name: str | None = None) -> Table:
    """``root`` is the competition's ``train/`` folder (holding ``images/``, maybe ``train.csv``)."""
    root = Path(root)
    name = name or source_name(root)
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images} does not exist: expected the competition layout "
                        "train/images/<id>_<gender>_<race>_<age>/")
    problems = Problems(strict)
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
            age = parse_age(m["age"])
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


def _check_train_csv(root: Path, persons: set[str], problems: Problems) -> None:
    csv = root / "train.csv"
    if not csv.exists():
        return
    listed = pd.read_csv(csv, dtype=str)
    if "id" not in listed.columns:
        problems.add(f"{csv}: no 'id' column")
        return
    for pid in sorted(set(listed["id"]) - persons):
        problems.add(f"{csv}: person {pid} is listed but has no usable image folder")


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


def with_drawn_masks(table: Table) -> Table:
    """Faces without masks as mask-state examples (a source's ``draw=masks``): each image is
    given a mask state, a third each by a hash of its path (the same on every run), and
    training draws the mask that state names on its face (``occlusion.draw_for_label``, from
    the landmarks found on the cached pixels). Trained on only (``drawn``): the drawing is a
    training step, and val scores real masks."""
    frame = table.frame.copy()
    if (frame["mask"] >= 0).any():
        raise DataError(f"source {table.name}: draw=masks is for faces without mask labels")
    frame["mask"] = [int(hashlib.sha1(p.encode()).hexdigest(), 16) % len(MASK) for p in frame["path"]]
    frame["drawn"] = True
    return Table(frame, table.problems, table.group, table.name)


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
    problems = Problems(strict)
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
                years = parse_age(fix["value"])
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
