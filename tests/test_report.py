"""The evaluation report and calibration, on synthetic answers with a known gap between two
groups and a known overconfidence."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from facet.calibration import ece, fit_temperature, scale
from facet.combine import ATTRIBUTES, combine_labels
from facet.metrics import macro_f1_counts, scores
from facet.report import ReportError, build

RIGHT = {"A": 0.97, "B": 0.85}  # per attribute, the chance an answer is right, per site
CONFIDENCE = 0.97  # what the model says for its pick, whatever the site: overconfident on B


def synthetic(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    site = np.where(np.arange(n) < n // 2, "A", "B")
    details = {"path": [f"/photos/{i:05d}.jpg" for i in range(n)]}
    true, picked = {}, {}
    for attribute, classes in ATTRIBUTES.items():
        k = len(classes)
        true[attribute] = rng.integers(0, k, n)
        right = rng.random(n) < np.vectorize(RIGHT.get)(site)
        picked[attribute] = np.where(right, true[attribute],
                                     (true[attribute] + rng.integers(1, k, n)) % k)
        probs = np.full((n, k), (1 - CONFIDENCE) / (k - 1))
        probs[np.arange(n), picked[attribute]] = CONFIDENCE
        details.update({f"p_{attribute}_{c}": probs[:, j] for j, c in enumerate(classes)})
    details["label"] = combine_labels(picked["mask"], picked["gender"], picked["age"])
    answers = pd.DataFrame({"ImageID": [f"{i:05d}.jpg" for i in range(n)],
                            "ans": combine_labels(true["mask"], true["gender"], true["age"]),
                            "site": site, "mask": true["mask"]})
    return pd.DataFrame(details), answers


def test_report_finds_the_gap_and_its_intervals_cover_the_truth(tmp_path):
    details, answers = synthetic()
    result = build(details, answers, tmp_path, resamples=400)
    site = result["groups"]["site"]
    assert site["gap"]["best"] == "A" and site["gap"]["worst"] == "B" and site["gap"]["clear"]
    for row in site["values"]:
        truth = RIGHT[row["value"]] ** 3  # all three attributes right
        lo, hi = row["accuracy_ci"]
        assert lo <= truth <= hi and row["images"] == 1500
    assert {m["group"] for m in result["groups_not_reported"]} == {"race", "gender",
                                                                   "age band (real age)"}
    assert "no 'race' column in the answers" in (tmp_path / "report.md").read_text()
    assert set(result["groups"]) == {"site", "mask"}
    assert json.loads((tmp_path / "report.json").read_text())["macro_f1"] == result["macro_f1"]
    for png in ("reliability.png", "groups.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_temperature_scaling_lowers_ece_and_keeps_every_answer():
    details, answers = synthetic()
    probs = details[[f"p_mask_{c}" for c in ATTRIBUTES["mask"]]].to_numpy()
    truth = answers["mask"].to_numpy()
    t = fit_temperature(probs, truth)
    assert t > 1  # overconfident: softened
    assert ece(scale(probs, t), truth) < ece(probs, truth) / 2
    assert (scale(probs, t).argmax(1) == probs.argmax(1)).all()
    assert np.allclose(scale(scale(probs, t), 1 / t), probs, atol=1e-9)


def test_report_shows_calibration_before_and_after_the_models_temperature(tmp_path):
    details, answers = synthetic()
    temperatures = {}
    for attribute, classes in ATTRIBUTES.items():  # what the exported, scaled models answer
        columns = [f"p_{attribute}_{c}" for c in classes]
        truth = {"mask": answers["mask"].to_numpy()}.get(attribute)
        probs = details[columns].to_numpy()
        temperatures[attribute] = 2.0 if truth is None else fit_temperature(probs, truth)
        details[columns] = scale(probs, temperatures[attribute])
    result = build(details, answers, tmp_path, temperatures, resamples=100)
    mask = result["calibration"]["mask"]
    assert mask["ece"] < mask["ece_before_scaling"] and mask["temperature"] == temperatures["mask"]


def test_predictions_without_probabilities_and_unmatched_answers_are_clear(tmp_path):
    details, answers = synthetic(50)
    with pytest.raises(ReportError, match="--details"):
        build(details[["path", "label"]], answers, tmp_path)
    answers["ImageID"] = [f"other{i}.jpg" for i in range(len(answers))]
    with pytest.raises(ReportError, match="no image"):
        build(details, answers, tmp_path)


def test_fast_macro_f1_is_the_competition_macro_f1():
    rng = np.random.default_rng(3)
    truth, pred = rng.integers(0, 18, 500), rng.integers(-1, 18, 500)
    assert macro_f1_counts(truth, pred, 18) == pytest.approx(scores(truth, pred, 18)["macro_f1"])


def test_unusable_group_columns_are_named_not_a_crash(tmp_path):
    details, answers = synthetic(200)
    answers["gender"] = "male"  # words, not codes
    answers["age_years"] = ""
    result = build(details, answers, tmp_path, resamples=100)
    named = {m["group"]: m["why"] for m in result["groups_not_reported"]}
    assert named["gender"] == named["age band (real age)"] == "no usable value in its column"
    with pytest.raises(ReportError, match="twice"):
        build(pd.concat([details, details]), answers, tmp_path)


def _unmasked_answers(gender, age_codes) -> pd.DataFrame:
    """Predictions without masks that answer ``gender`` and ``age_codes``, each at 0.8+."""
    n = len(gender)
    details = {"path": [f"/photos/{i:05d}.jpg" for i in range(n)],
               "label": combine_labels(np.full(n, 2), gender, age_codes)}
    for attribute, truth in (("mask", np.full(n, 2)), ("gender", gender), ("age", age_codes)):
        probs = np.eye(len(ATTRIBUTES[attribute]))[truth] * 0.8 + 0.2 / len(ATTRIBUTES[attribute])
        details.update({f"p_{attribute}_{c}": probs[:, j]
                        for j, c in enumerate(ATTRIBUTES[attribute])})
    return pd.DataFrame(details)


def test_a_manifest_with_real_ages_is_scored_per_attribute_by_age_band(tmp_path):
    rng = np.random.default_rng(4)
    n = 2000
    years = rng.choice([6, 25, 40, 70], n)
    gender = rng.integers(0, 2, n)
    right = rng.random(n) < np.where(years < 13, 0.6, 0.95)  # children: the weak band
    picked = np.where(right, gender, 1 - gender)
    age_codes = np.digitize(years, [30, 60])
    details = _unmasked_answers(picked, age_codes)
    manifest = pd.DataFrame({"path": [f"images/{i:05d}.jpg" for i in range(n)],
                             "gender": np.array(["male", "female"])[gender],
                             "age": years.astype(str), "group": np.arange(n).astype(str)})
    result = build(details, manifest, tmp_path, resamples=200)
    assert result["scored"] == ["gender", "age"] and "macro_f1" not in result
    assert result["attributes"]["age"]["macro_f1"] == 1.0
    assert result["attributes"]["gender"]["accuracy"] == pytest.approx(right.mean(), abs=1e-4)
    bands = result["groups"]["gender by age band (real age)"]
    assert [v["value"] for v in bands["values"]] == ["0-12", "20-29", "30-44", "60+"]
    assert bands["gap"]["worst"] == "0-12" and bands["gap"]["clear"]
    children = bands["values"][0]
    assert children["accuracy"] == pytest.approx(right[years < 13].mean(), abs=1e-4)
    assert "Scored per labelled attribute" in (tmp_path / "report.md").read_text()
    assert "18 classes" not in result["calibration"] and "gender" in result["calibration"]
    manifest.loc[3, "gender"] = "robot"
    with pytest.raises(ReportError, match="line 5"):
        build(details, manifest, tmp_path, resamples=100)


def test_f1_interval_holds_the_estimate_is_seeded_and_narrows_with_more_rows():
    from facet.metrics import f1_interval
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 4000)
    pred = np.where(rng.random(4000) < 0.7, truth, rng.integers(0, 3, 4000))
    point = macro_f1_counts(truth, pred, 3)
    small = f1_interval(truth[:200], pred[:200], 3, np.random.default_rng(0))
    large = f1_interval(truth, pred, 3, np.random.default_rng(0))
    assert large[0] < point < large[1]
    assert small[0] <= macro_f1_counts(truth[:200], pred[:200], 3) <= small[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 2
    assert f1_interval(truth, pred, 3, np.random.default_rng(0)) == large  # seeded
    photos = np.repeat(np.arange(400), 10)  # whole clusters (the faces of a photo) drawn
    clustered = f1_interval(truth, np.where(photos % 2 == 0, truth, pred), 3,
                            np.random.default_rng(0), clusters=photos)
    assert clustered[0] < macro_f1_counts(truth, np.where(photos % 2 == 0, truth, pred), 3) < clustered[1]


def test_a_group_known_only_where_the_score_is_unlabelled_is_left_out(tmp_path):
    """race is given only for faces without a gender label: no gender-by-race row, no crash."""
    rng = np.random.default_rng(5)
    n = 300
    years, gender = rng.choice([6, 25, 40, 70], n), rng.integers(0, 2, n)
    age_codes = np.digitize(years, [30, 60])
    details = _unmasked_answers(gender, age_codes)
    manifest = pd.DataFrame({"path": [f"images/{i:05d}.jpg" for i in range(n)],
                             "gender": np.array(["male", "female"])[gender],
                             "age": years.astype(str), "group": np.arange(n).astype(str),
                             "race": None})
    manifest.loc[:19, "gender"] = ""
    manifest.loc[:9, "race"], manifest.loc[10:19, "race"] = "asian", "black"
    result = build(details, manifest, tmp_path, resamples=50)
    assert "age by race" in result["groups"] and "gender by race" not in result["groups"]
    assert [v["images"] for v in result["groups"]["age by race"]["values"]] == [10, 10]
