"""The real HTTP server on loopback: answers, bad input, batching and an OpenAPI fuzz."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image

from conftest import encode
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor

pytestmark = pytest.mark.integration  # a real server on loopback

MAX_PIXELS = 1_000_000
MAX_UPLOAD = 600_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_and_log(exported, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "w+")
    env = {"FACET_MAX_PIXELS": str(MAX_PIXELS), "FACET_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
           "FACET_MAX_LATENCY_MS": "200", "FACET_BODY_TIMEOUT_S": "2"}
    proc, url = start_server(exported, port, env, log)
    yield url, log_path
    os.killpg(proc.pid, 15)
    proc.wait(30)


def start_server(models, port: int, env: dict, log, args=(), cwd=None,
                 verify=True) -> tuple[subprocess.Popen, str]:
    """`facet serve` on loopback, once /readyz answers; ``verify``: the CA file of an HTTPS
    server (``args`` with --tls-certfile/--tls-keyfile)."""
    proc = subprocess.Popen([sys.executable, "-m", "facet.cli", "serve", "--models", str(models),
                             "--port", str(port), *args], env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    scheme = "https" if "--tls-certfile" in args else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2, verify=verify).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(f"server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(server_and_log):
    return server_and_log[0]



def test_answers_equal_batch_predict(server, exported, dataset):
    paths = read_inputs(dataset / "eval").paths[:12]
    expected = predict_paths(Predictor(exported), paths, progress=False)
    for i, path in enumerate(paths[:6]):
        data = path.read_bytes()
        raw = httpx.post(f"{server}/v1/predict", content=data,
                         headers={"content-type": "image/jpeg"}, timeout=30)
        form = httpx.post(f"{server}/v1/predict", files={"image": (path.name, data, "image/jpeg")},
                          timeout=30)
        for r in (raw, form):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["label"] == expected.labels[i]
            got = [body["attributes"]["mask"]["probs"][c] for c in ("wear", "incorrect", "not_wear")]
            np.testing.assert_allclose(got, expected.attributes["mask"][i], atol=1e-5)
            assert set(body["model_versions"]) == {"mask", "gender", "age"}
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    batch = httpx.post(f"{server}/v1/predict/batch", files=files, timeout=60).json()
    assert [r["label"] for r in batch["results"]] == expected.labels.tolist()
    assert [r["file"] for r in batch["results"]] == [p.name for p in paths]


def test_image_modes_and_exif(server, dataset):
    path = read_inputs(dataset / "eval").paths[0]
    rgb = Image.open(path)
    for mode in ("L", "P", "RGBA", "CMYK"):
        image = rgb.convert(mode)
        buf = io.BytesIO()
        image.save(buf, "JPEG" if mode == "CMYK" else "PNG")
        r = httpx.post(f"{server}/v1/predict", files={"image": ("x", buf.getvalue())}, timeout=30)
        assert r.status_code == 200, (mode, r.text)
    # a photo stored sideways with an EXIF rotation answers like the upright one
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)
    exif = rotated.getexif()
    exif[0x0112] = 8
    sideways, upright = io.BytesIO(), io.BytesIO()
    rotated.save(sideways, "PNG", exif=exif.tobytes())
    rgb.save(upright, "PNG")
    a = httpx.post(f"{server}/v1/predict", files={"image": ("a", sideways.getvalue())}).json()
    b = httpx.post(f"{server}/v1/predict", files={"image": ("b", upright.getvalue())}).json()
    np.testing.assert_allclose(list(a["attributes"]["age"]["probs"].values()),
                               list(b["attributes"]["age"]["probs"].values()), atol=1e-4)


@pytest.mark.parametrize("kind,status", [
    ("text", 422), ("truncated", 422), ("empty", 400), ("json", 415), ("no_type", 415),
    ("bomb", 413), ("huge_upload", 413), ("form_without_file", 400), ("two_files", 400)])
def test_bad_input_gets_a_clear_4xx(server, dataset, kind, status):
    jpeg = read_inputs(dataset / "eval").paths[0].read_bytes()
    url = f"{server}/v1/predict"
    if kind == "text":
        r = httpx.post(url, files={"image": ("a.jpg", b"not an image at all")})
    elif kind == "truncated":
        r = httpx.post(url, content=jpeg[: len(jpeg) // 2], headers={"content-type": "image/jpeg"})
    elif kind == "empty":
        r = httpx.post(url, content=b"", headers={"content-type": "image/jpeg"})
    elif kind == "json":
        r = httpx.post(url, json={"image": "x"})
    elif kind == "no_type":
        r = httpx.post(url, content=jpeg, headers={"content-type": ""})
    elif kind == "bomb":
        r = httpx.post(url, content=encode(Image.new("RGB", (1100, 1000))),
                       headers={"content-type": "image/png"})
    elif kind == "huge_upload":
        r = httpx.post(url, content=os.urandom(MAX_UPLOAD + 1), headers={"content-type": "image/jpeg"})
    elif kind == "form_without_file":
        r = httpx.post(url, data={"image": "hello"}, files={"other": ("", b"")})
    else:
        r = httpx.post(url, files=[("image", ("a", jpeg)), ("image", ("b", jpeg))])
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_batch_reports_bad_files_alongside_good_ones(server, dataset):
    jpeg = read_inputs(dataset / "eval").paths[0].read_bytes()
    r = httpx.post(f"{server}/v1/predict/batch",
                   files=[("images", ("good.jpg", jpeg)), ("images", ("bad.jpg", b"xx"))])
    body = r.json()
    assert r.status_code == 200 and body["answered"] == 1 and body["failed"] == 1
    assert body["results"][1]["error"]["status"] == 422 and "label" not in body["results"][1]
    only_bad = httpx.post(f"{server}/v1/predict/batch", files=[("images", ("bad.jpg", b"xx"))])
    assert only_bad.status_code == 422


def test_concurrent_requests_are_answered_alike_and_counted(server, dataset):
    """16 clients at once get the same answer, and the model worker counts every image once
    and the batches it ran (how calls coalesce: test_coalesce.py, without timing)."""
    before = httpx.get(f"{server}/v1/info").json()["served"]
    data = read_inputs(dataset / "eval").paths[1].read_bytes()

    def call(_):
        return httpx.post(f"{server}/v1/predict", content=data,
                          headers={"content-type": "image/jpeg"}, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, range(48)))
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["label"] for r in responses}) == 1
    after = httpx.get(f"{server}/v1/info").json()["served"]
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == 48 and 1 <= batches <= 48
    assert after["busy_s"] > before["busy_s"]  # the model worker counts its running time


def test_info_and_bentoml_endpoints(server):
    info = httpx.get(f"{server}/v1/info").json()
    assert set(info["attributes"]) == {"mask", "gender", "age"}
    assert info["provider"] == "CPUExecutionProvider" and len(info["classes"]) == 18
    assert "val_macro_f1" in info["attributes"]["age"]
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server}{path}").status_code == 200


def test_fuzzed_requests_never_get_a_5xx(server):
    """Schemathesis draws requests from the OpenAPI description, valid and not."""
    schema = schemathesis.openapi.from_url(f"{server}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 3
    responses = schema.raw_schema["paths"]["/predict"]["post"]["responses"]
    assert "Retry-After" in responses["503"]["headers"] and "500" in responses
    statuses: list[int] = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def fuzz(case):
            response = case.call(timeout=30)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        fuzz()
    assert len(statuses) >= 30 and any(400 <= s < 500 for s in statuses)


def test_hostile_uploads_get_4xx_and_the_connection_stays_usable(server, dataset, header_bomb):
    jpeg = read_inputs(dataset / "eval").paths[0].read_bytes()
    bad = {"bomb.png": (header_bomb, 413, "pixel limit"),
           "cut.jpg": (jpeg[: len(jpeg) // 2] + b"\xff\xd9", 422, "truncated"),
           "dot.png": (encode(Image.new("RGB", (1, 1))), 422, "minimum side"),
           "strip.png": (encode(Image.new("RGB", (3, 5000))), 422, "aspect ratio")}
    with httpx.Client(base_url=server, timeout=30) as http:  # one keep-alive connection
        for name, (data, status, reason) in bad.items():
            r = http.post("/v1/predict", files={"image": (name, data)})
            assert r.status_code == status and reason in r.json()["error"]["message"], r.text
            assert http.post("/v1/predict", content=jpeg,
                             headers={"content-type": "image/jpeg"}).status_code == 200
        batch = http.post("/v1/predict/batch", files=[("images", ("good.jpg", jpeg)),
                                                      *[("images", (n, d)) for n, (d, _, _) in bad.items()]])
        assert batch.status_code == 200 and batch.json()["answered"] == 1
        assert [x["error"]["status"] for x in batch.json()["results"][1:]] == [413, 422, 422, 422]


def test_bmp_body_and_16_bit_png_answer_like_the_8_bit_picture(server, dataset):
    import cv2
    path = read_inputs(dataset / "eval").paths[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bmp = io.BytesIO()
    Image.fromarray(rgb).save(bmp, "BMP")
    png16 = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)[1].tobytes()
    answers = [httpx.post(f"{server}/v1/predict", content=data, headers={"content-type": kind},
                          timeout=30) for data, kind in ((encode(Image.fromarray(rgb)), "image/png"),
                                                         (bmp.getvalue(), "image/bmp"),
                                                         (png16, "image/png"))]
    assert [r.status_code for r in answers] == [200, 200, 200], answers[-1].text
    probs = [list(r.json()["attributes"]["age"]["probs"].values()) for r in answers]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-5)
    np.testing.assert_allclose(probs[2], probs[0], atol=2e-2)


def test_routing_errors_are_json(server):
    for method, path, status in (("GET", "/v1/nope", 404), ("GET", "/v1/predict", 405),
                                 ("DELETE", "/v1/info", 405)):
        r = httpx.request(method, f"{server}{path}")
        assert r.status_code == status and r.json()["error"]["status"] == status


def test_a_body_shorter_than_its_length_times_out(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/jpeg\r\n"
                     b"content-length: 1000\r\n\r\n" + b"\xff\xd8" * 5)
        t, reply = time.monotonic(), b""
        while b"did not arrive" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in reply
    assert time.monotonic() - t < 10


@pytest.mark.integration
def test_sigterm_stops_the_whole_server_tree(exported, tmp_path):
    import psutil
    port = _free_port()
    with open(tmp_path / "server.log", "w+") as log:
        proc, url = start_server(exported, port, {}, log)
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        assert len(tree) >= 3  # facet, the BentoML arbiter and its workers
        os.kill(proc.pid, 15)  # the facet process alone, as a process manager would
        t = time.monotonic()
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in tree], timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert time.monotonic() - t < 10
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/readyz", timeout=2)


def test_serve_refuses_a_broken_model_folder_at_start(exported, tmp_path):
    import shutil
    models = shutil.copytree(exported, tmp_path / "models")
    (models / "age.onnx").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "facet.cli", "serve", "--models", str(models),
                             "--port", str(_free_port())], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {models / 'age.onnx'}: not a valid ONNX model")


def test_service_module_never_imports_training_or_scoring_libraries():
    code = ("import sys; import facet.serve.service; "
            "print('HEAVY', [m for m in ('torch', 'timm', 'albumentations', 'sklearn', "
            "'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
