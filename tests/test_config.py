import os

import pytest

from facet import privacy
from facet.serve.config import ServeConfig


def test_defaults_then_file_then_environment(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[serve]\nmodels = "from_file"\nmax_batch_size = 8\nbatching = false\n')
    cfg = ServeConfig.load({"FACET_CONFIG": str(toml), "FACET_MAX_BATCH_SIZE": "16"})
    assert cfg.models == "from_file" and cfg.max_batch_size == 16 and cfg.batching is False
    assert cfg.max_pixels == ServeConfig().max_pixels
    assert cfg.spinning is False and ServeConfig.load({"FACET_SPINNING": "on"}).spinning is True
    rules = ServeConfig.load({"FACET_MIN_SIDE": "24", "FACET_MAX_ASPECT": "3.5"}).answer_options().rules
    assert (rules.min_side, rules.max_aspect, rules.max_pixels) == (24, 3.5, cfg.max_pixels)


def test_renamed_settings_keep_their_earlier_names(tmp_path):
    old = ServeConfig.load({"FACET_MIN_IMAGE_SIDE": "24", "FACET_PRIMARY_FACE": "center"})
    assert (old.min_side, old.primary_rule) == (24, "center")
    toml = tmp_path / "serve.toml"
    toml.write_text('[serve]\nprimary_face = "center"\n')
    assert ServeConfig.load({"FACET_CONFIG": str(toml)}).primary_rule == "center"
    overridden = ServeConfig.load({"FACET_CONFIG": str(toml), "FACET_PRIMARY_RULE": "largest"})
    assert overridden.primary_rule == "largest"  # the environment over the file, either name
    with pytest.raises(ValueError, match="one setting"):
        ServeConfig.load({"FACET_PRIMARY_FACE": "center", "FACET_PRIMARY_RULE": "largest"})


@pytest.mark.parametrize("env,match", [({"FACET_BATCHING": "maybe"}, "not a boolean"),
                                       ({"FACET_WORKERS": "two"}, "invalid literal")])
def test_bad_settings_are_refused(env, match):
    with pytest.raises(ValueError, match=match):
        ServeConfig.load(env)


def test_broken_toml_names_the_file(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("[serve\nmodels = 1\n")
    with pytest.raises(ValueError, match=f"{toml}: not valid TOML"):
        ServeConfig.load({"FACET_CONFIG": str(toml)})


def test_unknown_setting_in_file(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text("[serve]\nmax_batchsize = 8\n")
    with pytest.raises(ValueError, match="max_batchsize"):
        ServeConfig.load({"FACET_CONFIG": str(toml)})


def test_telemetry_is_off_by_default_but_overridable(monkeypatch):
    monkeypatch.delenv("BENTOML_DO_NOT_TRACK", raising=False)
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    privacy.apply_defaults()
    assert os.environ["BENTOML_DO_NOT_TRACK"] == "True"
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "0"  # a user's explicit choice stands
