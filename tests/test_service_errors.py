"""The service's error handling, without a server: unexpected exceptions, an overloaded or
unreachable model service, and large images decoded off the event loop."""
import asyncio
import dataclasses
import io
import os
import threading

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from facet.preprocess import PreprocessSpec
from facet.serve import http_errors, model_calls, service, uploads
from facet.serve.options import Decoder


class FlakyModel:
    """A model-service client that fails ``failures`` times with ``error``, then answers."""

    def __init__(self, error: Exception, failures: int):
        self.error, self.failures, self.calls = error, failures, 0

    async def infer(self, images):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return np.zeros((len(images), 26), np.float32)


def test_an_unexpected_exception_is_a_json_500_on_a_usable_connection():
    async def broken(request):
        raise RuntimeError("boom")

    async def fine(request):
        return service.JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/broken", http_errors.guard(broken)),
                            Route("/fine", http_errors.guard(fine))])
    with TestClient(app, raise_server_exceptions=True) as client:
        r = client.get("/broken")
        assert r.status_code == 500 and r.json()["error"]["message"].startswith("internal error")
        assert client.get("/fine").json() == {"ok": True}


def test_overloaded_model_service_is_a_503_with_retry_after_and_is_not_retried():
    model = FlakyModel(ServiceUnavailable("busy"), failures=1)
    with pytest.raises(http_errors.HTTPError) as caught:
        asyncio.run(model_calls.infer(model, np.zeros((1, 8, 8, 3), np.uint8)))
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
    assert model.calls == 1
    response = http_errors.error_response(caught.value.status, caught.value.message, caught.value.headers)
    assert response.headers["retry-after"] == "1"


def test_lost_calls_are_sent_again_within_the_deadline():
    lost = FlakyModel(aiohttp.ServerDisconnectedError(), failures=2)
    out = asyncio.run(model_calls.infer(lost, np.zeros((3, 8, 8, 3), np.uint8)))
    assert out.shape == (3, 26) and lost.calls == 3
    never = FlakyModel(aiohttp.ClientOSError(), failures=10**6)
    with pytest.raises(http_errors.HTTPError) as caught:
        asyncio.run(model_calls.infer(never, np.zeros((1, 8, 8, 3), np.uint8), deadline_s=0.3))
    assert caught.value.status == 503 and 1 < never.calls < 50


def test_uploads_decode_on_the_pool_and_below_a_threshold_inline(monkeypatch):
    """Every upload decodes off the event loop by default, those over ``large_pixels`` on
    threads of lower priority; with ``offload_pixels`` set, those under it decode inline."""
    threads: list[str] = []
    nice: list[int] = []
    real = uploads.decode_now

    def record(*args):
        threads.append(threading.current_thread().name)
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(*args)

    monkeypatch.setattr(uploads, "decode_now", record)
    decoder = Decoder((PreprocessSpec(32, 32),), service.OPTIONS.rules)

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (120, 80, 60)).save(buf, "PNG")
        return buf.getvalue()

    async def both(decode=service.DECODING):
        big = await decode("big", png(2000, 1500), decoder, None)
        small = await decode("small", png(64, 64), decoder, None)
        return big[1], small[1]

    assert service.CONFIG.offload_pixels == 0
    big, small = asyncio.run(both())
    assert big.shape == small.shape == (1, 32 * 32 * 3,)
    assert len(threads) == 2 and all(t.startswith("facet-decode") for t in threads)
    assert nice[0] == nice[1] == os.getpriority(os.PRIO_PROCESS, 0)
    threads.clear()
    nice.clear()
    asyncio.run(both(uploads.Decoding(dataclasses.replace(
        service.CONFIG, offload_pixels=10_000, large_pixels=1_000_000))))
    assert threads[0].startswith("facet-decode-large") and threads[1] == "MainThread"
    assert nice[0] == min(19, nice[1] + uploads.LARGE_NICE)


def test_a_client_that_disconnects_mid_upload_is_logged_as_such_not_as_a_500(caplog):
    app = Starlette(routes=[Route("/predict", http_errors.guard(service.predict), methods=["POST"])])
    messages = iter([{"type": "http.request", "body": b"\x89PNG\r\n\x1a\n" + b"\0" * 1000,
                      "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "server": ("testserver", 80), "client": ("testclient", 50000),
             "headers": [(b"content-type", b"image/png"), (b"content-length", b"100000")]}
    with caplog.at_level("INFO", logger=http_errors.log.name):
        asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == http_errors.CLIENT_CLOSED  # a 4xx: not counted as a server error
    records = [r for r in caplog.records if r.name == http_errors.log.name]
    assert [r.levelname for r in records] == ["INFO"], [r.getMessage() for r in records]
    assert "client disconnected" in records[0].getMessage()
    assert "1,008 bytes received" in records[0].getMessage() and records[0].exc_info is None


class NaNModels:
    """A front's view of a model service whose models answer NaN for the photo named nan.png."""

    decoder = Decoder((PreprocessSpec(32, 32),))
    detector = None

    async def model_info(self):
        return {"versions": {"mask": "m", "gender": "g", "age": "a"}}

    async def infer(self, images):
        out = np.concatenate([np.full((len(images), k), 1 / k, np.float32)
                              for k in (3, 2, 3, 18)], axis=1)
        out[images[:, 0] == 7] = np.nan  # nan.png's pixels start at 7
        return out


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def test_a_nan_answer_is_an_error_with_a_message_not_a_generic_500():
    """The service gathers its answers as `facet predict` does (one Collector): NaN is that
    photo's error, named, and the other photos of a batch are answered."""
    with pytest.raises(http_errors.HTTPError) as caught:
        asyncio.run(service._answer_one(NaNModels(), "nan.png", _png(7)))
    assert caught.value.status == 500 and "answered NaN" in caught.value.message
    answer = asyncio.run(service._answer_many(NaNModels(), [("nan.png", _png(7)),
                                                            ("fine.png", _png(9))]))
    assert answer["answered"] == 1 and answer["failed"] == 1
    assert answer["results"][0]["error"] == {"status": 500, "message": caught.value.message}
    fine = answer["results"][1]
    assert fine["file"] == "fine.png" and fine["class"] == "wear/male/<30"
    assert fine["confidence"] == pytest.approx(1 / 18) and fine["model_versions"]["age"] == "a"
