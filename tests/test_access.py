"""Bearer tokens, the middleware that checks them, the start-up warnings and the docs page,
in process (the served whole is in test_service_security.py)."""
from __future__ import annotations

import re

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from facet.serve import access
from facet.serve.access import BearerAuth, TokenError, Tokens, exposure_warnings
from facet.serve.config import ServeConfig
from facet.serve.docs_page import LocalDocsPage

A, B, C = "a" * 20, "token-b-0123456789", "token-c-0123456789"


def test_tokens_from_the_setting_and_the_file(tmp_path):
    file = tmp_path / "tokens.txt"
    file.write_text(f"# one per client\n\n  {B}  \n{C}\n")
    tokens = Tokens(f"{A}, ", str(file))
    assert tokens.enabled and len(tokens) == 3
    assert all(tokens.accepts(t) for t in (A, B, C))
    assert not any(tokens.accepts(t) for t in (None, "", A[:-1], A + "a", "# one per client"))
    assert not Tokens().enabled and not Tokens().accepts(A)


def test_a_short_token_or_an_unreadable_file_is_refused(tmp_path):
    with pytest.raises(TokenError, match="shorter than 16 characters"):
        Tokens("short")
    with pytest.raises(TokenError, match=r"missing\.txt: cannot be read"):
        Tokens(file=str(tmp_path / "missing.txt"))


def test_the_file_is_read_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(access, "RELOAD_EVERY_S", 0.0)
    file = tmp_path / "tokens.txt"
    file.write_text(f"{A}\n{B}\n")
    tokens = Tokens(file=str(file))
    assert tokens.accepts(A) and tokens.accepts(B)
    file.write_text(f"{B}\n{C}\n")  # rotated: A retired, C new
    assert not tokens.accepts(A) and tokens.accepts(B) and tokens.accepts(C)
    file.write_text("weak\n")  # a broken edit keeps the tokens read before
    assert tokens.accepts(C) and not tokens.accepts("weak")


def _client(tokens: Tokens, open_metrics: bool = True) -> TestClient:
    async def ok(request):
        return PlainTextResponse("ok")
    app = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])])
    return TestClient(BearerAuth(app, tokens, open_metrics=open_metrics))


def test_protected_routes_need_a_token_and_probes_stay_open():
    client = _client(Tokens(A))
    for path in ("/v1/predict", "/v1/info", "/v1/openapi.json", "/classify", "/anything"):
        r = client.post(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Bearer realm="facet"'
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        wrong = client.post(path, headers={"Authorization": f"Bearer {B}"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Bearer realm="facet", error="invalid_token"'
        assert client.post(path, headers={"Authorization": f"bearer  {A} "}).text == "ok"
        assert client.post(path, headers={"Authorization": f"Basic {A}"}).status_code == 401
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/", "/docs.json", "/ui/",
                 "/static_content/swagger-ui.css"):
        assert client.get(path).text == "ok", path


def test_metrics_can_be_closed():
    client = _client(Tokens(A), open_metrics=False)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {A}"}).text == "ok"


@pytest.mark.parametrize("host,tokens,tls,expected", [
    ("127.0.0.1", False, False, []),
    ("localhost", True, True, []),
    ("0.0.0.0", False, False, ["FACET_API_TOKENS or api_tokens_file"]),
    ("0.0.0.0", True, True, []),
    ("127.0.0.1", True, False, ["tls_certfile"]),
    ("10.0.0.5", True, False, ["tls_certfile"]),
])
def test_start_up_warnings(host, tokens, tls, expected):
    warnings = exposure_warnings(host, tokens, tls)
    assert len(warnings) == len(expected)
    assert all(name in w for name, w in zip(expected, warnings))


def test_tls_settings_go_together_and_tokens_come_from_the_environment(tmp_path):
    with pytest.raises(ValueError, match="tls_certfile and tls_keyfile go together"):
        ServeConfig.load({"FACET_TLS_CERTFILE": "cert.pem"})
    config = ServeConfig.load({"FACET_API_TOKENS": f"{A},{B}", "FACET_OPEN_METRICS": "false"})
    assert len(config.tokens()) == 2 and not config.open_metrics and not config.tls
    with pytest.raises(ValueError, match="shorter than 16"):
        ServeConfig.load({"FACET_API_TOKENS": "1234"}).tokens()


def test_the_docs_page_loads_nothing_from_elsewhere():
    async def other(request):
        return PlainTextResponse("bentoml")
    app = Starlette(routes=[Route("/{path:path}", other, methods=["GET", "POST"])])
    for bearer in (False, True):
        client = TestClient(LocalDocsPage(app, bearer=bearer))
        page = client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert "googletagmanager" not in page.text and "SwaggerUIBundle" in page.text
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page.text)
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert f"const BEARER = {'true' if bearer else 'false'};" in page.text
        assert client.get("/docs.json").text == "bentoml"
        assert client.post("/").text == "bentoml"
