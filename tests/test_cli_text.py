"""What a user reads: every command's help, and the messages and files of `facet predict`,
`facet report` and `facet export` (predict runs on hand-made ONNX models, no training)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from facet.cli import app
from facet.combine import ATTRIBUTES, class_names
from facet.draw import WHOLE_IMAGE, draw_results
from facet.faces import Face
from facet.preprocess import PreprocessSpec
from facet.atomic import write_csv
from facet.serve.inputs import Inputs
from facet.serve.tables import face_details
from facet.serve.results import BatchResult, FaceAnswer
from facet.model_metadata import METADATA_KEY

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
runner = CliRunner()
COMMANDS = get_command(app).commands


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_keeps_the_brackets_of_every_extra(name):
    command = COMMANDS[name]
    written = " ".join([command.help or "", *(p.help or "" for p in command.params)])
    shown = " ".join(_help(name).split())  # wrapped lines joined again
    for extra in re.findall(r"facet\[\w+\]", written):
        assert extra in shown, f"{name} --help lost {extra}"


def test_the_extras_are_named_where_they_are_needed():
    for name, extra in [("train", "track"), ("tune", "track"), ("export", "track"),
                        ("predict", "ray")]:
        assert f"pip install 'facet[{extra}]'" in " ".join(_help(name).split())


def test_the_command_list_is_one_whole_line_each_at_80_columns():
    listing = _help().split("Commands:\n")[1].splitlines()
    assert len(listing) == len(COMMANDS)
    for line, (name, command) in zip(listing, COMMANDS.items()):
        first = command.help.split("\n\n")[0]
        assert "\n" not in first and line.split() == [name, *first.split()], line
        assert len(line) <= 78 and "..." not in line
        rest = " ".join(command.help.split("\n\n")[1].split())
        assert rest and rest in " ".join(_help(name).split())  # the rest in its own help


def test_serve_help_documents_port_and_every_device():
    shown = " ".join(_help("serve").split())
    assert "--port <int> Port to listen on." in shown
    assert "auto, cpu, cuda or tensorrt" in shown


# -- predict on hand-made models: a mean colour per channel, a fixed matrix, a softmax ---------

def _model(attribute: str, spec: PreprocessSpec) -> onnx.ModelProto:
    k = len(ATTRIBUTES[attribute])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, k],
                                 np.linspace(-1, 1, 3 * k, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        attribute, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                  ["batch", 3, spec.height, spec.width])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", k])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(
        {"attribute": attribute, "classes": list(ATTRIBUTES[attribute]),
         "preprocess": spec.to_dict()}))
    return model


def _models(folder: Path, crop: str) -> Path:
    folder.mkdir()
    for attribute in ATTRIBUTES:
        onnx.save(_model(attribute, PreprocessSpec(48, 48, crop=crop)), folder / f"{attribute}.onnx")
    (folder / "facet.json").write_text(json.dumps(
        {"models": {"fp32": {a: f"{a}.onnx" for a in ATTRIBUTES}}}))
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two real photos with faces (400 px wide) and a 64 px face crop."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("group3.jpg", "single.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(folder / "crop.png")
    return folder


def _predict(models: Path, source: Path, tmp_path: Path, *args: str):
    return runner.invoke(app, ["predict", str(source), "--models", str(models),
                               "-o", str(tmp_path / "out.csv"), *args])


def test_photos_given_to_whole_image_models_are_named_and_drawn_so(photos, tmp_path):
    models = _models(tmp_path / "whole", "none")
    result = _predict(models, photos, tmp_path, "--draw", str(tmp_path / "drawn"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 of the first 3 images" in warnings[0]
    assert "48 px input" in warnings[0] and "--set crop=face" in warnings[0]
    assert "none found" not in result.output  # no face was looked for
    crops = _predict(models, photos / "crop.png", tmp_path)
    assert crops.exit_code == 0 and "warning:" not in crops.output


def test_faces_all_with_whole_image_models_names_the_fix(photos, tmp_path):
    result = _predict(_models(tmp_path / "whole", "none"), photos, tmp_path, "--faces", "all",
                      "--details", str(tmp_path / "faces.csv"))
    assert result.exit_code == 2
    assert "crop=none" in result.output and "--set crop=face" in result.output


def test_the_no_face_count_shows_only_when_a_photo_had_none(photos, tmp_path):
    models = _models(tmp_path / "faces", "face")
    found = _predict(models, photos / "group3.jpg", tmp_path, "--faces", "all",
                     "--details", str(tmp_path / "faces.csv"))
    assert found.exit_code == 0, found.output
    assert "none found" not in found.output
    missed = _predict(models, photos / "crop.png", tmp_path)
    assert missed.exit_code == 0 and "none found in 1 of 1 answered photos" in missed.output


def _label_right_edge(path: Path) -> int:
    """The rightmost column of the red no-face label in the top-left corner."""
    rgb = cv2.imread(str(path))[:, :, ::-1].astype(int)
    red = (rgb[:8, :, 0] > 170) & (rgb[:8, :, 1] < 110) & (rgb[:8, :, 2] < 110)
    return int(np.flatnonzero(red.any(0)).max())


def test_a_whole_image_answer_is_not_drawn_as_no_face_found(tmp_path):
    paths = []
    for name in ("whole", "missed"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(np.full((400, 600, 3), 128, np.uint8)).save(paths[-1])
    probs = np.full((2, 18), 0.05, np.float32)
    probs[:, 17] = 0.15
    result = BatchResult(np.array([17, 17]), {}, probs, face_found=[None, False],
                         primary=[None, None])
    assert draw_results(paths, result, tmp_path / "drawn") == 2
    text = f"{class_names()[17]} 0.15"
    for name, caption in (("whole", WHOLE_IMAGE + text), ("missed", "no face: " + text)):
        (width, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 400 / 900, 1)
        assert abs(_label_right_edge(tmp_path / "drawn" / f"{name}.jpg") - (width + 4)) <= 2


def test_every_csv_flag_is_spelled_true_or_false(tmp_path):
    uniform = {a: np.full(len(c), 1 / len(c), np.float32) for a, c in ATTRIBUTES.items()}
    probs = np.full(18, 1 / 18, np.float32)
    faces = [FaceAnswer(0, k, Face((10.0 * k, 0.0, 20.0, 20.0), 0.9), k == 0, uniform, probs)
             for k in range(2)]
    result = BatchResult(np.array([0]), {a: p[None] for a, p in uniform.items()}, probs[None],
                         face_found=[True], primary=[faces[0].face], faces=faces)
    inputs = Inputs(pd.DataFrame({"ImageID": ["a.jpg"]}), [Path("a.jpg")])
    write_csv(tmp_path / "faces.csv", face_details(inputs, result))
    rows = pd.read_csv(tmp_path / "faces.csv", dtype=str)
    assert rows["primary"].tolist() == ["true", "false"]
    assert rows["face_found"].tolist() == ["true", "true"]


def test_a_face_answered_nan_is_an_error_in_the_face_details_not_class_0():
    uniform = {a: np.full(len(c), 1 / len(c), np.float32) for a, c in ATTRIBUTES.items()}
    broken = {a: np.full(len(c), np.nan, np.float32) for a, c in ATTRIBUTES.items()}
    probs = np.full(18, 1 / 18, np.float32)
    faces = [FaceAnswer(0, 0, Face((0.0, 0.0, 20.0, 20.0), 0.9), True, uniform, probs),
             FaceAnswer(0, 1, Face((30.0, 0.0, 20.0, 20.0), 0.8), False, broken,
                        np.full(18, np.nan, np.float32))]
    result = BatchResult(np.array([0]), {a: p[None] for a, p in uniform.items()}, probs[None],
                         face_found=[True], primary=[faces[0].face], faces=faces)
    rows = face_details(Inputs(pd.DataFrame({"path": ["a.jpg"]}), [Path("a.jpg")]), result)
    assert rows["label"].tolist() == [0, -1] and rows["class"].tolist() == ["wear/male/<30", ""]
    assert rows["error"].tolist() == ["", "the models answered NaN (try the fp32 variant)"]
    assert rows["mask"].tolist() == ["wear", ""]


def test_report_says_which_score_the_group_gap_is_of(tmp_path):
    from test_report import synthetic
    details, answers = synthetic()
    details.to_csv(tmp_path / "details.csv", index=False)
    answers.to_csv(tmp_path / "answers.csv", index=False)
    result = runner.invoke(app, ["report", "--pred", str(tmp_path / "details.csv"), "--answers",
                                 str(tmp_path / "answers.csv"), "--out", str(tmp_path / "report"),
                                 "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert re.search(r"18-class macro-F1 by site: largest gap A over B \d\.\d{4}", result.output)
    assert "Largest gap in 18-class macro-F1: A over B" in (tmp_path / "report" / "report.md").read_text()


def test_export_keeps_the_exporters_progress_for_verbose(runs, tmp_path):
    args = ["export", *(str(runs[a]) for a in ATTRIBUTES), "--no-ensemble", "--no-calibrate"]
    quiet = runner.invoke(app, [*args, "--out", str(tmp_path / "quiet")])
    assert quiet.exit_code == 0, quiet.output
    assert "[torch.onnx]" not in quiet.output and "mask" in quiet.output
    loud = runner.invoke(app, ["--verbose", *args, "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert loud.output.count("[torch.onnx] Translate the graph into ONNX... ✅") == 3


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_in_a_log_is_a_line_every_few_seconds_not_one_per_update(monkeypatch, terminal):
    """100 updates, each a second or more apart: a terminal redraws its bar for each; a log
    (CI, nohup) gets a line every LOG_INTERVAL seconds and the last one."""
    import tqdm.std

    from facet.progress import LOG_INTERVAL, progress_bar

    clock = iter(range(10_000))
    monkeypatch.setattr(tqdm.std, "time", lambda: float(next(clock)))
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    stream = io.StringIO()
    stream.isatty = lambda: terminal
    for _ in progress_bar(range(100), file=stream, desc="predicting", leave=False):
        pass
    lines = [line for line in stream.getvalue().split("\r") if "predicting" in line]
    if terminal:
        assert len(lines) >= 100
    else:
        assert 2 <= len(lines) <= 100 / LOG_INTERVAL + 2
        assert "100/100" in lines[-1]


def test_the_photo_peek_reads_headers_of_allowed_rows_only(photos, tmp_path, monkeypatch):
    """Before predicting, whole-image models look at the inputs' sizes: a CSV row leading
    outside the images folder is refused without being opened, and the others are read only
    as far as their header."""
    import facet.image_files as image_files
    outside = tmp_path / "outside.jpg"
    shutil.copy(PHOTOS / "group3.jpg", outside)
    csv = photos / "rows.csv"
    csv.write_text("path\ngroup3.jpg\n../outside.jpg\nsingle.jpg\n")
    opened, peeked = [], []
    regular_file = image_files._regular_file

    @contextlib.contextmanager
    def recording(path):
        opened.append(Path(path).resolve())
        with regular_file(path) as (f, size):
            yield f, size

    def header_size(path):
        peeked.append(Path(path).resolve())
        return original_header_size(path)

    original_header_size = image_files.header_size
    monkeypatch.setattr(image_files, "_regular_file", recording)
    monkeypatch.setattr(image_files, "header_size", header_size)
    result = _predict(_models(tmp_path / "whole", "none"), csv, tmp_path)
    assert result.exit_code == 3, result.output  # the outside row has no answer
    assert "leads outside the images folder" in result.output
    assert "2 of the first 2 images" in result.output
    assert peeked == [(photos / n).resolve() for n in ("group3.jpg", "single.jpg")]
    assert outside.resolve() not in opened


def test_header_size_reads_the_header_alone(tmp_path, monkeypatch):
    import facet.image_files as image_files
    from facet.image_files import HEADER_BYTES, header_size
    large = tmp_path / "large.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (600, 500, 3), dtype=np.uint8)).save(large)
    assert large.stat().st_size > 10 * HEADER_BYTES
    read = []
    regular_file = image_files._regular_file

    class Counting:
        def __init__(self, f):
            self.f, self.bytes = f, 0

        def read(self, size=-1):
            data = self.f.read(size)
            self.bytes += len(data)
            return data

    @contextlib.contextmanager
    def counting(path):
        with regular_file(path) as (f, size):
            yield (counted := Counting(f)), size
            read.append(counted.bytes)

    monkeypatch.setattr(image_files, "_regular_file", counting)
    assert header_size(large) == (500, 600)
    assert read == [HEADER_BYTES]
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert header_size(fifo) is None and header_size(tmp_path) is None  # refused, not read
    (tmp_path / "text.jpg").write_text("not an image")
    assert header_size(tmp_path / "text.jpg") is None
