"""Shared fixtures: a synthetic dataset, three tiny trained runs and their export.

Everything is made here, in seconds, with no network and nothing from ../shared.
"""
from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import pytest

from facet.synthetic import make_dataset

SLOW_FIXTURES = {"runs", "exported", "train_tiny", "face_exported"}  # each trains models


def pytest_collection_modifyitems(items):
    """A test that uses a model-training fixture is marked slow: `pytest -m "not slow"` is the
    fast inner loop without anyone having to remember the mark."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


TINY = ["backbone=test_efficientnet", "image_size=48", "pretrained=none", "epochs=1",
        "samples_per_epoch=128", "batch_size=32"]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), persons=40, eval_persons=8, size=64, seed=1)


def train_tiny(attribute: str, data: Path, run_dir: Path, cache: Path, extra=(), resume=False):
    from facet.models.data import read_competition
    from facet.models.recipe import load_recipe
    from facet.models.train import Trainer
    recipe, augment = load_recipe(attribute)
    recipe = recipe.override([*TINY, *extra])
    trainer = Trainer(recipe, augment, read_competition(data / "train"), run_dir, cache,
                      device="cpu", workers=0)
    return trainer.fit(resume=resume)


@pytest.fixture(name="train_tiny", scope="session")
def _train_tiny():
    """train_tiny(attribute, data, run_dir, cache, extra=(), resume=False) -> RunResult"""
    return train_tiny


@pytest.fixture(scope="session")
def runs(dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {a: train_tiny(a, dataset, root / a, root / "cache").run_dir
            for a in ("mask", "gender", "age")}


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory) -> Path:
    from facet.export.pipeline import export_all
    out = tmp_path_factory.mktemp("artifacts")
    export_all(runs, out, ensemble=True, quantize=True, fp16=True, echo=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def face_exported(dataset, tmp_path_factory) -> Path:
    """Three tiny models trained and exported with crop=face (the synthetic faces are cartoons,
    so training mostly takes the fallback region; the detector is tested on real photos)."""
    from facet.export.pipeline import export_all
    root = tmp_path_factory.mktemp("face_runs")
    runs = {a: train_tiny(a, dataset, root / a, root / "cache", extra=["crop=face"]).run_dir
            for a in ("mask", "gender", "age")}
    out = root / "artifacts"
    export_all(runs, out, ensemble=True, echo=lambda *_: None)
    return out


# pyarrow's S3 client in Ray workers signs with these; moto accepts any
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server on loopback (moto) with the bucket ``facet-test``; the driver
    reaches it by AWS_ENDPOINT_URL (Ray workers too, when Ray starts after this fixture)."""
    server_mod = pytest.importorskip("moto.server")
    import boto3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="facet-test")
    yield client
    server.stop()


def encode(image, fmt: str = "PNG", **kw) -> bytes:
    """A PIL image as the bytes of an image file."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_bomb(width=30_000, height=30_000) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header claims width x height pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


@pytest.fixture
def header_bomb() -> bytes:
    return png_header_bomb()
