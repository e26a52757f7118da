import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import encode, png_header_bomb
from facet.cli import app
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor

runner = CliRunner()



@pytest.fixture
def eval_dir(dataset, tmp_path):
    """The synthetic eval folder plus three broken rows in the middle of info.csv."""
    d = shutil.copytree(dataset / "eval", tmp_path / "eval")
    images = sorted((d / "images").glob("*.jpg"))
    (d / "images" / "not_image.jpg").write_text("this is text")
    data = images[0].read_bytes()
    (d / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    info = pd.read_csv(d / "info.csv")
    bad = pd.DataFrame({"ImageID": ["not_image.jpg", "cut.jpg", "gone.jpg"], "ans": 0})
    pd.concat([info.iloc[:5], bad, info.iloc[5:]]).to_csv(d / "info.csv", index=False)
    return d


def test_predict_fills_answers_in_order_and_reports_bad_rows(exported, eval_dir, tmp_path):
    out = tmp_path / "submission.csv"
    result = runner.invoke(app, ["predict", str(eval_dir), "--models", str(exported), "-o", str(out),
                                 "--details", str(tmp_path / "details.csv")])
    assert result.exit_code == 3, result.output
    info = pd.read_csv(eval_dir / "info.csv", dtype=str)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert list(sub.columns) == ["ImageID", "ans"]
    bad = sub["ImageID"].isin(["not_image.jpg", "cut.jpg", "gone.jpg"])
    assert (sub.loc[bad, "ans"] == "").all()  # never a made-up label
    assert sub.loc[~bad, "ans"].astype(int).between(0, 17).all()
    errors = pd.read_csv(tmp_path / "submission.errors.csv")
    assert errors["row"].tolist() == [6, 7, 8]
    assert "not a recognised" in errors["error"][0] and "truncated" in errors["error"][1]
    assert errors["error"][2] == "file not found"
    details = pd.read_csv(tmp_path / "details.csv")
    good = details[details["error"].isna()]
    assert (good["label"] == sub.loc[~bad, "ans"].astype(int).to_numpy()).all()
    np.testing.assert_allclose(good.filter(like="p_mask_").sum(axis=1), 1.0, atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_modes_and_batch_sizes_agree(exported, dataset):
    inputs = read_inputs(dataset / "eval")
    results = []
    for mode, batch in (("separate", 64), ("ensemble", 7), ("separate", 1)):
        predictor = Predictor(exported, mode=mode)
        results.append(predict_paths(predictor, inputs.paths, batch_size=batch, progress=False))
    for other in results[1:]:
        assert (other.labels == results[0].labels).all()
        np.testing.assert_allclose(other.probs, results[0].probs, atol=1e-5)


def test_spinning_off_reaches_onnxruntime_and_changes_no_answer(exported, dataset):
    paths = read_inputs(dataset / "eval").paths[:10]
    quiet = Predictor(exported, mode="separate", spinning=False)
    for session in quiet.sessions.values():
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = predict_paths(Predictor(exported, mode="separate"), paths, progress=False)
    np.testing.assert_allclose(predict_paths(quiet, paths, progress=False).probs, spinning.probs,
                               atol=1e-6)


def test_tta_and_int8_run(exported, dataset):
    paths = read_inputs(dataset / "eval").paths[:10]
    plain = predict_paths(Predictor(exported), paths, progress=False)
    tta = predict_paths(Predictor(exported, tta=True), paths, progress=False)
    assert not np.allclose(plain.probs, tta.probs)  # flipped views change the average
    np.testing.assert_allclose(tta.probs.sum(1), 1.0, atol=1e-4)


def test_int8_answers_track_the_fp32_answers_of_the_same_models(exported, dataset):
    """The int8 files answer what the fp32 files of the same models answer: probabilities
    close, and the same labels up to near-ties. (The fixture's tiny models are near-uniform,
    top-2 margins ~1e-5, so a bare argmax match would be a coin toss: a label counts as agreed
    when fp32 rates it within ``tie`` of its own best.)"""
    paths = read_inputs(dataset / "eval").paths[:32]
    fp32 = predict_paths(Predictor(exported, variant="fp32"), paths, progress=False)
    int8 = predict_paths(Predictor(exported, variant="int8"), paths, progress=False)
    assert not fp32.errors and not int8.errors
    assert not np.array_equal(int8.probs, fp32.probs)  # the int8 files did answer
    rows = np.arange(len(paths))

    def agreement(ref: np.ndarray, labels: np.ndarray, tie: float) -> tuple[float, float]:
        """(share of labels within ``tie`` of ref's best, share equal where ref is decisive)"""
        top2 = np.sort(ref, 1)[:, -2:]
        decisive = top2[:, 1] - top2[:, 0] > 2 * tie
        near = (ref.max(1) - ref[rows, labels] <= tie).mean()
        same = (ref.argmax(1) == labels)[decisive].mean() if decisive.any() else 1.0
        return near, same

    for attribute in fp32.attributes:
        a, b = fp32.attributes[attribute], int8.attributes[attribute]
        gap = np.abs(a - b)
        assert gap.mean() < 0.02 and gap.max() < 0.1, (attribute, gap.mean(), gap.max())
        assert min(agreement(a, b.argmax(1), tie=0.02)) >= 0.9, attribute
    assert min(agreement(fp32.probs, int8.labels, tie=0.01)) >= 0.9  # the 18-class answer
    # the softmax stays float in the int8 graphs: their answers are probabilities
    for probs in (int8.probs, *int8.attributes.values()):
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_csv_with_path_column_and_plain_folder(exported, dataset, tmp_path):
    images = sorted((dataset / "eval" / "images").glob("*.jpg"))[:4]
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(p) for p in images], "note": list("abcd")}).to_csv(csv, index=False)
    out = tmp_path / "out.csv"
    assert runner.invoke(app, ["predict", str(csv), "--models", str(exported), "-o", str(out)]).exit_code == 0
    sub = pd.read_csv(out)
    assert sub["note"].tolist() == list("abcd") and sub["ans"].between(0, 17).all()
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    (folder / "readme.txt").write_text("not an image, not picked up")
    out2 = tmp_path / "out2.csv"
    assert runner.invoke(app, ["predict", str(folder), "--models", str(exported), "-o", str(out2)]).exit_code == 0
    assert len(pd.read_csv(out2)) == 4


def test_bad_arguments_are_clear(exported, dataset, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "nope.csv"), "--models", str(exported),
                                 "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path), "--models", str(exported), "-o", "o.csv"])
    assert result.exit_code == 2 and "holds no images" in result.output
    result = runner.invoke(app, ["predict", str(dataset / "eval"), "--models", str(tmp_path),
                                 "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "facet.json" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_score_reports_overall_and_per_attribute(exported, dataset, tmp_path):
    out = tmp_path / "sub.csv"
    assert runner.invoke(app, ["predict", str(dataset / "eval"), "--models", str(exported),
                               "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["score", "--pred", str(out), "--answers",
                                 str(dataset / "eval" / "answers.csv"), "--json",
                                 "--plot", str(tmp_path / "cm.png")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output[: result.output.rindex("}") + 1])
    answers = pd.read_csv(dataset / "eval" / "answers.csv")
    sub = pd.read_csv(out)
    merged = answers.merge(sub, on="ImageID", suffixes=("", "_pred"))
    assert scores["accuracy"] == pytest.approx((merged["ans"] == merged["ans_pred"]).mean())
    assert set(scores["attributes"]) == {"mask", "gender", "age"}
    assert (tmp_path / "cm.png").stat().st_size > 1000
    perfect = runner.invoke(app, ["score", "--pred", str(dataset / "eval" / "answers.csv"),
                                  "--answers", str(dataset / "eval" / "answers.csv")])
    assert "18-class macro-F1 1.0000" in perfect.output


@pytest.mark.integration
def test_inference_path_never_imports_torch(exported, dataset, tmp_path):
    code = f"""
import sys
from facet.atomic import write_csv
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.tables import submission
from facet.serve.predictor import Predictor
from facet.cli import app
inputs = read_inputs({str(dataset / 'eval')!r})
result = predict_paths(Predictor({str(exported)!r}), inputs.paths, progress=False)
write_csv(__import__('pathlib').Path({str(tmp_path / 's.csv')!r}), submission(inputs, result))
heavy = [m for m in ('torch', 'timm', 'albumentations', 'torchvision', 'sklearn',
                      'matplotlib') if m in sys.modules]
print('HEAVY', heavy)
assert (result.labels >= 0).all()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_swapped_model_files_are_refused(exported, tmp_path):
    from facet.model_metadata import ModelFileError
    models = shutil.copytree(exported, tmp_path / "models")
    manifest = json.loads((models / "facet.json").read_text())
    fp32 = manifest["models"]["fp32"]
    fp32["mask"], fp32["age"] = fp32["age"], fp32["mask"]
    (models / "facet.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="the mask model holds age"):
        Predictor(models, mode="separate")


@pytest.mark.integration
def test_hostile_rows_are_per_row_errors_and_the_run_goes_on(exported, dataset, tmp_path,
                                                             header_bomb):
    images = tmp_path / "images"
    images.mkdir()
    good = sorted((dataset / "eval" / "images").glob("*.jpg"))[:2]
    for p in good:
        shutil.copy(p, images / p.name)
    os.mkfifo(images / "pipe.jpg")
    (images / "bomb.png").write_bytes(header_bomb)
    (images / "dot.png").write_bytes(encode(Image.new("RGB", (1, 1))))
    data = good[0].read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    rows = {"pipe.jpg": "not a regular file", "/dev/zero": "not a regular file",
            "../../etc/passwd": "leads outside the images folder", "bomb.png": "pixel limit",
            "dot.png": "minimum side", "cut.jpg": "truncated"}
    csv = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": [good[0].name, *rows, good[1].name]}).to_csv(csv, index=False)
    out = tmp_path / "sub.csv"
    result = subprocess.run([sys.executable, "-m", "facet.cli", "predict", str(csv), "--images",
                             str(images), "--models", str(exported), "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["ans"].iloc[0] != "" and sub["ans"].iloc[-1] != ""
    assert (sub["ans"].iloc[1:-1] == "").all()  # no made-up label for any hostile row
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert errors["row"].tolist() == list(range(2, 2 + len(rows)))
    for message, expected in zip(errors["error"], rows.values()):
        assert expected in message
    allowed = subprocess.run([sys.executable, "-m", "facet.cli", "predict", str(csv), "--images",
                              str(images), "--models", str(exported), "-o", str(out),
                              "--allow-outside"], capture_output=True, text=True, timeout=120)
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert allowed.returncode == 3 and "outside" not in " ".join(errors["error"])


def test_folder_names_what_it_skips(exported, dataset, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted((dataset / "eval" / "images").glob("*.jpg"))[0], folder / "a.jpg")
    Image.new("RGB", (40, 40)).save(folder / "b.gif")
    Image.new("RGB", (40, 40)).save(folder / "c.tiff")
    (folder / "bomb.png").write_bytes(png_header_bomb())
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "o.csv"
    result = runner.invoke(app, ["predict", str(folder), "--models", str(exported), "-o", str(out)])
    assert result.exit_code == 3, result.output  # every image is a row: three have no answer
    assert "skipped 1 file(s) that are not images: notes.txt" in result.output
    answers = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert [Path(p).name for p in answers["path"]] == ["a.jpg", "b.gif", "bomb.png", "c.tiff"]
    assert answers["ans"].tolist()[0] != "" and (answers["ans"].iloc[1:] == "").all()
    errors = pd.read_csv(tmp_path / "o.errors.csv")
    assert [Path(p).name for p in errors["path"]] == ["b.gif", "bomb.png", "c.tiff"]
    assert "a GIF image is not read" in errors["error"][0] and "pixel limit" in errors["error"][1]
    assert "a TIFF image is not read" in errors["error"][2]


@pytest.mark.parametrize("target", ["folder", "parent_is_file", "unwritable"])
def test_output_is_checked_before_predicting(exported, dataset, tmp_path, target):
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path, "parent_is_file": tmp_path / "file" / "sub.csv",
           "unwritable": Path("/proc/facet-sub.csv")}[target]
    t = time.perf_counter()
    result = runner.invoke(app, ["predict", str(dataset / "eval"), "--models", str(exported),
                                 "-o", str(out)])
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "predicting" not in result.output and time.perf_counter() - t < 10


@pytest.fixture
def unreplaceable(tmp_path):
    """An existing output file that the final write cannot replace: immutable (chattr +i) as
    root, whom permissions do not stop; read-only (0o444) otherwise."""
    target = tmp_path / "sub.csv"
    target.write_text("ImageID,ans\nkeep.jpg,1\n")
    if os.geteuid() != 0:
        target.chmod(0o444)
        yield target
        target.chmod(0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root and chattr is not installed: no way to make a file unwritable")
    made = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed here: {made.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def test_check_writable_refuses_an_existing_file_that_cannot_be_replaced(unreplaceable):
    from facet.atomic import write_csv
    from facet.serve.inputs import InputError, check_writable
    with pytest.raises(OSError):  # the write it stands for does fail (a read-only file is
        open(unreplaceable, "a").close()  # replaced by the rename, but refused on purpose)
    if os.geteuid() == 0:
        with pytest.raises(OSError):
            write_csv(unreplaceable, pd.DataFrame({"ImageID": ["a.jpg"], "ans": [0]}))
    with pytest.raises(InputError, match=f"cannot write {unreplaceable}: the file exists"):
        check_writable(unreplaceable)
    assert unreplaceable.read_text() == "ImageID,ans\nkeep.jpg,1\n"
    assert [p.name for p in unreplaceable.parent.iterdir()] == ["sub.csv"]  # no probe left


def test_check_writable_leaves_a_writable_file_as_it_is(tmp_path):
    from facet.serve.inputs import check_writable
    target = tmp_path / "sub.csv"
    target.write_text("ImageID,ans\nkeep.jpg,1\n")
    check_writable(target)  # opened for append: neither truncated nor touched
    assert target.read_text() == "ImageID,ans\nkeep.jpg,1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "missing"])
def test_broken_model_file_is_a_clear_error(exported, dataset, tmp_path, damage):
    models = shutil.copytree(exported, tmp_path / "models")
    target = models / "gender.onnx"
    data = target.read_bytes()
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes({"truncated": data[: len(data) // 3], "empty": b"",
                            "text": b"hello, not a model"}[damage])
    result = runner.invoke(app, ["predict", str(dataset / "eval"), "--models", str(models),
                                 "--mode", "separate", "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {target}")
    assert ("not a valid ONNX model" if damage != "missing" else "file not found") in result.output


def test_unreadable_csv_and_index_files_are_named(exported, dataset, tmp_path):
    empty, binary = tmp_path / "empty.csv", tmp_path / "binary.csv"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)) * 8)
    for csv, reason in ((empty, "empty CSV"), (binary, "not a readable CSV")):
        result = runner.invoke(app, ["predict", str(csv), "--models", str(exported), "-o",
                                     str(tmp_path / "o.csv")])
        assert result.exit_code == 2 and f"{csv}: {reason}" in result.output, result.output
    models = shutil.copytree(exported, tmp_path / "models")
    (models / "facet.json").write_text("{not json")
    result = runner.invoke(app, ["predict", str(dataset / "eval"), "--models", str(models),
                                 "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and f"{models / 'facet.json'}: not a readable" in result.output
