"""Likely wrong training labels, from the out-of-fold probabilities of a `--fold all` run
(`facet audit`): every labelled image was predicted by the fold that did not train on it, and
cleanlab's ``find_label_issues`` (confident learning) ranks the labels those answers contradict.

Gender and age are labels of a person: a person's images vote together (the mean of their
out-of-fold probabilities, one label per person). Mask is a label of an image; a person whose
``incorrect_mask`` and ``normal`` images both read as the other is a swap. The result is a
ranked list, a contact sheet and a draft ``fixes.csv`` (the format `--fixes` reads) for a person
to check by eye: nothing is applied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES, TRUE_AGE_RULE

from .run_folder import CV_SUMMARY, OOF

PER_PERSON = ("gender", "age")
SWAPPED = {"incorrect_mask": 2, "normal": 1}  # image -> the mask label a swap would give it


@dataclass
class Audit:
    attribute: str
    suspects: pd.DataFrame  # ranked, most likely wrong first
    fixes: pd.DataFrame  # id, field, value (+ what it was and why), for --fixes
    checked: int  # persons (gender, age) or images (mask) audited


def audit(cv_dir: str | Path, attribute: str | None = None) -> Audit:
    """Audit the labels of the cross-validation folder ``cv_dir`` (``oof.csv``, ``cv.json``)."""
    from cleanlab.filter import find_label_issues

    cv_dir = Path(cv_dir)
    if not (cv_dir / CV_SUMMARY).is_file() or not (cv_dir / OOF).is_file():
        raise FileNotFoundError(f"{cv_dir}: no {CV_SUMMARY} and {OOF}: give the folder of a "
                                "finished `facet train ATTR --fold all` run")
    trained = json.loads((cv_dir / CV_SUMMARY).read_text())["recipe"]["attribute"]
    if attribute and attribute != trained:
        raise ValueError(f"{cv_dir} holds a cross-validation of {trained}, not {attribute}")
    classes = list(ATTRIBUTES[trained])
    oof = pd.read_csv(cv_dir / OOF, dtype={"person": str, "path": str})
    units = _per_person(oof, classes) if trained in PER_PERSON else _per_image(oof, classes)
    probs = units[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    labels = units["label"].to_numpy()
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    suspects = units.iloc[ranked].reset_index(drop=True)
    suspects["p_given"] = probs[ranked, labels[ranked]].round(4)
    suspects["suggested"] = [classes[k] for k in probs[ranked].argmax(1)]
    suspects["p_suggested"] = probs[ranked].max(1).round(4)
    suspects["given"] = [classes[k] for k in labels[ranked]]
    suspects.insert(0, "rank", np.arange(1, len(suspects) + 1))
    keep = ["rank", "person", "path", "source", "given", "suggested", "p_given", "p_suggested"]
    suspects = suspects[keep + (["age_years"] if "age_years" in suspects else [])]
    fixes = (_mask_swaps(oof, suspects) if trained == "mask" else _person_fixes(suspects, trained))
    return Audit(trained, suspects, fixes, len(units))


def _per_person(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per person: the mean out-of-fold probabilities, the label, a face to show
    (the unmasked ``normal`` image where there is one)."""
    columns = [f"p_{c}" for c in classes]
    oof = oof.assign(_bare=oof["path"].map(lambda p: Path(p).stem == "normal"))
    first = oof.sort_values("_bare", ascending=False, kind="stable").groupby("person", sort=False).first()
    units = oof.groupby("person", sort=False)[columns].mean()
    units["label"] = oof.groupby("person", sort=False)["label"].agg(lambda s: s.mode().iloc[0])
    for column in ("path", "source", "age_years"):
        if column in first:
            units[column] = first[column]
    return units.reset_index()


def _per_image(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    return oof[["person", "path", "source", "label", *[f"p_{c}" for c in classes]]].reset_index(drop=True)


def _person_fixes(suspects: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """gender: the suggested gender; age: the age nearest the person's given age inside the
    suggested group (the smallest change that moves the label), for the reviewer to replace
    with the real one."""
    rows = []
    for s in suspects.itertuples():
        if attribute == "gender":
            value = s.suggested
        else:
            low, high = _group_years(ATTRIBUTES["age"].index(s.suggested))
            value = int(np.clip(s.age_years, low, high)) if s.age_years >= 0 else low
        rows.append({"id": s.person, "field": attribute, "value": value, "given": s.given,
                     "suggested": s.suggested, "p_suggested": s.p_suggested, "rank": s.rank})
    return pd.DataFrame(rows, columns=["id", "field", "value", "given", "suggested",
                                       "p_suggested", "rank"])


def _group_years(group: int) -> tuple[int, int]:
    bounds = [0, *TRUE_AGE_RULE.thresholds, 120]
    return bounds[group], bounds[group + 1] - 1


def _mask_swaps(oof: pd.DataFrame, suspects: pd.DataFrame) -> pd.DataFrame:
    """mask_swap for a person whose incorrect_mask and normal images both read as the other's
    label, at least one of them among the suspects."""
    flagged = set(suspects["path"])
    oof = oof.assign(stem=oof["path"].map(lambda p: Path(p).stem))
    rows = []
    for person, images in oof[oof["stem"].isin(list(SWAPPED))].groupby("person", sort=False):
        if len(images) != 2:
            continue
        pred = dict(zip(images["stem"], images["pred"]))
        if (all(pred[stem] == label for stem, label in SWAPPED.items())
                and flagged & set(images["path"])):
            rank = int(suspects.loc[suspects["path"].isin(images["path"]), "rank"].min())
            rows.append({"id": person, "field": "mask_swap", "value": 1, "rank": rank})
    return pd.DataFrame(rows, columns=["id", "field", "value", "rank"]).sort_values("rank")


def write(result: Audit, out_dir: Path, sheet: int = 24) -> dict[str, Path]:
    """suspects.csv, fixes.csv (a draft) and suspects.png (the top ``sheet`` suspects)."""
    from facet.atomic import write_csv
    from facet.report import contact_sheet

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"suspects": out_dir / "suspects.csv", "fixes": out_dir / "fixes.csv",
             "sheet": out_dir / "suspects.png"}
    write_csv(paths["suspects"], result.suspects)
    write_csv(paths["fixes"], result.fixes)
    top = result.suspects.head(sheet)
    if len(top):
        contact_sheet(top["path"].tolist(),
                      [f"#{r.rank} given {r.given}\nsuggested {r.suggested} ({r.p_suggested:.2f})"
                       for r in top.itertuples()],
                      paths["sheet"], f"{result.attribute}: likely wrong labels")
    else:
        paths.pop("sheet")
    return paths
