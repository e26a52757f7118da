"""HTTP service settings: defaults < a TOML file ($FACET_CONFIG) < FACET_* environment variables."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from facet import shipped
from facet.preprocess import ImageRules

from .access import Tokens
from .options import AnswerOptions, GpuOptions

_DEFAULT = AnswerOptions()  # the answering defaults, declared once (facet predict's flags too)

# settings renamed to the name the rest of facet uses; deployments still set the old names
# Lost model-service calls are sent again until this deadline (p99 under a 16-client load is
# ~0.3 s); an overloaded model service is not retried.
INFER_DEADLINE_S = 20.0
RENAMED = {"min_image_side": "min_side", "primary_face": "primary_rule"}


@dataclass(frozen=True)
class ServeConfig:
    """The service's settings; those that decide answers become its ``AnswerOptions``."""

    models: str = ""  # folder written by `facet export` ("": the set shipped with facet)
    device: str = _DEFAULT.device  # auto | cpu | cuda | tensorrt (opt-in)
    device_id: int = _DEFAULT.gpu.device_id  # the GPU the model workers use
    cudnn_conv_algo_search: str = _DEFAULT.gpu.cudnn_conv_algo_search  # EXHAUSTIVE | HEURISTIC
    #                                                                     | DEFAULT
    gpu_mem_limit: int = _DEFAULT.gpu.gpu_mem_limit  # bytes the CUDA arena may hold per model
    #                                                  worker (0: no limit)
    trt_cache: str = _DEFAULT.gpu.trt_cache  # TensorRT engines (device=tensorrt)
    mode: str = _DEFAULT.mode  # auto | ensemble | separate
    variant: str = ""  # fp32 | int8 | fp16 (if exported with --quantize / --fp16); "": the
    #                    folder's default (fp32 for `facet export`'s folders)
    threads: int = 0  # onnxruntime intra-op threads (0: its default)
    spinning: bool = False  # onnxruntime threads busy-wait between runs: off here (on in
    #                         `facet predict`), as the front end shares the cores (same
    #                         throughput, ~12% less CPU per request)
    tta: bool = _DEFAULT.tta
    workers: int = 1  # HTTP front-end processes (decode and validate uploads)
    model_workers: int = 1  # model processes (each loads the ONNX models once)
    batching: bool = True  # adaptive batching of concurrent requests
    max_batch_size: int = 32
    calls_in_flight: int = 0  # batching on: model-service calls a front worker keeps out at
    #                           once (0: one per model worker); requests arriving meanwhile
    #                           leave together as the next call
    max_latency_ms: int = 5000  # BentoML rejects requests it expects to finish later than this
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = _DEFAULT.rules.max_pixels  # decompression-bomb guard, from the header
    min_side: int = _DEFAULT.rules.min_side  # smaller images cannot be a face: 422
    max_aspect: float = _DEFAULT.rules.max_aspect  # longer strips cannot be a face: 422
    max_batch_files: int = 64
    body_timeout_s: float = 30.0  # an upload must arrive within this (else 408)
    request_timeout_s: float = 60.0  # a request is answered within this, or ends with an error
    decode_threads: int = 2  # threads that decode uploads, off the event loop
    offload_pixels: int = 0  # uploads over this many pixels decode on those threads (0: all; a
    #                          36 MP PNG takes ~1.5 s: on the event loop it stalls every request)
    large_pixels: int = 4_000_000  # uploads over this decode on as many threads of their own at
    #                                a lower CPU priority: small requests go first
    access_log: bool = True  # one log line per request (model-service calls are never logged)
    ui: bool = True  # the try-it page at /ui (off for API-only deployments)
    # access and transport (README, Deploying)
    api_tokens: str = ""  # bearer tokens a client must send, comma-separated ("" and no file:
    #                       anyone who reaches the port gets answers)
    api_tokens_file: str = ""  # a file of tokens, one per line (one per client), read again
    #                            when it changes: rotation without a restart
    open_metrics: bool = True  # /metrics without a token (the probes are always open)
    tls_certfile: str = ""  # PEM certificate (chain): serve HTTPS
    tls_keyfile: str = ""  # its PEM private key
    # faces (models exported with crop=face)
    detector: str = ""  # a YuNet ONNX file ("": the one shipped with facet)
    face_score: float = _DEFAULT.face_score  # detector score a face needs
    face_upscale: float = _DEFAULT.face_upscale  # enlarge photos this much before detection
    primary_rule: str = _DEFAULT.primary_rule  # the face the top-level answer is for: largest
    #                                            | center
    max_faces: int = _DEFAULT.max_faces  # faces answered per photo (the largest ones)

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> "ServeConfig":
        environ = os.environ if environ is None else environ
        values: dict = {}
        path = environ.get("FACET_CONFIG")
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML ({exc})") from None
            values.update(_renamed(data.get("serve", data)))
        names = [f.name for f in fields(cls)] + list(RENAMED)
        values.update(_renamed({n: environ[f"FACET_{n.upper()}"] for n in names
                                if f"FACET_{n.upper()}" in environ}))  # over the file's
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown serve setting(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})

    def __post_init__(self):
        positive = ("workers", "model_workers", "max_batch_size", "max_upload_bytes", "max_pixels",
                    "min_side", "max_batch_files", "decode_threads")
        low = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if low:
            raise ValueError(f"{', '.join(low)}: must be at least 1")
        if (self.max_aspect < 1 or self.offload_pixels < 0 or self.large_pixels < 0
                or self.calls_in_flight < 0):
            raise ValueError("max_aspect must be >= 1, offload_pixels, large_pixels and "
                             "calls_in_flight >= 0")
        self.answer_options()  # checks the answering settings
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile go together: give both, or neither")
        # the upload, then the model call's deadline, must fit inside the request's time
        longest = self.request_timeout_s - INFER_DEADLINE_S - 5
        if not 0 < self.body_timeout_s <= longest:
            raise ValueError(f"body_timeout_s={self.body_timeout_s}: must be in (0, {longest:g}] "
                             f"(request_timeout_s {self.request_timeout_s:g} less the model "
                             f"call's {INFER_DEADLINE_S:g} s and 5 s to answer)")

    @property
    def model_dir(self) -> Path:
        """The models to serve: ``models``, or the set shipped with facet."""
        return shipped.resolve(self.models)[0]

    def tokens(self) -> Tokens:
        """The accepted bearer tokens (``enabled`` is false when none are configured)."""
        return Tokens(self.api_tokens, self.api_tokens_file)

    @property
    def tls(self) -> bool:
        return bool(self.tls_certfile)

    def answer_options(self) -> AnswerOptions:
        """How the service answers: the same options, and defaults, as `facet predict`; the
        loader's rules for uploads (``max_upload_bytes`` is the largest file read)."""
        return AnswerOptions(
            mode=self.mode, variant=self.variant or None, tta=self.tta, device=self.device,
            gpu=GpuOptions(self.device_id, self.cudnn_conv_algo_search, self.gpu_mem_limit,
                           trt_cache=self.trt_cache),
            threads=self.threads or None, spinning=self.spinning,
            rules=ImageRules(self.max_upload_bytes, self.max_pixels, self.min_side,
                             self.max_aspect),
            detector=self.detector or None, face_score=self.face_score,
            face_upscale=self.face_upscale, primary_rule=self.primary_rule,
            max_faces=self.max_faces)


def _renamed(values: dict) -> dict:
    values = dict(values)
    for old, new in RENAMED.items():
        if old in values:
            if new in values:
                raise ValueError(f"{old} and {new} are one setting ({old}: its earlier name): "
                                 "give one")
            values[new] = values.pop(old)
    return values


def _coerce(cls, name: str, value):
    kind = {f.name: f.type for f in fields(cls)}[name]
    if kind == "bool" and isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{name}={value!r} is not a boolean")
        return value.lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value) if kind == "str" else value
