"""`facet predict --engine ray` against `--engine local`: the same answers, errors and files, on
a local Ray with 2 CPUs, on a 2-node cluster on loopback, and with an S3-compatible store."""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import facet
from conftest import S3_KEYS, encode, png_header_bomb
from facet.cli import app
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs

ray = pytest.importorskip("ray")
from facet.serve.options import AnswerOptions  # noqa: E402
from facet.serve.ray_engine import Cluster, Job  # noqa: E402
from facet.serve.ray_workers import Answering  # noqa: E402
from facet.serve.predictor import Predictor  # noqa: E402

pytestmark = pytest.mark.integration
runner = CliRunner()
HOSTILE = {"not_image.jpg": "not a recognised", "cut.jpg": "truncated", "gone.jpg": "file not found",
           "pipe.jpg": "not a regular file", "/dev/zero": "not a regular file",
           "../../etc/passwd": "leads outside the images folder", "bomb.png": "pixel limit",
           "dot.png": "minimum side"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module; the engine joins it instead of starting one."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in S3_KEYS.items():  # before the workers start: they inherit them
            mp.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def eval_dir(dataset, tmp_path_factory):
    """The synthetic eval folder with hostile rows in the middle of info.csv."""
    d = shutil.copytree(dataset / "eval", tmp_path_factory.mktemp("ray") / "eval")
    images = d / "images"
    data = sorted(images.glob("*.jpg"))[0].read_bytes()
    (images / "not_image.jpg").write_text("this is text")
    (images / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    os.mkfifo(images / "pipe.jpg")
    (images / "bomb.png").write_bytes(png_header_bomb())
    (images / "dot.png").write_bytes(encode(Image.new("RGB", (1, 1))))
    info = pd.read_csv(d / "info.csv", dtype=str)
    bad = pd.DataFrame({"ImageID": list(HOSTILE), "ans": "0"})
    pd.concat([info.iloc[:5], bad, info.iloc[5:]]).to_csv(d / "info.csv", index=False)
    return d


def predict(*args) -> tuple[int, str]:
    result = runner.invoke(app, ["predict", *map(str, args)])
    return result.exit_code, result.output


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def assert_same_details(ray_details, local_details):
    ray_frame, local_frame = pd.read_csv(ray_details), pd.read_csv(local_details)
    assert list(ray_frame.columns) == list(local_frame.columns)
    probs = [c for c in local_frame.columns if c.startswith("p_")]
    text = [c for c in local_frame.columns if c not in probs and c != "confidence"]
    pd.testing.assert_frame_equal(ray_frame[text], local_frame[text])
    np.testing.assert_allclose(ray_frame[probs + ["confidence"]], local_frame[probs + ["confidence"]],
                               atol=1e-6)


def test_ray_gives_the_local_engines_files(local_ray, exported, eval_dir, tmp_path):
    local, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    code, _ = predict(eval_dir, "--models", exported, "-o", local, "--details", tmp_path / "l.csv")
    assert code == 3
    code, output = predict(eval_dir, "--models", exported, "-o", ray_out, "--engine", "ray",
                           "--details", tmp_path / "r.csv", "--part-size", 25)
    assert code == 3, output
    assert "parts: 3 done, 0 skipped, 0 failed" in output and "on 1 node(s)" in output
    assert ray_out.read_bytes() == local.read_bytes()  # the submission, byte for byte
    assert (tmp_path / "ray.errors.csv").read_bytes() == (tmp_path / "local.errors.csv").read_bytes()
    errors = read(tmp_path / "ray.errors.csv")
    assert errors["row"].tolist() == [str(r) for r in range(6, 6 + len(HOSTILE))]
    for message, expected in zip(errors["error"], HOSTILE.values()):
        assert expected in message
    assert_same_details(tmp_path / "r.csv", tmp_path / "l.csv")
    parts = sorted((tmp_path / "ray.parts").iterdir())
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet",
                                       "part-00002.parquet"]
    part = pd.read_parquet(parts[0])  # the manifest's columns, the answer, the details, the error
    assert list(part.columns[:2]) == ["ImageID", "ans"] and "p_age_>=60" in part.columns
    assert part["error"].iloc[5:13].str.len().gt(0).all() and part["label"].iloc[0] >= 0


def test_a_rerun_resumes_after_the_parts_written(local_ray, exported, eval_dir, tmp_path):
    out, parts = tmp_path / "sub.csv", tmp_path / "parts"
    args = [eval_dir, "--models", exported, "-o", out, "--engine", "ray", "--parts-dir", parts,
            "--part-size", 10]
    assert predict(*args)[0] == 3
    whole = out.read_bytes()
    written = sorted(parts.iterdir())
    assert len(written) == 7  # 64 rows
    for lost in (written[1], written[4], written[6]):  # a job killed before these were written
        lost.unlink()
    (parts / ".part-00001.parquet.x1y2.tmp").write_bytes(b"half a part")
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    out.unlink()
    code, output = predict(*args)
    assert code == 3 and "parts: 3 done, 4 skipped, 0 failed" in output, output
    assert out.read_bytes() == whole  # every row once, in order
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*") if p.name in kept} == kept
    code, output = predict(*args)  # nothing left: no Ray job at all
    assert "parts: 0 done, 7 skipped" in output and out.read_bytes() == whole
    other = tmp_path / "other.csv"
    read(eval_dir / "info.csv").iloc[1:].to_csv(other, index=False)
    code, output = predict(other, "--images", eval_dir / "images", *args[1:])
    assert code == 2 and "holds parts of another input" in output, output


def test_ray_only_options_are_checked(exported, eval_dir, tmp_path, monkeypatch):
    code, output = predict(eval_dir, "--models", exported, "-o", tmp_path / "o.csv", "--engine",
                           "ray", "--faces", "all", "--details", tmp_path / "d.csv")
    assert code == 2 and "--engine local only" in output
    code, output = predict("s3://bucket/eval", "--models", exported, "-o", tmp_path / "o.csv")
    assert code == 2 and "--engine ray" in output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "facet.serve.ray_engine")
    code, output = predict(eval_dir, "--models", exported, "-o", tmp_path / "o.csv", "--engine", "ray")
    assert code == 2 and "pip install 'facet[ray]'" in output


def test_manifest_images_and_parts_in_an_object_store(local_ray, exported, dataset, s3, tmp_path):
    images = sorted((dataset / "eval" / "images").glob("*.jpg"))[:12]
    for image in images:
        s3.upload_file(str(image), "facet-test", f"eval/images/{image.name}")
    rows = pd.DataFrame({"file": [p.name for p in images] + ["gone.jpg"],
                         "mask": list("0120120120120")})  # a label column, named like an answer
    rows.to_parquet(tmp_path / "manifest.parquet")
    s3.upload_file(str(tmp_path / "manifest.parquet"), "facet-test", "eval/manifest.parquet")
    out = tmp_path / "sub.csv"
    code, output = predict("s3://facet-test/eval/manifest.parquet", "--images",
                           "s3://facet-test/eval/images", "--models", exported, "-o", out,
                           "--engine", "ray", "--parts-dir", "s3://facet-test/out/", "--part-size", 5)
    assert code == 3, output
    listed = s3.list_objects_v2(Bucket="facet-test", Prefix="out/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"out/part-0000{k}.parquet" for k in range(3)]
    local = predict_paths(Predictor(exported), [dataset / "eval" / "images" / n for n in rows["file"]],
                          progress=False)
    sub = read(out)
    assert list(sub.columns) == ["file", "mask", "ans"] and sub["mask"].tolist() == rows["mask"].tolist()
    s3.download_file("facet-test", "out/part-00000.parquet", str(tmp_path / "part.parquet"))
    part = pd.read_parquet(tmp_path / "part.parquet")
    assert part["input_mask"].tolist() == list("01201") and set(part["mask"]) <= {"wear", "incorrect",
                                                                                  "not_wear"}
    assert sub["ans"].tolist() == [str(v) if v >= 0 else "" for v in local.labels]
    errors = read(tmp_path / "sub.errors.csv")
    assert errors.values.tolist() == [["13", "s3://facet-test/eval/images/gone.jpg", "file not found"]]


def test_actors_run_on_the_node_with_their_resource(exported, dataset, tmp_path):
    """Last: it replaces the module's Ray with a 2-node cluster on loopback."""
    from ray.cluster_utils import Cluster as RayCluster
    ray.shutdown()
    cluster = RayCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1, resources={"facet_models": 1})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        inputs = read_inputs(dataset / "eval")
        job = Job(inputs, exported, Answering(AnswerOptions()), tmp_path / "parts", part_size=20)
        report = job.run(Cluster(resources={"facet_models": 1}))
        assert report.done == 3 and report.failed == 0
        assert report.nodes == {worker.node_id} != {cluster.head_node.node_id}
        local = predict_paths(Predictor(exported), inputs.paths, progress=False)
        sub = pd.concat(list(job.submission()))
        assert sub["ans"].astype(int).tolist() == local.labels.tolist()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_job_key_follows_the_detector_file_contents_not_its_path(tmp_path):
    shipped = Path(facet.__file__).parent / "assets" / "face_detection_yunet_n.onnx"
    copy, other = tmp_path / "same.onnx", tmp_path / "other.onnx"
    shutil.copy(shipped, copy)
    shutil.copy(Path(facet.__file__).parent / "assets" / "face_detection_yunet_2023mar.onnx", other)
    same = Answering(AnswerOptions(detector=str(copy)))
    assert same.detector_file == ("same.onnx", shipped.read_bytes())  # read on the driver
    assert same.key() == Answering(AnswerOptions(detector=str(shipped))).key()
    assert same.key() != Answering(AnswerOptions(detector=str(other))).key()
