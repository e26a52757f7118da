"""The HTTP prediction service (BentoML 1.4): ``bentoml serve facet.serve.service:Facet``.

Two services: ``Facet`` takes uploads, checks and decodes them (the same preprocessing code as
`facet predict`), coalesces concurrent requests into shared model-service calls
(``coalesce.py``) and answers JSON; ``FacetModel`` holds the ONNX models once per worker and
runs them with BentoML's adaptive batching across front workers.

Routes (under /v1): POST /predict (one image: multipart or raw body), POST /predict/batch
(multipart, several images), GET /info, GET /openapi.json. BentoML's /healthz, /livez,
/readyz and /metrics stay on.
"""
from __future__ import annotations

from facet import privacy

privacy.apply_defaults()  # before bentoml is imported: it reports usage otherwise

import asyncio  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402  (BentoML's own inter-service client)
import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from facet.combine import ATTRIBUTES, combine_probs  # noqa: E402
from facet.preprocess import ImageError, ImageTooLarge, PreprocessSpec, load  # noqa: E402

from .coalesce import Coalescer  # noqa: E402
from .config import ServeConfig  # noqa: E402
from .openapi import OPENAPI  # noqa: E402
from .predictor import Prediction, Predictor  # noqa: E402

log = logging.getLogger(__name__)
CONFIG = ServeConfig.load()
RAW_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream"}
SIZES = [len(c) for c in ATTRIBUTES.values()]  # 3 + 2 + 3 probability columns
INFER_ATTEMPTS = 5
INFER_TIMEOUT_S = 15.0  # per attempt; p99 under a 16-client load is ~0.3 s


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


@bentoml.service(name="facet-model", workers=CONFIG.model_workers,
                 traffic={"timeout": 60, "concurrency": 256},
                 # internal calls: the front's access log already has one line per request
                 logging={"access": {"enabled": False}},
                 # The front's client to this service closes its session every max_requests
                 # calls (default 100) with other calls still in flight on it, which dropped
                 # them under load (ServerDisconnectedError): keep one session for good.
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9})
class FacetModel:
    """The three attribute models, loaded once per worker; CUDA when present, else CPU."""

    def __init__(self):
        self.predictor = Predictor(CONFIG.models, mode=CONFIG.mode, device=CONFIG.device,
                                   threads=CONFIG.threads or None, tta=CONFIG.tta,
                                   variant=CONFIG.variant,
                                   max_pixels=CONFIG.max_pixels, spinning=CONFIG.spinning)
        if len(self.predictor.distinct_specs) != 1:
            raise ValueError("the HTTP service needs the three models to share one input spec")
        self.batches = self.images = 0
        self.busy_s = 0.0  # time spent running the models: busy_s / wall time is utilisation

    @bentoml.api(batchable=CONFIG.batching, batch_dim=0, max_batch_size=CONFIG.max_batch_size,
                 max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) resized images -> (N, 8) probabilities: mask | gender | age."""
        spec = self.predictor.distinct_specs[0]
        start = time.perf_counter()
        out = self.predictor.predict({spec: images})
        self.busy_s += time.perf_counter() - start
        self.batches, self.images = self.batches + 1, self.images + len(images)
        return np.concatenate([out.attributes[a] for a in ATTRIBUTES], axis=1)

    @bentoml.api
    def info(self) -> dict:
        return {**self.predictor.model_info(), "versions": self.predictor.versions(),
                "spec": self.predictor.distinct_specs[0].to_dict(),
                "served": {"batches": self.batches, "images": self.images,
                           "busy_s": round(self.busy_s, 3)}}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"upload is {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked uploads with no length
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"upload is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, many: bool) -> list[tuple[str, bytes]]:
    """The uploaded files as (name, bytes): multipart parts, or the raw body for one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data" and (many or content_type not in RAW_TYPES):
        allowed = "multipart/form-data" + ("" if many else ", " + ", ".join(sorted(RAW_TYPES)))
        raise HTTPError(415, f"content type {content_type or '(none)'!r} is not accepted; "
                             f"send {allowed}")
    body = await _read_body(request, CONFIG.max_upload_bytes)
    if not body:
        raise HTTPError(400, "empty body: no image was sent")
    if content_type != "multipart/form-data":
        return [("body", body)]
    request._body = body  # Starlette parses the form from this cached body
    try:
        form = await request.form(max_files=CONFIG.max_batch_files, max_fields=CONFIG.max_batch_files)
    except Exception as exc:  # malformed multipart, too many parts
        raise HTTPError(400, f"could not parse the multipart form: {exc}") from None
    files = [(part.filename or key, await part.read()) for key, part in form.multi_items()
             if hasattr(part, "read")]
    if not files:
        raise HTTPError(400, "the form holds no file: attach the image as a file part")
    if not many and len(files) > 1:
        raise HTTPError(400, f"{len(files)} files sent to /v1/predict; use /v1/predict/batch")
    return files


def _decode(name: str, data: bytes, spec: PreprocessSpec) -> np.ndarray:
    if not data:
        raise HTTPError(400, f"{name}: empty file")
    try:
        return load(data, spec, max_pixels=CONFIG.max_pixels)
    except ImageTooLarge as exc:
        raise HTTPError(413, f"{name}: {exc}") from None
    except ImageError as exc:
        raise HTTPError(422, f"{name}: {exc}") from None


async def predict(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    name, data = (await _uploads(request, many=False))[0]
    info = await service.model_info()
    image = _decode(name, data, PreprocessSpec.from_dict(info["spec"]))
    probs = await service.infer(image[None])
    return JSONResponse(_answer(probs, info)[0])


async def predict_batch(request: Request) -> JSONResponse:
    """Each image is answered or gets its own error; one bad file does not sink the rest."""
    service = bentoml.get_current_service()
    files = await _uploads(request, many=True)
    info = await service.model_info()
    spec = PreprocessSpec.from_dict(info["spec"])
    results: list[dict] = []
    good, images = [], []
    for i, (name, data) in enumerate(files):
        try:
            images.append(_decode(name, data, spec))
            good.append(i)
            results.append({})
        except HTTPError as exc:
            results.append({"file": name, "error": {"status": exc.status, "message": exc.message}})
    if images:
        probs = await service.infer(np.stack(images))
        for i, answer in zip(good, _answer(probs, info)):
            results[i] = {"file": files[i][0], **answer}
    return JSONResponse({"results": results, "answered": len(good), "failed": len(files) - len(good)},
                        status_code=200 if images else 422)


async def _infer(service, images: np.ndarray) -> np.ndarray:
    """Run the model service. A call can still be lost (a model worker restarting, a dropped
    connection) even with the session recycling off; inference is idempotent, so a lost call
    is sent again, and only repeated failure becomes a 503."""
    for attempt in range(INFER_ATTEMPTS):
        try:
            return await asyncio.wait_for(service.model.to_async.infer(images), INFER_TIMEOUT_S)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, asyncio.TimeoutError) as exc:
            log.warning("model service call failed (%s), attempt %d of %d",
                        type(exc).__name__, attempt + 1, INFER_ATTEMPTS)
            if attempt == INFER_ATTEMPTS - 1:
                raise HTTPError(503, "the model service is unavailable; retry later") from None
    raise AssertionError("unreachable")


def _answer(probs: np.ndarray, info: dict) -> list[dict]:
    parts = np.split(np.asarray(probs, np.float32), np.cumsum(SIZES)[:-1], axis=1)
    attributes = dict(zip(ATTRIBUTES, parts))
    prediction = Prediction(attributes, combine_probs(*parts))
    return [{**prediction.row(i), "model_versions": info["versions"]} for i in range(len(probs))]


async def model_info(request: Request) -> JSONResponse:
    info = await bentoml.get_current_service().model.to_async.info()  # fresh: it has counters
    return JSONResponse({**info, "service": {"batching": CONFIG.batching,
                                             "max_batch_size": CONFIG.max_batch_size,
                                             "max_upload_bytes": CONFIG.max_upload_bytes,
                                             "max_pixels": CONFIG.max_pixels}})


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


def _guard(handler):
    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except HTTPError as exc:
            return _error(exc.status, exc.message)
    return wrapped


api = Starlette(routes=[
    Route("/predict", _guard(predict), methods=["POST"]),
    Route("/predict/batch", _guard(predict_batch), methods=["POST"]),
    Route("/info", _guard(model_info), methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
])


@bentoml.service(name="facet", workers=CONFIG.workers, traffic={"timeout": 60, "concurrency": 256},
                  logging={"access": {"enabled": CONFIG.access_log}})
@bentoml.asgi_app(api, path="/v1")
class Facet:
    """The public face of the service: uploads in, JSON out."""

    model = bentoml.depends(FacetModel)

    def __init__(self):
        self._info: dict | None = None
        self._coalescer = Coalescer(lambda images: _infer(self, images), CONFIG.max_batch_size,
                                    CONFIG.calls_in_flight or CONFIG.model_workers)

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """(N, 8) probabilities; with batching on, concurrent calls share one model-service call."""
        if CONFIG.batching:
            return await self._coalescer(images)
        return await _infer(self, images)

    async def model_info(self) -> dict:
        if self._info is None:  # asked once per worker, when the model service is up
            self._info = await self.model.to_async.info()
        return self._info
