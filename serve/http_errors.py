"""The HTTP service's errors: what any step raises (:class:`HTTPError`), and how the routes turn
it, and anything unexpected, into a JSON answer on a connection that stays usable."""
from __future__ import annotations

import logging

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("facet.serve.service")  # the service's log: one logger for its lines
RETRY_AFTER_S = 1
CLIENT_CLOSED = 499  # nginx's 'client closed request': logged, but nobody reads the answer


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def unavailable(message: str) -> HTTPError:
    """A 503 that tells the client when to retry."""
    return HTTPError(503, f"{message}; retry later", {"Retry-After": str(RETRY_AFTER_S)})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status,
                        headers=headers)


def guard(handler):
    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except Exception:  # noqa: BLE001 - a JSON 500 keeps the connection usable
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            return error_response(500, "internal error: the server failed on this request")
    return wrapped


async def http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
