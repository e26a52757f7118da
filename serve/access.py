"""Who may call the service: optional bearer tokens, checked by an ASGI middleware in front of
every route but the probes and the static pages. Only the standard library.

Tokens come from the ``api_tokens`` setting (comma-separated) and from ``api_tokens_file`` (one
per line, one per client); the file is read again when it changes, so a token is rotated by
adding the new one, moving the client over and deleting the old one, without a restart. A token
is compared as its SHA-256 digest against every configured digest with ``hmac.compare_digest``:
no early exit on the first differing byte, the token's length or which token matched."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
MIN_TOKEN_CHARS = 16  # a token a person could guess is no access control
# open without a token: the probes and the pages' HTML, scripts and schema, none of which holds
# a photo or an answer; everything else (/v1/*, BentoML's typed endpoints) needs one
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/", "/docs.json", "/ui", "/ui/"})
OPEN_PREFIXES = ("/static_content/",)
RELOAD_EVERY_S = 1.0  # the tokens file is looked at (one stat) at most this often


class TokenError(ValueError):
    """The configured tokens cannot be used (unreadable file, a token too short)."""


class Tokens:
    """The accepted tokens: ``inline`` ones and those of ``file`` (re-read when it changes)."""

    def __init__(self, inline: str = "", file: str = ""):
        self._inline = _digests(_split(inline.replace(",", "\n")), "api_tokens")
        self._file = Path(file) if file else None
        self._lock = threading.Lock()
        self._from_file: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if self._file is not None:
            self._reload(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self._inline) or self._file is not None

    def __len__(self) -> int:
        self._maybe_reload()
        return len(self._inline) + len(self._from_file)

    def accepts(self, token: str | None) -> bool:
        """True when ``token`` is one of the configured tokens, in time that does not depend on
        which one or on how much of it is right."""
        if not token:
            return False
        self._maybe_reload()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for known in self._inline + self._from_file:
            found |= hmac.compare_digest(digest, known)
        return found

    def _maybe_reload(self) -> None:
        if self._file is not None and time.monotonic() - self._checked >= RELOAD_EVERY_S:
            try:
                self._reload()
            except TokenError as exc:  # keep serving with the tokens read last
                log.error("%s; keeping the %d token(s) read before", exc, len(self._from_file))

    def _reload(self, force: bool = False) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                st = os.stat(self._file)
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp == self._stamp and not force:
                    return
                text = self._file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenError(f"api_tokens_file {self._file}: cannot be read ({exc})") from None
            self._from_file = _digests(_split(text), f"api_tokens_file {self._file}")
            if self._stamp is not None:
                log.info("api_tokens_file %s read again: %d token(s)", self._file,
                         len(self._from_file))
            self._stamp = stamp


def _split(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _digests(tokens: list[str], where: str) -> tuple[bytes, ...]:
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise TokenError(f"{where}: {len(short)} token(s) shorter than {MIN_TOKEN_CHARS} "
                         "characters; make them long and random, e.g. `python -c \"import "
                         "secrets; print(secrets.token_urlsafe(32))\"`")
    return tuple(hashlib.sha256(t.encode("utf-8", "surrogateescape")).digest() for t in tokens)


def bearer(headers: list[tuple[bytes, bytes]]) -> tuple[bool, str | None]:
    """(an Authorization header was sent, its bearer token or None)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return True, token.strip() if scheme.lower() == "bearer" else None
    return False, None


class BearerAuth:
    """ASGI middleware: a request to anything but the open paths needs
    ``Authorization: Bearer <token>``; otherwise a JSON 401 with ``WWW-Authenticate``."""

    def __init__(self, app, tokens: Tokens, open_metrics: bool = True):
        self.app, self.tokens = app, tokens
        self.open_paths = OPEN_PATHS | ({"/metrics"} if open_metrics else set())

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        sent, token = bearer(scope["headers"])
        if self.tokens.accepts(token):
            return await self.app(scope, receive, send)
        challenge = 'Bearer realm="facet"'
        if sent:  # RFC 6750: a token was given and is not accepted
            challenge += ', error="invalid_token"'
            message = "the bearer token is not accepted"
        else:
            message = "this service needs a bearer token: send 'Authorization: Bearer <token>'"
        body = json.dumps({"error": {"status": 401, "message": message}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode())]})
        await send({"type": "http.response.body", "body": body})


def exposure_warnings(host: str, tokens: bool, tls: bool) -> list[str]:
    """What an operator should hear at start: an open service on a network address, or tokens
    that would travel in clear text."""
    warnings = []
    if not tokens and not _loopback(host):
        warnings.append(f"serving on {host} with no access control: anyone who reaches the port "
                        "gets answers; set FACET_API_TOKENS or api_tokens_file (see README, "
                        "Deploying)")
    if tokens and not tls:
        warnings.append("bearer tokens without TLS travel in clear text: set tls_certfile and "
                        "tls_keyfile, or keep the service behind a proxy that terminates TLS")
    return warnings


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
