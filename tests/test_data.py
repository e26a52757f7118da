import shutil

import pandas as pd
import pytest

from facet.combine import AgeRule
from facet.manifest import DataError, read_manifest
from facet.models.data import apply_fixes, combine, read_competition, training_labels


@pytest.fixture
def train_dir(dataset, tmp_path):
    """A private copy of the synthetic train/ folder that a test may break."""
    return shutil.copytree(dataset / "train", tmp_path / "train")


def test_reads_the_competition_layout(dataset):
    table = read_competition(dataset / "train")
    f = table.frame
    assert len(f) == 40 * 7 and f["person"].nunique() == 40 and not table.problems
    per_person = f.groupby("person")["mask"].value_counts().unstack()
    assert (per_person[0] == 5).all() and (per_person[1] == 1).all() and (per_person[2] == 1).all()
    csv = pd.read_csv(dataset / "train" / "train.csv", dtype={"id": str})
    row = csv.iloc[0]
    person = f[f["person"] == row["id"]]
    assert (person["age_years"] == row["age"]).all()
    assert (person["gender"] == ("male", "female").index(row["gender"])).all()


def test_problems_are_named_and_skipped(train_dir):
    images = train_dir / "images"
    folders = sorted(p for p in images.iterdir())
    (folders[0] / "mask3.jpg").unlink()  # missing image
    folders[1].rename(images / "000999_female_Asian")  # malformed name
    folders[2].rename(images / f"{folders[2].name.rsplit('_', 1)[0]}_200")  # impossible age
    (images / ".DS_Store").write_text("x")  # hidden: ignored silently
    (folders[3] / "._mask1.jpg").write_text("x")
    (folders[3] / "selfie.jpg").write_bytes((folders[3] / "mask1.jpg").read_bytes())
    table = read_competition(train_dir)
    text = "\n".join(table.problems)
    assert "mask3.*: missing image" in text and folders[0].name in text
    assert "000999_female_Asian: folder name" in text
    assert "age 200 is outside" in text
    assert "selfie.jpg: unexpected image name" in text
    assert ".DS_Store" not in text and "._mask1" not in text
    assert table.frame["person"].nunique() == 38  # two folders unusable
    assert len(table.frame) == 38 * 7 - 1
    with pytest.raises(DataError, match="missing image|folder name|outside|unexpected"):
        read_competition(train_dir, strict=True)


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="images does not exist"):
        read_competition(tmp_path)


def test_manifest_with_groups_and_bad_rows(dataset, tmp_path):
    images = sorted((dataset / "train" / "images").glob("*/normal.jpg"))[:4]
    rows = [{"path": str(p), "mask": "not_wear", "photo": f"p{i // 2}"} for i, p in enumerate(images)]
    rows.append({"path": "nowhere.jpg", "mask": "wear", "photo": "p9"})
    rows.append({"path": str(images[0]), "mask": "sideways", "photo": "p9"})
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    table = read_manifest(csv, group="photo")
    assert len(table.frame) == 4 and (table.frame["mask"] == 2).all()
    assert (table.frame["gender"] == -1).all() and (table.frame["age"] == -1).all()
    assert table.frame["person"].tolist() == ["p0", "p0", "p1", "p1"]
    assert any("labels.csv:6" in p and "not found" in p for p in table.problems)
    assert any("labels.csv:7" in p and "sideways" in p for p in table.problems)
    with pytest.raises(DataError, match="path"):
        pd.DataFrame({"file": ["a"], "mask": [0]}).to_csv(tmp_path / "bad.csv", index=False)
        read_manifest(tmp_path / "bad.csv")


def test_label_fixes(dataset, tmp_path):
    table = read_competition(dataset / "train")
    pid = table.frame["person"].iloc[0]
    before = table.frame[table.frame["person"] == pid].set_index("path")
    fixes = tmp_path / "fixes.csv"
    pd.DataFrame({"id": [pid, pid, pid, "nobody"], "field": ["gender", "age", "mask_swap", "age"],
                  "value": ["female" if before["gender"].iloc[0] == 0 else "male", "61", "", "3"]}
                 ).to_csv(fixes, index=False)
    fixed, = apply_fixes([table], fixes)
    after = fixed.frame[fixed.frame["person"] == pid].set_index("path")
    assert (after["gender"] == 1 - before["gender"]).all()
    assert (after["age_years"] == 61).all() and (after["age"] == 2).all()
    assert after.loc[[p for p in after.index if p.endswith("normal.jpg")], "mask"].tolist() == [1]
    assert after.loc[[p for p in after.index if p.endswith("incorrect_mask.jpg")], "mask"].tolist() == [2]
    assert (after["mask"] == 0).sum() == 5
    assert any("nobody" in p for p in fixed.problems)
    others = fixed.frame["person"] != pid
    pd.testing.assert_frame_equal(fixed.frame[others], table.frame[others])


def test_label_fixes_reach_a_manifest_and_name_a_source_where_persons_clash(dataset, tmp_path):
    """A manifest's persons are its group values; a person two sources hold is named as
    SOURCE/PERSON, and a bare id that could be either is refused, not applied twice."""
    folder = read_competition(dataset / "train", name="folder")
    pid = folder.frame["person"].iloc[0]
    images = folder.frame[folder.frame["person"] == pid]
    pd.DataFrame({"path": images["path"], "gender": "male", "age": 40, "sitter": pid}).to_csv(
        tmp_path / "m.csv", index=False)
    pd.DataFrame({"path": images["path"].iloc[:2], "gender": "female", "age": 20,
                  "sitter": "solo"}).to_csv(tmp_path / "solo.csv", index=False)
    manifest = read_manifest(tmp_path / "m.csv", group="sitter", name="street")
    solo = read_manifest(tmp_path / "solo.csv", group="sitter", name="studio")
    fixes = tmp_path / "fixes.csv"
    pd.DataFrame({"id": ["solo", f"street/{pid}", pid, "studio/nobody"],
                  "field": ["gender", "age", "gender", "age"], "value": ["male", "65", "female", "3"]}
                 ).to_csv(fixes, index=False)
    tables = apply_fixes([folder, manifest, solo], fixes)
    frame = combine(tables).frame.set_index("person")
    assert (frame.loc["studio/solo", "gender"] == 0).all()  # a bare id one source holds
    assert (frame.loc[f"street/{pid}", "age_years"] == 65).all()
    assert (frame.loc[f"street/{pid}", "age"] == 2).all()
    assert (frame.loc[f"folder/{pid}", "age_years"] == folder.frame["age_years"].iloc[0]).all()
    assert (frame.loc[f"folder/{pid}", "gender"] == images["gender"].iloc[0]).all()  # not applied
    problems = combine(tables).problems
    assert any("in several sources" in p and "fixes.csv:4" in p for p in problems)
    assert any("'studio/nobody' is not in the data" in p for p in problems)
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="not a readable CSV"):
        apply_fixes([folder], tmp_path / "bad.csv")


def test_training_labels_move_and_drop_ages_but_truth_stays():
    frame = pd.DataFrame({"age_years": [25, 57, 58, 59, 60, -1], "age": [0, 1, 1, 1, 2, 2],
                          "gender": 0, "mask": 0})
    labels = training_labels(frame, "age", AgeRule((30, 58), drop=(57, 57)))
    assert labels.tolist() == [0, -1, 2, 2, 2, 2]
    assert frame["age"].tolist() == [0, 1, 1, 1, 2, 2]  # validation truth untouched
    assert training_labels(frame, "gender", AgeRule()).tolist() == [0] * 6


def test_manifest_without_its_group_column_is_refused_unless_group_none(dataset, tmp_path, caplog):
    images = sorted((dataset / "train" / "images").glob("*/normal.jpg"))[:3]
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"path": [str(p) for p in images], "mask": "not_wear",
                  "persn": ["a", "a", "b"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"no group column 'person' \(columns: \['path', 'mask', "
                                        r"'persn'\]\).*--group none"):
        read_manifest(csv)  # a misspelled column never silently becomes one group per image
    assert read_manifest(csv, group="persn").frame["person"].tolist() == ["a", "a", "b"]
    with caplog.at_level("WARNING", logger="facet.manifest"):
        table = read_manifest(csv, group="none")
    assert table.frame["person"].nunique() == 3 and table.group == "none"
    assert "val scores will be optimistic" in caplog.text
    assert "each its own group" in table.summary()


def test_a_face_box_past_the_images_edge_is_a_bad_row(tmp_path):
    """Boxes are checked against the image's size (EXIF orientation applied), like every other
    label: a box past the right or bottom edge is named and skipped, not cut as a black crop
    (or a crash of the image cache)."""
    from PIL import Image
    Image.new("RGB", (100, 80)).save(tmp_path / "wide.jpg")
    turned = Image.new("RGB", (100, 80))  # stored 100x80, shown 80x100 (EXIF: rotate 90)
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    rows = [("wide.jpg", 10, 10, 100, 80),  # up to the edge: fine
            ("wide.jpg", 10, 10, 101, 50),  # past the right edge
            ("wide.jpg", 150, 10, 160, 50),  # wholly past it
            ("wide.jpg", 10, 10, 50, 81),  # past the bottom
            ("turned.jpg", 10, 10, 80, 100),  # fits the turned image
            ("turned.jpg", 10, 10, 90, 50)]  # fits the stored one only
    pd.DataFrame([{"path": p, "person": f"p{i}", "mask": 0, "x0": a, "y0": b, "x1": c, "y1": d}
                  for i, (p, a, b, c, d) in enumerate(rows)]).to_csv(tmp_path / "m.csv", index=False)
    table = read_manifest(tmp_path / "m.csv")
    assert table.frame["person"].tolist() == ["p0", "p4"]
    assert len(table.problems) == 4
    assert all("past the edge" in p for p in table.problems)
    assert "m.csv:3 (wide.jpg)" in table.problems[0] and "100x80 image" in table.problems[0]
    assert "80x100 image" in table.problems[3]
    with pytest.raises(DataError, match="m.csv:3.*past the edge"):
        read_manifest(tmp_path / "m.csv", strict=True)
