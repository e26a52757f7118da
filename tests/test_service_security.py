"""The service as an operator deploys it: bearer tokens from a file, HTTPS with a throw-away
certificate, nothing of an upload left on disk or in the logs, large uploads decoded without
holding up small requests, and pages that load nothing from another host."""
from __future__ import annotations

import datetime
import io
import ipaddress
import os
import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from facet.serve.inputs import read_inputs
from test_service import _free_port, start_server
from test_ui import PHOTOS, browser_tools  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.integration
TOKENS = ["client-one-" + secrets.token_hex(16), "client-two-" + secrets.token_hex(16)]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def secure(exported, tmp_path_factory):
    """(url, TLS context trusting its certificate, folders the server could write to, its
    log)."""
    root = tmp_path_factory.mktemp("secure")
    folders = {name: root / name for name in ("work", "tmp", "bentoml_home")}
    for folder in folders.values():
        folder.mkdir()
    cert, key = _certificate(root)
    tokens = root / "tokens.txt"
    tokens.write_text("# one token per client\n" + "\n".join(TOKENS) + "\n")
    log_path = root / "server.log"
    log = open(log_path, "w+")
    env = {"TMPDIR": str(folders["tmp"]), "BENTOML_HOME": str(folders["bentoml_home"])}
    trust = ssl.create_default_context(cafile=str(cert))
    proc, url = start_server(exported, _free_port(), env, log, cwd=folders["work"], verify=trust,
                             args=["--api-tokens-file", str(tokens), "--tls-certfile", str(cert),
                                   "--tls-keyfile", str(key)])
    yield url, trust, folders, log_path
    os.killpg(proc.pid, 15)
    proc.wait(30)
    log.close()


def _auth(token: str = TOKENS[0]) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_request_needs_a_right_token_and_the_probes_stay_open(secure, dataset):
    url, trust, _, log_path = secure
    jpeg = read_inputs(dataset / "eval").paths[0].read_bytes()
    with httpx.Client(verify=trust, timeout=60) as client:
        def post(path: str, headers: dict) -> httpx.Response:
            return client.post(f"{url}{path}", headers=headers,
                               files={"image": ("face.jpg", jpeg, "image/jpeg")})

        for path in ("/v1/predict", "/classify"):
            none, wrong = post(path, {}), post(path, _auth("client-one-" + "0" * 32))
            assert none.status_code == wrong.status_code == 401
            assert none.headers["www-authenticate"] == 'Bearer realm="facet"'
            assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
            for token in TOKENS:  # every client's token in the file
                answer = post(path, _auth(token))
                assert answer.status_code == 200, answer.text
                assert 0 <= answer.json()["label"] < 18
        assert client.get(f"{url}/v1/info").status_code == 401
        assert client.get(f"{url}/v1/info", headers=_auth()).json()["service"]["max_faces"] > 0
        for probe in ("/healthz", "/livez", "/readyz", "/metrics"):
            assert client.get(f"{url}{probe}").status_code == 200, probe
    started = log_path.read_text()
    assert f"on {url}/v1" in started and "2 bearer token(s)" in started
    assert "clear text" not in started  # tokens with TLS: nothing to warn about


def test_tls_only_on_the_tls_port(secure):
    url, _, _, _ = secure
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https://", "http://") + "/readyz", timeout=10)
    with pytest.raises(httpx.TransportError):  # an unknown certificate is refused by default
        httpx.get(f"{url}/readyz", timeout=10)


def test_a_large_png_does_not_hold_up_small_requests(secure, dataset):
    """While a 36 Mpx PNG (a legal upload, ~120 KB on the wire) decodes, small requests keep
    being answered: decoding runs off the event loop. Their latency is measured in
    benchmarks/stall_bench.py."""
    url, trust, _, _ = secure
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (180, 150, 130)).save(buf, "PNG")
    large, small = buf.getvalue(), read_inputs(dataset / "eval").paths[0].read_bytes()
    headers = {**_auth(), "content-type": "image/png"}
    with httpx.Client(verify=trust, timeout=120) as client, ThreadPoolExecutor(1) as pool:
        def post(data: bytes) -> tuple[int, float]:
            status = client.post(f"{url}/v1/predict", content=data, headers=headers).status_code
            return status, time.monotonic()

        assert post(small)[0] == 200  # warm
        pending = pool.submit(post, large)
        time.sleep(0.2)  # the large upload is in and decoding
        done = []
        while not pending.done() and len(done) < 200:
            done.append(post(small))
        status, large_done = pending.result()
    assert status == 200 and all(s == 200 for s, _ in done)
    answered_meanwhile = sum(t < large_done for _, t in done)
    assert answered_meanwhile >= 5, f"only {answered_meanwhile} small requests answered meanwhile"


def _with_marker(marker: str, size: int, noise: bool = False) -> tuple[bytes, bytes]:
    """(PNG, JPEG) carrying ``marker`` in a text chunk / comment."""
    rng = np.random.default_rng(0)
    pixels = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if noise
              else np.full((size, size, 3), 128, np.uint8))
    image = Image.fromarray(pixels)
    info = PngImagePlugin.PngInfo()
    info.add_text("note", marker)
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, "PNG", pnginfo=info)
    image.save(jpeg, "JPEG", comment=marker.encode())
    return png.getvalue(), jpeg.getvalue()


def test_no_uploaded_bytes_are_kept_on_disk_or_in_the_logs(secure):
    url, trust, folders, log_path = secure
    marker = "facet-upload-" + secrets.token_hex(12)
    png, jpeg = _with_marker(marker, 96)
    large_png, _ = _with_marker(marker, 800, noise=True)  # over Starlette's 1 MB spool
    assert len(large_png) > 1_500_000 and marker.encode() in large_png
    with httpx.Client(verify=trust, timeout=60, headers=_auth()) as client:
        answers = [
            client.post(f"{url}/v1/predict", content=png, headers={"content-type": "image/png"}),
            client.post(f"{url}/v1/predict", files={"image": ("a.png", large_png, "image/png")}),
            client.post(f"{url}/v1/predict/batch", files=[("images", ("b.jpg", jpeg)),
                                                          ("images", ("c.png", png))]),
            client.post(f"{url}/classify", files={"image": ("d.png", large_png, "image/png")}),
            client.post(f"{url}/classify_batch", files=[("images", ("e.jpg", jpeg))]),
        ]
    assert [a.status_code for a in answers] == [200] * 5, [a.text[:200] for a in answers]
    time.sleep(0.5)  # whatever the server logs or cleans after answering
    needle = marker.encode()
    kept = [str(path) for folder in folders.values() for path in Path(folder).rglob("*")
            if path.is_file() and needle in path.read_bytes()]
    assert not kept
    assert needle not in log_path.read_bytes()


def test_the_pages_and_an_answer_reach_no_other_host(browser_tools, secure):  # noqa: F811
    """Every request the browser makes for the docs page, the try-it page (which asks for the
    token after a 401) and an answer goes to the server's own origin."""
    chromium, sync_api = browser_tools
    url, _, _, _ = secure
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(ignore_https_errors=True)
        context.on("request", lambda request: requests.append(request.url))
        page = context.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)  # Swagger drew the API
        assert page.locator(".btn.authorize").count() == 1  # tokens on: "Authorize" is offered
        page.goto(f"{url}/ui/")
        page.set_input_files("#files", str(PHOTOS / "group3.jpg"))
        error = page.wait_for_selector(".error")
        assert "Error 401" in error.inner_text()
        assert page.locator("#token").is_visible()
        page.fill("#token", TOKENS[1])
        page.set_input_files("#files", str(PHOTOS / "group3.jpg"))
        page.wait_for_selector(".photo[aria-busy=false] table")
        browser.close()
    origin = url + "/"
    assert any(r.endswith("/v1/predict") for r in requests)
    assert [r for r in requests if not (r.startswith(origin) or r.startswith("blob:"))] == []
