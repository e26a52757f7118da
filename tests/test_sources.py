"""Training from several sources at once: each split by its own groups, scored on its own,
weighted in the sampler, and able to choose the checkpoint."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY
from facet.cli import app
from facet.manifest import DataError, read_manifest
from facet.models.data import combine, read_competition
from facet.models.recipe import load_recipe
from facet.models.train import Trainer
from facet.models.training_data import epoch_sampler

runner = CliRunner()


@pytest.fixture(scope="module")
def sources(dataset, tmp_path_factory):
    """Two manifests over the synthetic images: 'street' grouped by photo (4 faces a photo),
    'studio' grouped by person, with different column names for the group."""
    root = tmp_path_factory.mktemp("sources")
    table = read_competition(dataset / "train").frame
    codes = {0: "wear", 1: "incorrect", 2: "not_wear"}
    street = table.iloc[:120].reset_index(drop=True)
    pd.DataFrame({"path": street["path"], "mask": street["mask"].map(codes),
                  "photo": [f"ph{i // 4}" for i in range(len(street))]}).to_csv(
        root / "street.csv", index=False)
    studio = table.iloc[120:].reset_index(drop=True)
    pd.DataFrame({"path": studio["path"], "mask": studio["mask"], "sitter": studio["person"]}).to_csv(
        root / "studio.csv", index=False)
    return root


def _table(sources):
    return combine([read_manifest(sources / "street.csv", "/", "photo"),
                    read_manifest(sources / "studio.csv", "/", "sitter")])


def _trainer(sources, tmp_path, extra=()) -> Trainer:
    recipe, augment = load_recipe("mask")
    return Trainer(recipe.override([*TINY, *extra]), augment, _table(sources), tmp_path / "run",
                   tmp_path / "cache", device="cpu", workers=0)


def test_each_source_is_split_by_its_own_groups(sources, tmp_path):
    trainer = _trainer(sources, tmp_path)
    trainer._prepare()
    frame = trainer.data.frame
    assert set(frame["source"]) == {"street", "studio"}
    for name in ("street", "studio"):
        rows = frame["source"] == name
        train = set(frame["person"][rows].iloc[np.isin(np.flatnonzero(rows), trainer.data.train_set.rows)])
        val = set(frame["person"][rows].iloc[np.isin(np.flatnonzero(rows), trainer.data.val_set.rows)])
        assert train and val and not train & val
        assert trainer.data.split["sources"][name]["val_images"] == len(
            np.intersect1d(np.flatnonzero(rows), trainer.data.val_set.rows))
    alone = Trainer(trainer.recipe, load_recipe("mask")[1],
                    read_manifest(sources / "street.csv", "/", "photo"), tmp_path / "r2",
                    tmp_path / "cache", device="cpu", workers=0)
    alone._prepare()  # a source's split does not depend on the other sources
    assert set(alone.data.frame["path"].iloc[alone.data.val_set.rows]) == set(
        frame["path"].iloc[trainer.data.val_set.rows][frame["source"].iloc[trainer.data.val_set.rows] == "street"])


@pytest.mark.slow
def test_per_source_metrics_and_the_checkpoint_follows_the_named_source(sources, tmp_path):
    result = _trainer(sources, tmp_path, ["epochs=3", "patience=9", "select_on=street"]).fit()
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    for column in ("val_macro_f1@street", "val_macro_f1@studio", "val_f1_incorrect@street"):
        assert column in metrics
    assert (metrics["val_selected"] == metrics["val_macro_f1@street"]).all()
    meta = json.loads((result.run_dir / "best.json").read_text())
    assert meta["epoch"] == metrics.loc[metrics["val_macro_f1@street"].idxmax(), "epoch"]
    assert meta["val_selected"] == {"on": "street", "macro_f1": metrics["val_macro_f1@street"].max()}
    assert set(meta["val_by_source"]) == {"street", "studio"}
    recorded = json.loads((result.run_dir / "recipe.json").read_text())["data"]["sources"]
    assert set(recorded) == {"street", "studio"}
    assert set(pd.read_csv(result.run_dir / "val.csv")["source"]) == {"street", "studio"}


def test_source_weights_set_each_sources_share_of_an_epoch():
    labels = np.array([0, 1] * 45 + [2] * 10)
    sources = np.array(["big"] * 90 + ["small"] * 10)
    recipe = load_recipe("mask")[0].override(["source_weights=small=3"])
    shares, absent = recipe.source_shares({"big": 90, "small": 10})
    assert shares == {"big": 0.25, "small": 0.75} and absent == []
    weighted = epoch_sampler(labels, "balanced", 8000, sources, shares)
    weighted.generator.manual_seed(0)
    drawn = sources[list(weighted)]
    assert (drawn == "small").mean() == pytest.approx(0.75, abs=0.02)
    by_size = epoch_sampler(labels, "none", 8000, sources)
    by_size.generator.manual_seed(0)
    assert (sources[list(by_size)] == "small").mean() == pytest.approx(0.10, abs=0.02)
    # a recipe may weight sources a run does not have (the mask recipe names its real sources)
    assert recipe.source_shares({"big": 5}) == ({"big": 1.0}, ["small"])
    assert recipe.override(["select_on=small,mean"]).selection(["big", "other"]) == "mean"


def test_missing_malformed_or_clashing_sources_are_clear_errors(sources, dataset, tmp_path):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    gone = tmp_path / "gone_images.csv"
    pd.DataFrame({"path": ["nope1.jpg", "nope2.jpg"], "mask": "wear", "person": "p"}).to_csv(
        gone, index=False)
    cases = [(["--manifest", str(tmp_path / "gone.csv")], "manifest not found"),
             (["--manifest", str(binary)], "not a readable CSV"),
             (["--manifest", f"{sources / 'street.csv'},grp=photo"], "is not group=..., root=..., name=..."),
             (["--manifest", f"{sources / 'street.csv'},group=photo,root=/",
               "--manifest", f"{sources / 'street.csv'},group=photo,root=/"], "share a name"),
             (["--manifest", f"{sources / 'street.csv'},group=photo,root=/,name=a",
               "--manifest", f"{sources / 'studio.csv'},group=sitter,root=/,name=b",
               "--set", "select_on=c"], "select_on='c'"),
             (["--data", str(dataset / "train"), "--manifest",
               f"{sources / 'street.csv'},root=/,name=street"], "no group column 'person'"),
             (["--data", str(dataset / "train"), "--manifest", str(gone)],
              "source gone_images: no usable image"),
             (["--data", f"{dataset / 'train'},name=a", "--data", f"{dataset / 'train'},name=a"],
              "share a name"),
             (["--manifest", f"{sources / 'street.csv'},group=photo,root=/", "--fixes",
               str(binary)], "not a readable CSV")]
    for args, message in cases:
        result = runner.invoke(app, ["train", "mask", *args, "--run-dir", str(tmp_path / "run"),
                                     *[a for kv in TINY for a in ("--set", kv)]])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_a_source_without_the_attribute_is_refused(sources, tmp_path):
    frame = pd.read_csv(sources / "studio.csv")
    frame[["path", "sitter"]].assign(gender="female").to_csv(tmp_path / "no_mask.csv", index=False)
    table = combine([read_manifest(sources / "street.csv", "/", "photo"),
                     read_manifest(tmp_path / "no_mask.csv", "/", "sitter")])
    recipe, augment = load_recipe("mask")
    trainer = Trainer(recipe.override(TINY), augment, table, tmp_path / "run", tmp_path / "cache",
                      device="cpu", workers=0)
    with pytest.raises(DataError, match="no mask labels in \\['no_mask'\\]"):
        trainer._prepare()
