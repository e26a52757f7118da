"""Several runs from one command (local processes, Ray tasks), a stopped command resumed, and one
run over two processes (DDP on gloo): each ends with the metrics of the same run trained alone."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY
from facet.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()
TWO_EPOCHS = [a for kv in [*TINY, "epochs=2"] for a in ("--set", kv)]


def _args(dataset, run_dir, cache, *extra) -> list[str]:
    return ["train", "mask", "gender", "--data", str(dataset / "train"), "--run-dir",
            str(run_dir), "--cache-dir", str(cache), "--workers", "0", *TWO_EPOCHS, *extra]


def _cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facet.cli", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def _metrics(run) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="train_img_per_s")


@pytest.fixture(scope="module")
def one_after_another(dataset, tmp_path_factory):
    """mask then gender, in one process on one thread (the threads change float sums): what
    the parallel runs, one thread each on 2 cores, must match."""
    root = tmp_path_factory.mktemp("sequential")
    result = runner.invoke(app, _args(dataset, root / "runs", root / "cache", "--devices", "cpu",
                                      "--threads", "1"))
    assert result.exit_code == 0, result.output
    return root / "runs"


def _same_runs(root, reference) -> None:
    for attribute in ("mask", "gender"):
        pd.testing.assert_frame_equal(_metrics(root / attribute), _metrics(reference / attribute))


def _valid_cache(cache) -> None:
    """One entry (mask and gender share the preprocessing), whole, no temporary files."""
    names = sorted(p.name for p in cache.iterdir())
    assert sum(n.endswith(".npy") for n in names) == 1, names
    assert sum(n.endswith((".bad.json", ".faces.json")) for n in names) == 2, names
    assert not [n for n in names if n.endswith(".tmp")], names


def test_two_processes_on_one_cold_cache_match_one_after_another(one_after_another, dataset,
                                                                 tmp_path):
    result = _cli(*_args(dataset, tmp_path / "runs", tmp_path / "cache", "--devices", "cpu,cpu"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^mask: best val macro-F1 .* run folder", result.stdout, re.M)
    assert re.search(r"^gender: best val macro-F1 .* run folder", result.stdout, re.M)
    _same_runs(tmp_path / "runs", one_after_another)
    _valid_cache(tmp_path / "cache")


def test_ray_tasks_keep_their_runs_in_an_object_store(one_after_another, dataset, s3, tmp_path):
    """On a local Ray with 2 CPUs, the run folders in S3: the runs match those trained one
    after another, and a second command keeps them."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)  # after the s3 fixture: workers reach it
    try:
        result = runner.invoke(app, _args(dataset, "s3://facet-test/runs", tmp_path / "cache",
                                          "--engine", "ray", "--cpus-per-run", "1"))
        assert result.exit_code == 0, result.output
        assert "mask: best val macro-F1" in result.output and "run folder s3://facet-test/runs/mask" \
            in result.output
        again = runner.invoke(app, _args(dataset, "s3://facet-test/runs", tmp_path / "cache",
                                         "--engine", "ray", "--resume"))
    finally:
        ray.shutdown()
    assert again.exit_code == 0, again.output
    assert "mask: finished, kept (s3://facet-test/runs/mask)" in again.output
    assert "gender: finished, kept" in again.output and "train loss" not in again.output
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="facet-test")["Contents"]}
    assert {"runs/runs.json", "runs/mask/best.safetensors", "runs/gender/curves.png"} <= keys
    for attribute in ("mask", "gender"):
        s3.download_file("facet-test", f"runs/{attribute}/metrics.csv", str(tmp_path / "m.csv"))
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv").drop(columns="train_img_per_s"),
                                      _metrics(one_after_another / attribute))
    _valid_cache(tmp_path / "cache")


def test_one_failed_run_does_not_stop_the_others(dataset, tmp_path):
    """gender's run folder is a file: its run fails, mask's finishes; exit status 1."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "gender").write_text("in the way")
    result = _cli(*_args(dataset, tmp_path / "runs", tmp_path / "cache", "--devices", "cpu,cpu",
                         "--set", "epochs=1"))
    assert result.returncode == 1
    assert "gender: failed: " in result.stderr and "1 of 2 runs failed (gender)" in result.stderr
    assert (tmp_path / "runs" / "mask" / "best.safetensors").is_file()


def test_a_killed_parallel_command_resumes_each_unfinished_run_once(one_after_another, dataset,
                                                                    tmp_path):
    root, cache = tmp_path / "runs", tmp_path / "cache"
    args = [sys.executable, "-m", "facet.cli", *_args(dataset, root, cache, "--devices", "cpu,cpu")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # its run processes share its group
    metrics = root / "mask" / "metrics.csv"
    while not (metrics.exists() and metrics.read_text().count("\n") == 2):  # mask's epoch 1
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = {a: len(torch.load(root / a / "last.pt", weights_only=True)["history"])
            if (root / a / "last.pt").exists() else 0 for a in ("mask", "gender")}
    assert done["mask"] == 1
    resumed = _cli("train", "mask", "gender", "--data", str(dataset / "train"), "--run-dir",
                   str(root), "--cache-dir", str(cache), "--workers", "0", "--devices",
                   "cpu,cpu", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for attribute in ("mask", "gender"):  # each epoch trained once: those left, no more
        trained = re.findall(rf"^{attribute} epoch (\d): train loss", resumed.stdout, re.M)
        assert trained == [str(e) for e in range(done[attribute] + 1, 3)], resumed.stdout
    _same_runs(root, one_after_another)
    again = _cli("train", "mask", "gender", "--data", str(dataset / "train"), "--run-dir",
                 str(root), "--cache-dir", str(cache), "--resume")
    assert again.returncode == 0, again.stderr
    assert "mask: finished, kept" in again.stdout and "gender: finished, kept" in again.stdout
    assert "train loss" not in again.stdout


def test_one_run_over_two_ddp_processes_writes_one_run_folder(dataset, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--module",
         "facet.cli", "train", "gender", "--data", str(dataset / "train"), "--run-dir", str(run),
         "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0",
         *TWO_EPOCHS], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("gender: best val macro-F1") == 1  # rank 0 speaks
    assert len(re.findall(r"^gender epoch 2: train loss", result.stdout, re.M)) == 1  # rank 0
    assert sorted(p.name for p in run.iterdir()) == sorted([
        "best.json", "best.safetensors", "confusion.png", "curves.png", "last.pt",
        "metrics.csv", "recipe.json", "val.csv", "val_by_age.csv", "val_by_age.png",
        "val_probs.npy"])
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == 2 * 128 // (2 * 32)  # each rank a half of every epoch's 128 images
    assert json.loads((run / "recipe.json").read_text())["processes"] == 2
    val = pd.read_csv(run / "val.csv")
    best = json.loads((run / "best.json").read_text())
    assert sum(map(sum, best["val_confusion"])) == len(val)  # every rank's slice gathered
