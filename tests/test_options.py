"""One set of answering options: the CLI, the service settings and the Ray engine build the
same AnswerOptions, and one collector gathers answers for every scheduler."""
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES
from facet.faces import Face
from facet.serve.config import ServeConfig
from facet.serve.options import AnswerOptions
from facet.serve.results import Collector


class Captured(Exception):
    pass


def test_predict_and_serve_answer_with_the_same_defaults(monkeypatch, tmp_path):
    seen = []

    def capture(model_dir, options=None, **overrides):
        seen.append(replace(options, **overrides))
        raise Captured

    monkeypatch.setattr("facet.serve.predictor.Predictor", capture)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"not read: the models are opened first")
    with pytest.raises(Captured):
        CliRunner().invoke(app, ["predict", str(photo), "--out", str(tmp_path / "s.csv")],
                           catch_exceptions=False)
    cli = seen[0]
    assert cli == AnswerOptions(variant=cli.variant)  # the folder's default variant, resolved
    served = ServeConfig().answer_options()
    # the service differs from batch where its settings say so: no spinning threads, and the
    # upload limit is the largest file it reads
    assert served == replace(AnswerOptions(), spinning=False, rules=replace(
        AnswerOptions().rules, max_bytes=ServeConfig().max_upload_bytes))
    assert served.max_faces == cli.max_faces and served.primary_rule == cli.primary_rule


def test_service_settings_reach_the_options():
    settings = ServeConfig.load({"FACET_MAX_FACES": "5", "FACET_PRIMARY_FACE": "center",
                                 "FACET_MAX_UPLOAD_BYTES": "1000", "FACET_TTA": "on"})
    options = settings.answer_options()
    assert (options.max_faces, options.primary_rule, options.rules.max_bytes, options.tta) == (
        5, "center", 1000, True)


@pytest.mark.parametrize("field,value,message", [("mode", "fast", "mode must be one of"),
                                                 ("primary_rule", "left", "primary face rule"),
                                                 ("max_faces", 0, "max_faces must be at least 1"),
                                                 ("face_score", 1.5, "face_score"),
                                                 ("device", "gpu", "device must be one of")])
def test_bad_options_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        AnswerOptions(**{field: value})
    with pytest.raises(ValueError, match=message):  # the same check behind the service settings
        ServeConfig(**{field: value})


def test_the_answers_key_moves_with_what_changes_answers_only():
    base = AnswerOptions().answers_key()
    assert AnswerOptions(threads=1, spinning=False, mode="separate").answers_key() == base
    assert AnswerOptions(max_faces=3).answers_key() != base
    assert AnswerOptions(tta=True).answers_key() != base


def _uniform(n):
    return {a: np.full((n, len(c)), 1 / len(c), np.float32) for a, c in ATTRIBUTES.items()}


def test_collector_takes_rows_in_any_order_and_once():
    collected = Collector(4)
    probs = np.eye(18, dtype=np.float32)[[3, 7]]
    face = Face((1.0, 2.0, 3.0, 4.0), 0.9)
    collected.fail(2, "unreadable")
    collected.fail(3, "first try lost")
    collected.put([3, 0], _uniform(2), probs, [True, False], [face, None])
    collected.put([3], _uniform(1), probs[:1], [True], [face])  # a retried task: counted once
    result = collected.result(["a", "b", "c", "d"])
    assert result.labels.tolist() == [7, -1, -1, 3]
    assert result.errors == [(2, "c", "unreadable")]  # row 3 answered on its retry
    assert np.isnan(result.probs[1]).all() and np.isnan(result.attributes["mask"][2]).all()
    assert result.face_found == [False, None, None, True] and result.primary[3] == face


def test_a_row_the_models_answered_with_nan_is_an_error_not_a_label():
    collected = Collector(2)
    probs = np.eye(18, dtype=np.float32)[[5, 0]]
    probs[1, 0] = np.nan  # e.g. an fp16 graph that overflowed
    collected.put([0, 1], _uniform(2), probs)
    result = collected.result(["a", "b"])
    assert result.labels.tolist() == [5, -1]
    assert result.errors == [(1, "b", "the models answered NaN (try the fp32 variant)")]
