"""The HTTP prediction service (BentoML 1.4): ``bentoml serve facet.serve.service:Facet``.

Two services: ``Facet`` takes uploads, checks and decodes them (the same preprocessing code as
`facet predict`), coalesces concurrent requests into shared model-service calls
(``coalesce.py``) and answers JSON; ``FacetModel`` holds the ONNX models once per worker and
runs them with BentoML's adaptive batching across front workers.

Routes (under /v1): POST /predict (one image: multipart or raw body), POST /predict/batch
(multipart, several images), GET /info, GET /openapi.json; and the typed endpoints
``classify`` and ``classify_batch`` for BentoML's clients; GET /ui, a page to try it. With models exported with
``crop: face``, every face of a photo is answered (``faces``) and the top-level fields are the
primary face's, so a client written for one face per image keeps working. BentoML's /healthz,
/livez, /readyz and /metrics stay on. With tokens configured, every route but those and the
pages needs a bearer token (``access.py``); ``/`` is BentoML's Swagger page without what it
loads from other hosts (``docs_page.py``). Every error under /v1 is JSON, 5xx included, and no exception
escapes a handler: uvicorn closes a keep-alive connection on one.
"""
from __future__ import annotations

from facet import privacy

privacy.apply_defaults()  # before bentoml is imported: it reports usage otherwise

import asyncio  # noqa: E402
import time  # noqa: E402
from http import HTTPStatus  # noqa: E402
from pathlib import Path  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.formparsers import MultiPartParser  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from facet.combine import ATTRIBUTES  # noqa: E402
from facet.faces import YuNet  # noqa: E402
from facet.preprocess import Photo, PreprocessSpec  # noqa: E402

from .access import BearerAuth  # noqa: E402
from .coalesce import Coalescer  # noqa: E402
from .config import ServeConfig  # noqa: E402
from .docs_page import LocalDocsPage  # noqa: E402
from .http_errors import HTTPError, error_response, guard, http_exception, log  # noqa: E402
from .model_calls import infer, reachable  # noqa: E402
from .openapi import OPENAPI  # noqa: E402
from .options import Decoder  # noqa: E402
from .predictor import Predictor, unpack  # noqa: E402
from .results import Collector  # noqa: E402
from .uploads import Decoding, read_upload, uploads  # noqa: E402

CONFIG = ServeConfig.load()
OPTIONS = CONFIG.answer_options()
SIZES = [len(c) for c in ATTRIBUTES.values()]  # 3 + 2 + 3 probability columns, then the 18


DECODING = Decoding(CONFIG)
TOKENS = CONFIG.tokens()
# A multipart file part over Starlette's 1 MB spool goes to a temporary file: keep every upload
# (at most max_upload_bytes, already read into memory) in memory, so no photo touches the disk.
MultiPartParser.spool_max_size = CONFIG.max_upload_bytes


@bentoml.service(name="facet-model", workers=CONFIG.model_workers,
                 traffic={"timeout": CONFIG.request_timeout_s, "concurrency": 256},
                 # internal calls: the front's access log already has one line per request
                 logging={"access": {"enabled": False}},
                 # The front's client to this service closes its session every max_requests
                 # calls (default 100) with other calls still in flight on it, which dropped
                 # them under load (ServerDisconnectedError): keep one session for good.
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9})
class FacetModel:
    """The three attribute models, loaded once per worker; CUDA when present, else CPU."""

    def __init__(self):
        self.predictor = Predictor(CONFIG.model_dir, OPTIONS, decodes=False)  # the front decodes
        self.batches = self.images = 0
        self.busy_s = 0.0  # time spent running the models: busy_s / wall time is utilisation

    @bentoml.api(batchable=CONFIG.batching, batch_dim=0, max_batch_size=CONFIG.max_batch_size,
                 max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """(N, L) uint8 images, resized to each model's spec and packed (``predictor.pack``)
        -> (N, 26) probabilities: mask | gender | age | the 18 classes."""
        start = time.perf_counter()
        out = self.predictor.predict(unpack(images, self.predictor.distinct_specs))
        self.busy_s += time.perf_counter() - start
        self.batches, self.images = self.batches + 1, self.images + len(images)
        return np.concatenate([*(out.attributes[a] for a in ATTRIBUTES), out.probs], axis=1)

    @bentoml.api
    def info(self) -> dict:
        return {**self.predictor.model_info(), "versions": self.predictor.versions(),
                "specs": [s.to_dict() for s in self.predictor.distinct_specs],
                "served": {"batches": self.batches, "images": self.images,
                           "busy_s": round(self.busy_s, 3)}}


async def predict(request: Request) -> JSONResponse:
    name, data = (await uploads(request, False, CONFIG))[0]
    return JSONResponse(await _answer_one(bentoml.get_current_service(), name, data))


async def predict_batch(request: Request) -> JSONResponse:
    answer = await _answer_many(bentoml.get_current_service(), await uploads(request, True, CONFIG))
    return JSONResponse(answer, status_code=200 if answer["answered"] else 422)


async def _answer_one(service, name: str, data: bytes) -> dict:
    info = await service.model_info()
    photo, rows = await DECODING(name, data, service.decoder, service.detector)
    return _photo_answer(photo, await service.infer(rows), info)


async def _answer_many(service, files: list[tuple[str, bytes | HTTPError]]) -> dict:
    """Each image is answered or gets its own error (also one already found while reading
    it); one bad file does not sink the rest."""
    info = await service.model_info()
    results: list[dict] = []
    good, decoded = [], []
    async def one(name: str, data: bytes | HTTPError):
        if isinstance(data, HTTPError):
            raise data
        return await DECODING(name, data, service.decoder, service.detector)

    # with detection, the photos are decoded on the pool's threads at once
    outcomes = await asyncio.gather(*(one(name, data) for name, data in files),
                                    return_exceptions=True)
    for i, ((name, _), outcome) in enumerate(zip(files, outcomes)):
        if isinstance(outcome, HTTPError):
            results.append({"file": name, "error": {"status": outcome.status,
                                                    "message": outcome.message}})
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            decoded.append(outcome)
            good.append(i)
            results.append({})
    answered = 0
    if decoded:
        probs = await service.infer(np.concatenate([rows for _, rows in decoded]))
        ends = np.cumsum([len(rows) for _, rows in decoded])
        for i, (photo, _), part in zip(good, decoded, np.split(probs, ends[:-1])):
            try:
                results[i] = {"file": files[i][0], **_photo_answer(photo, part, info)}
                answered += 1
            except HTTPError as exc:
                results[i] = {"file": files[i][0], "error": {"status": exc.status,
                                                             "message": exc.message}}
    return {"results": results, "answered": answered, "failed": len(files) - answered}


def _photo_answer(photo: Photo, probs: np.ndarray, info: dict) -> dict:
    """The top-level answer is the primary face's (or the fallback region's when no face was
    found); ``faces`` lists every answered face. Models that take whole images answer as
    before, without face fields. A face the models answered NaN fails the photo (500)."""
    answers = _answer(photo, probs, info)
    if photo.face_found is None:
        return answers[0]
    faces = [{"index": k, **photo.faces[k].to_dict(),
              **{key: v for key, v in answer.items() if key != "model_versions"}}
             for k, answer in zip(photo.answered, answers) if k >= 0]
    top = answers[photo.answered.index(photo.primary)]
    return {**top, "face_found": photo.face_found, "primary_face": photo.primary,
            "faces": faces}


def _answer(photo: Photo, probs: np.ndarray, info: dict) -> list[dict]:
    """Each answered face's answer, gathered as every front end gathers them (``Collector``)."""
    *attributes, joint = np.split(np.asarray(probs, np.float32), np.cumsum(SIZES), axis=1)
    collected = Collector(len(probs))
    collected.put(np.arange(len(probs)), dict(zip(ATTRIBUTES, attributes)), joint)
    result = collected.result(photo.answered)
    if result.errors:
        raise HTTPError(500, result.errors[0][2])
    return [{**result.row(i), "model_versions": info["versions"]} for i in range(len(probs))]


async def model_info(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    await service.model_info()  # the front's decoder and detector, made once
    info = await reachable(service.model.to_async.info())  # fresh: its counters
    if service.detector is not None:  # the front finds the faces: its detector
        info["detector"] = service.detector.describe()
    return JSONResponse({**info, "service": {"batching": CONFIG.batching,
                                             "max_batch_size": CONFIG.max_batch_size,
                                             "max_upload_bytes": CONFIG.max_upload_bytes,
                                             "max_pixels": CONFIG.max_pixels,
                                             "min_side": CONFIG.min_side,
                                             "max_aspect": CONFIG.max_aspect,
                                             "primary_rule": CONFIG.primary_rule,
                                             "max_faces": CONFIG.max_faces}})


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


async def _typed(call) -> dict:
    """HTTPError -> the BentoML exception with the same status and message."""
    try:
        return await call
    except HTTPError as exc:
        if exc.status == 503:
            raise ServiceUnavailable(exc.message) from None
        raise BentoMLException(exc.message, error_code=HTTPStatus(exc.status)) from None


async def _no_route(request: Request) -> JSONResponse:
    """404 and 405 as JSON, like every other error. BentoML mounts /v1 so that a path this
    app does not match falls through to its own plain-text 404: this route matches them all."""
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    allowed = sorted({m for r in ROUTES if r.path_regex.match(path) for m in r.methods or ()})
    if allowed:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}; use "
                           f"{', '.join(allowed)}", {"Allow": ", ".join(allowed)})
    return error_response(404, f"no route {request.url.path} (see /v1/openapi.json)")


ROUTES = [
    Route("/predict", guard(predict), methods=["POST"]),
    Route("/predict/batch", guard(predict_batch), methods=["POST"]),
    Route("/info", guard(model_info), methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
api = Starlette(routes=[*ROUTES, Route("/{path:path}", _no_route, methods=[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])],
    exception_handlers={StarletteHTTPException: http_exception})


UI_PAGE = Path(__file__).parent / "ui" / "index.html"
# The page talks to this service only: the browser refuses any other host, font or script.
UI_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src 'self' blob:; "
              "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
              "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


async def ui_page(request: Request) -> HTMLResponse:
    return HTMLResponse(UI_HTML, headers=UI_HEADERS)


def _with_ui(cls):
    """The try-it page at /ui: static HTML, CSS and JS shipped in the package, posting to
    /v1/predict. Off with ``ui = false`` for API-only deployments."""
    return bentoml.asgi_app(Starlette(routes=[Route("/", ui_page, methods=["GET"])]),
                            path="/ui")(cls) if CONFIG.ui else cls


UI_HTML = UI_PAGE.read_text() if CONFIG.ui else ""


@bentoml.service(name="facet", workers=CONFIG.workers,
                  traffic={"timeout": CONFIG.request_timeout_s, "concurrency": 256},
                  logging={"access": {"enabled": CONFIG.access_log}})
@_with_ui
@bentoml.asgi_app(api, path="/v1")
class Facet:
    """The public face of the service: uploads in, JSON out."""

    model = bentoml.depends(FacetModel)

    def __init__(self):
        self._info: dict | None = None
        self.decoder: Decoder | None = None  # set from the model service's specs
        self.detector: YuNet | None = None  # set when the models crop faces
        self._coalescer = Coalescer(lambda images: infer(self.model.to_async, images),
                                    CONFIG.max_batch_size,
                                    CONFIG.calls_in_flight or CONFIG.model_workers)

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """(N, 8) probabilities; with batching on, concurrent calls share one model-service call."""
        if CONFIG.batching:
            return await self._coalescer(images)
        return await infer(self.model.to_async, images)

    # Typed endpoints for BentoML's clients (SyncHTTPClient, AsyncHTTPClient, bentoml.depends)
    # and its Swagger page: the same answers as /v1/predict and /v1/predict/batch, and the same
    # 4xx statuses and messages (BentoML's error body: [{"error": message}]).
    @bentoml.api
    async def classify(self, image: Path) -> dict:
        """One photo (a file upload) -> the answer of POST /v1/predict."""
        async def answer():
            return await _answer_one(self, image.name, read_upload(image, CONFIG.max_upload_bytes))
        return await _typed(answer())

    @bentoml.api
    async def classify_batch(self, images: list[Path]) -> dict:
        """Several photos -> the answer of POST /v1/predict/batch (a per-file error for each
        file that cannot be answered)."""
        if not images:
            raise InvalidArgument("no images were sent")
        if len(images) > CONFIG.max_batch_files:
            raise InvalidArgument(f"{len(images)} files: at most {CONFIG.max_batch_files}")
        files: list[tuple[str, bytes | HTTPError]] = []
        for path in images:
            try:
                files.append((path.name, read_upload(path, CONFIG.max_upload_bytes)))
            except HTTPError as exc:  # this file's own error, as over /v1
                files.append((path.name, exc))
        answer = await _typed(_answer_many(self, files))
        if not answer["answered"]:  # /v1/predict/batch: a 422 with every file's error
            raise BentoMLException("no image could be answered: " + "; ".join(
                r["error"]["message"] for r in answer["results"]),
                error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        return answer

    async def model_info(self) -> dict:
        if self._info is None:  # asked once per worker, when the model service is up
            info = await reachable(self.model.to_async.info())
            self.decoder = Decoder.of(map(PreprocessSpec.from_dict, info["specs"]), OPTIONS)
            if self.decoder.crops_faces:
                self.detector = OPTIONS.face_detector()
            self._info = info
        return self._info


# Outermost first: the docs page at / loads nothing from elsewhere; then the token check.
Facet.add_asgi_middleware(LocalDocsPage, bearer=TOKENS.enabled)
if TOKENS.enabled:
    Facet.add_asgi_middleware(BearerAuth, tokens=TOKENS, open_metrics=CONFIG.open_metrics)
    log.info("access: a bearer token is needed on all but the probes and the pages (%d "
             "token(s))", len(TOKENS))
