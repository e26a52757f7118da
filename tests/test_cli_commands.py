"""`facet make-data`, `facet report` and `facet demo` as a user runs them: their files, lines
and exit codes. The demo's steps train for minutes, so its test records the commands it would
run (each checked against the CLI's own parser) instead of running them."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from facet.cli import app
from facet.cli.demo import DEMO_EXTRA, DEMO_RECIPE
from facet.combine import ATTRIBUTES, MASK_BY_STEM
from facet.models.data import FOLDER_RE, read_competition

runner = CliRunner()
COMMANDS = get_command(app).commands


def test_make_data_writes_the_competition_layout_that_training_reads(tmp_path):
    out = tmp_path / "data"
    result = runner.invoke(app, ["make-data", str(out), "--persons", "3", "--eval-persons", "2",
                                 "--size", "32", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"wrote 3 train \+ 2 eval persons to {re.escape(str(out))} in \d+\.\ds\n",
                        result.output)

    folders = sorted((out / "train" / "images").iterdir())
    assert len(folders) == 3 and all(FOLDER_RE.match(f.name) for f in folders)
    for folder in folders:  # 7 images a person: mask1..mask5, incorrect_mask, normal
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.jpg" for s in MASK_BY_STEM)
    train_csv = pd.read_csv(out / "train" / "train.csv", dtype=str)
    assert list(train_csv.columns) == ["id", "gender", "race", "age", "path"]
    assert sorted(train_csv["path"]) == [f.name for f in folders]

    table = read_competition(out / "train", strict=True)
    assert not table.problems and len(table.frame) == 21
    assert table.frame["person"].nunique() == 3
    assert table.summary() == "21 images of 3 persons"
    for row in train_csv.itertuples():  # the labels are the folder's
        person = table.frame[table.frame["person"] == row.id]
        assert set(person["gender"]) == {ATTRIBUTES["gender"].index(row.gender)}
        assert set(person["age_years"]) == {int(row.age)}

    info = pd.read_csv(out / "eval" / "info.csv", dtype=str)
    answers = pd.read_csv(out / "eval" / "answers.csv")
    assert list(info.columns) == ["ImageID", "ans"] and (info["ans"] == "0").all()
    assert list(answers.columns) == ["ImageID", "ans", "mask", "gender", "age", "person"]
    assert len(info) == len(answers) == 14 and set(info["ImageID"]) == set(answers["ImageID"])
    assert sorted(p.name for p in (out / "eval" / "images").iterdir()) == sorted(info["ImageID"])
    assert answers["ans"].between(0, 17).all() and answers["person"].nunique() == 2


def _report_inputs(tmp_path):
    from test_report import synthetic
    details, answers = synthetic(600)
    details.to_csv(tmp_path / "details.csv", index=False)
    answers.to_csv(tmp_path / "answers.csv", index=False)
    return ["report", "--pred", str(tmp_path / "details.csv"), "--answers",
            str(tmp_path / "answers.csv"), "--resamples", "100"]


def test_report_writes_its_files_and_reads_the_temperatures_of_the_model_folder(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "facet.json").write_text(json.dumps(
        {"models": {"fp32": {a: f"{a}.onnx" for a in ("mask", "gender", "age")}},
         "calibration": {"mask": {"temperature": 1.5}, "gender": None}}))
    out = tmp_path / "report"
    result = runner.invoke(app, [*_report_inputs(tmp_path), "--out", str(out),
                                 "--models", str(models)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(rf"18-class macro-F1 \d\.\d{{4}} on 600 images; report: "
                        rf"{re.escape(str(out / 'report.md'))}", lines[0])
    assert any(re.fullmatch(r"  ECE mask: \d\.\d{4} \(before scaling \d\.\d{4}\)", line)
               for line in lines)
    assert any(re.fullmatch(r"  ECE gender: \d\.\d{4}", line) for line in lines)
    saved = json.loads((out / "report.json").read_text())
    assert saved["images"] == 600 and saved["calibration"]["mask"]["temperature"] == 1.5
    for name in ("report.md", "reliability.png", "groups.png"):
        assert (out / name).stat().st_size > 0


def test_report_errors_are_one_line_and_exit_2(tmp_path):
    args = _report_inputs(tmp_path)
    missing = runner.invoke(app, [*args[:2], str(tmp_path / "nope.csv"), *args[3:],
                                  "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ")
    assert "nope.csv" in missing.stderr and "Traceback" not in missing.output
    no_index = runner.invoke(app, [*args, "--out", str(tmp_path / "r"), "--models",
                                   str(tmp_path)])  # no facet.json there
    assert no_index.exit_code == 2 and "facet.json" in no_index.stderr


def _record(monkeypatch, fail_at: str | None = None, code: int = 5) -> list[list[str]]:
    calls: list[list[str]] = []

    def call(cmd, *args, **kwargs):
        calls.append(cmd)
        return code if fail_at and " ".join(cmd[3:]).startswith(fail_at) else 0

    monkeypatch.setattr(subprocess, "call", call)
    return calls


def test_demo_runs_each_step_as_a_user_would_type_it(monkeypatch, tmp_path):
    calls = _record(monkeypatch)
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--persons", "12"])
    assert result.exit_code == 0, result.output
    assert all(cmd[:3] == [sys.executable, "-m", "facet.cli"] for cmd in calls)
    steps = [cmd[3:] for cmd in calls]
    data, runs, models = out / "data", out / "runs", out / "artifacts"
    recipe = [a for kv in DEMO_RECIPE for a in ("--set", kv)]
    assert steps[0] == ["make-data", str(data), "--persons", "12", "--eval-persons", "3"]
    for step, attribute in zip(steps[1:4], ("mask", "gender", "age")):
        extra = [a for kv in DEMO_EXTRA.get(attribute, []) for a in ("--set", kv)]
        assert step == ["train", attribute, "--data", str(data / "train"), "--run-dir",
                        str(runs / attribute), "--cache-dir", str(out / "cache"), *recipe, *extra]
    assert steps[4] == ["export", str(runs / "mask"), str(runs / "gender"), str(runs / "age"),
                        "--out", str(models)]
    assert steps[5] == ["predict", str(data / "eval"), "--models", str(models), "-o",
                        str(out / "submission.csv"), "--details", str(out / "details.csv")]
    assert steps[6] == ["score", "--pred", str(out / "submission.csv"), "--answers",
                        str(data / "eval" / "answers.csv"), "--plot", str(out / "confusion.png")]
    assert len(steps) == 7
    for step in steps:  # every step is a valid command line of this CLI
        COMMANDS[step[0]].make_context(step[0], list(step[1:]))
    assert [line for line in result.stderr.splitlines() if line.startswith("$ ")] == \
        [f"$ facet {' '.join(step)}" for step in steps]
    assert result.stderr.splitlines()[-1] == (
        f"done: models in {models}, submission {out / 'submission.csv'}, serve them with: "
        f"facet serve --models {models}")


def test_demo_stops_at_the_first_failed_step_with_its_exit_code(monkeypatch, tmp_path):
    calls = _record(monkeypatch, fail_at="train gender", code=5)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 5
    assert [cmd[3:5] for cmd in calls] == [["make-data", str(tmp_path / "demo" / "data")],
                                           ["train", "mask"], ["train", "gender"]]
    assert "error: demo step failed: facet train gender --data" in result.stderr
    assert "--persons 120 --eval-persons 30" in result.stderr  # the default size
    assert "done:" not in result.stderr


SUPERVISED = """
import sys
from facet.serve.supervise import run_server
server = ("import subprocess, sys, time; pid = subprocess.Popen(['sleep', '60']).pid; "
          "open(sys.argv[1], 'w').write(str(pid)); time.sleep(float(sys.argv[2])); sys.exit(4)")
sys.exit(run_server([sys.executable, "-c", server, sys.argv[1], sys.argv[2]], {}, grace_s=2))
"""


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is dead
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def _pid(path, within_s: float = 10.0) -> int:
    deadline = time.monotonic() + within_s
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text())


@pytest.mark.integration
def test_serve_supervision_stops_the_servers_whole_process_group(tmp_path):
    """The server's exit status comes back and what it started dies with it; SIGTERM to
    `facet serve` stops the group and exits 128 + 15. serve/ stays free of bentoml here."""
    ended = subprocess.run([sys.executable, "-c", SUPERVISED, str(tmp_path / "a"), "0"],
                           timeout=60)
    assert ended.returncode == 4 and _gone(_pid(tmp_path / "a"))
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISED, str(tmp_path / "b"), "60"])
    worker = _pid(tmp_path / "b")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 128 + signal.SIGTERM and _gone(worker)
    loaded = subprocess.run([sys.executable, "-c", "import sys, facet.serve.supervise; "
                             "print(sorted({'bentoml', 'torch', 'onnxruntime'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
