"""`facet audit`: likely wrong labels from out-of-fold probabilities, per person for gender and
age, per image for mask, and a draft fixes.csv that `--fixes` applies to exactly those persons.
The cross-validation folders are written by hand (probabilities chosen per person), so each
case knows which labels are wrong."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES
from facet.models.audit import audit
from facet.manifest import Table, read_manifest
from facet.models.data import apply_fixes, combine, read_competition

pytest.importorskip("cleanlab")
runner = CliRunner()


def _cv(root: Path, attribute: str, rows: list[dict]) -> Path:
    """A finished `--fold all` folder: cv.json and oof.csv from (path, person, label, probs)."""
    root.mkdir(parents=True)
    (root / "cv.json").write_text(json.dumps({"recipe": {"attribute": attribute}, "finished": [0]}))
    frame = pd.DataFrame([{"fold": 0, "path": r["path"], "person": r["person"],
                           "age_years": r.get("age_years", -1), "source": "train",
                           "label": r["label"],
                           **{f"p_{c}": p for c, p in zip(ATTRIBUTES[attribute], r["probs"])},
                           "pred": int(np.argmax(r["probs"]))} for r in rows])
    frame.to_csv(root / "oof.csv", index=False)
    return root


def _persons(dataset: Path) -> pd.DataFrame:
    table = read_competition(dataset / "train").frame
    return table.assign(stem=table["path"].map(lambda p: Path(p).stem))


def _noisy(rng, k: int, right: int, low: float = 0.55) -> list[float]:
    """Probabilities that favour class ``right`` (``low``-0.99), the rest spread. A wrong label
    is found when the model contradicts it confidently: those cases use ``low=0.9``."""
    top = rng.uniform(low, 0.99)
    rest = rng.dirichlet(np.ones(k - 1)) * (1 - top)
    return list(np.insert(rest, right, top))


def test_flipped_genders_rank_first_and_their_draft_fixes_apply(dataset, tmp_path):
    persons = _persons(dataset)
    rng = np.random.default_rng(0)
    ids = sorted(persons["person"].unique())
    flipped = set(ids[3:6])
    rows = []
    for person, images in persons.groupby("person"):
        true = int(images["gender"].iloc[0])
        given = 1 - true if person in flipped else true
        for image in images.itertuples():
            rows.append({"path": image.path, "person": person, "label": given,
                         "probs": _noisy(rng, 2, true, 0.9 if person in flipped else 0.55)})
    result = audit(_cv(tmp_path / "cv", "gender", rows))
    assert result.checked == len(ids)
    assert set(result.suspects["person"].head(3)) == flipped
    assert result.suspects["rank"].tolist() == list(range(1, len(result.suspects) + 1))
    fixes = result.fixes[result.fixes["rank"] <= 3]
    assert set(fixes["field"]) == {"gender"} and len(fixes) == 3
    fixes_csv = tmp_path / "fixes.csv"
    fixes.to_csv(fixes_csv, index=False)
    table = read_competition(dataset / "train")  # the labels as the audit was given them
    given = table.frame.assign(gender=np.where(table.frame["person"].isin(flipped),
                                               1 - table.frame["gender"], table.frame["gender"]))
    fixed, = apply_fixes([Table(given, [], table.group, table.name)], fixes_csv)
    assert not fixed.problems
    assert (fixed.frame["gender"] == persons["gender"]).all()  # every flip undone, nothing else


def test_a_run_of_several_sources_drafts_fixes_its_manifest_persons_take(dataset, tmp_path):
    """Persons of a run of several sources are SOURCE/PERSON (a manifest's group values too):
    the draft names them so, and --fixes undoes exactly the flipped ones."""
    folder = read_competition(dataset / "train", name="folder")
    frame = folder.frame
    pd.DataFrame({"path": frame["path"], "gender": frame["gender"].map({0: "male", 1: "female"}),
                  "age": frame["age_years"], "sitter": "s" + frame["person"]}
                 ).to_csv(tmp_path / "street.csv", index=False)
    street = read_manifest(tmp_path / "street.csv", group="sitter", name="street")
    run = combine([folder, street]).frame
    flipped = set(sorted(run.loc[run["source"] == "street", "person"].unique())[:2])
    rng = np.random.default_rng(4)
    rows = [{"path": r.path, "person": r.person,
             "label": 1 - int(r.gender) if r.person in flipped else int(r.gender),
             "probs": _noisy(rng, 2, int(r.gender), 0.9 if r.person in flipped else 0.55)}
            for r in run.itertuples()]
    result = audit(_cv(tmp_path / "cv", "gender", rows))
    drafts = result.fixes[result.fixes["rank"] <= 2]
    assert set(drafts["id"]) == flipped
    drafts.to_csv(tmp_path / "fixes.csv", index=False)
    given = street.frame.assign(gender=np.where(("street/" + street.frame["person"]).isin(flipped),
                                                1 - street.frame["gender"], street.frame["gender"]))
    fixed = combine(apply_fixes([folder, Table(given, [], street.group, street.name)],
                                tmp_path / "fixes.csv"))
    assert not fixed.problems
    assert (fixed.frame["gender"].to_numpy() == run["gender"].to_numpy()).all()


def test_an_age_across_a_boundary_gets_the_nearest_age_of_the_suggested_group(dataset, tmp_path):
    persons = _persons(dataset)
    rng = np.random.default_rng(1)
    target = sorted(persons["person"].unique())[0]
    rows = []
    for person, images in persons.groupby("person"):
        true = int(images["age"].iloc[0])
        wrong = person == target
        # the given label says 30-59 (age 35) while every image looks under 30
        given, years = (1, 35) if wrong else (true, int(images["age_years"].iloc[0]))
        seen = 0 if wrong else true
        for image in images.itertuples():
            rows.append({"path": image.path, "person": person, "label": given, "age_years": years,
                         "probs": _noisy(rng, 3, seen, 0.9 if wrong else 0.55)})
    result = audit(_cv(tmp_path / "cv", "age", rows))
    top = result.suspects.iloc[0]
    assert top["person"] == target and (top["given"], top["suggested"]) == ("30-59", "<30")
    assert Path(top["path"]).stem == "normal"  # the unmasked face is the one shown
    fix = result.fixes.iloc[0]
    assert (fix["field"], fix["value"]) == ("age", 29)


def test_swapped_incorrect_and_normal_images_are_one_mask_swap(dataset, tmp_path):
    persons = _persons(dataset)
    rng = np.random.default_rng(2)
    swapped = sorted(persons["person"].unique())[7]
    rows = []
    for image in persons.itertuples():
        given = int(image.mask)  # the label the file's name gives
        # the swapped person's incorrect_mask.jpg shows no mask and normal.jpg a mask worn wrongly
        seen = 3 - given if image.person == swapped and given in (1, 2) else given
        rows.append({"path": image.path, "person": image.person, "label": given,
                     "probs": _noisy(rng, 3, seen, 0.9 if seen != given else 0.55)})
    result = audit(_cv(tmp_path / "cv", "mask", rows))
    assert result.checked == len(persons)
    flagged = result.suspects.head(2)
    assert set(flagged["person"]) == {swapped}
    assert set(flagged["given"]) == {"incorrect", "not_wear"}
    assert result.fixes[["field", "value"]].values.tolist() == [["mask_swap", 1]]
    assert result.fixes["id"].tolist() == [swapped]


def test_the_command_writes_suspects_sheet_and_a_draft_never_applied(dataset, tmp_path):
    persons = _persons(dataset)
    rng = np.random.default_rng(3)
    flipped = sorted(persons["person"].unique())[0]
    rows = [{"path": i.path, "person": i.person,
             "label": 1 - int(i.gender) if i.person == flipped else int(i.gender),
             "probs": _noisy(rng, 2, int(i.gender), 0.9 if i.person == flipped else 0.55)}
            for i in persons.itertuples()]
    cv = _cv(tmp_path / "cv", "gender", rows)
    before = (cv / "oof.csv").read_bytes()
    result = runner.invoke(app, ["audit", "--cv", str(cv), "--sheet", "4"])
    assert result.exit_code == 0, result.output
    assert f"#1 {flipped}: given" in result.output and "nothing was applied" in result.output
    assert {p.name for p in (cv / "audit").iterdir()} == {"suspects.csv", "fixes.csv", "suspects.png"}
    assert pd.read_csv(cv / "audit" / "suspects.csv", dtype=str)["person"].iloc[0] == flipped
    assert (cv / "oof.csv").read_bytes() == before


def test_the_command_refuses_what_it_cannot_audit(tmp_path):
    result = runner.invoke(app, ["audit", "--cv", str(tmp_path)])
    assert result.exit_code == 2 and "--fold all" in result.output
    cv = _cv(tmp_path / "cv", "gender", [{"path": "a/normal.jpg", "person": "p", "label": 0,
                                          "probs": [0.9, 0.1]}])
    result = runner.invoke(app, ["audit", "age", "--cv", str(cv)])
    assert result.exit_code == 2 and "cross-validation of gender, not age" in result.output
