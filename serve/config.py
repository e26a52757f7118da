"""HTTP service settings: defaults < a TOML file ($FACET_CONFIG) < FACET_* environment variables."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import get_type_hints

from facet import shipped
from facet.preprocess import ImageRules

from .access import Tokens
from .options import AnswerOptions, GpuOptions

# Lost model-service calls are sent again until this deadline (p99 under a 16-client load is
# ~0.3 s); an overloaded model service is not retried.
INFER_DEADLINE_S = 20.0
# settings renamed to the name the rest of facet uses; deployments still set the old names
RENAMED = {"min_image_side": "min_side", "primary_face": "primary_rule"}
#: The answering settings: setting -> its field of AnswerOptions (``gpu.``: of its GpuOptions,
#: ``rules.``: of its ImageRules), whose default and type it takes; a field whose default is
#: None is set empty ("" or 0) for that default. What each means: ``AnswerOptions``.
ANSWERING = {"device": "device", "device_id": "gpu.device_id",
             "cudnn_conv_algo_search": "gpu.cudnn_conv_algo_search",
             "gpu_mem_limit": "gpu.gpu_mem_limit", "trt_cache": "gpu.trt_cache", "mode": "mode",
             "variant": "variant", "threads": "threads", "spinning": "spinning", "tta": "tta",
             "max_upload_bytes": "rules.max_bytes", "max_pixels": "rules.max_pixels",
             "min_side": "rules.min_side", "max_aspect": "rules.max_aspect",
             "detector": "detector", "face_score": "face_score", "face_upscale": "face_upscale",
             "primary_rule": "primary_rule", "max_faces": "max_faces"}
#: Where the service answers otherwise than `facet predict`: onnxruntime's threads do not
#: busy-wait (the front end shares the cores: same throughput, ~12% less CPU per request),
#: and an upload is smaller than a file predict reads.
SERVICE_DEFAULTS = {"spinning": False, "max_upload_bytes": 10 * 1024 * 1024}
_PARTS = {"": AnswerOptions, "gpu": GpuOptions, "rules": ImageRules}


@dataclass(frozen=True)
class _Settings:
    """The service's own settings; :data:`ServeConfig` adds the answering ones."""

    models: str = ""  # folder written by `facet export` ("": the set shipped with facet)
    workers: int = 1  # HTTP front-end processes (decode and validate uploads)
    model_workers: int = 1  # model processes (each loads the ONNX models once)
    batching: bool = True  # adaptive batching of concurrent requests
    max_batch_size: int = 32
    calls_in_flight: int = 0  # batching on: model-service calls a front worker keeps out at
    #                           once (0: one per model worker); requests arriving meanwhile
    #                           leave together as the next call
    max_latency_ms: int = 5000  # BentoML rejects requests it expects to finish later than this
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
        """How the service answers: the same options, and defaults, as `facet predict`, but for
        :data:`SERVICE_DEFAULTS` (``max_upload_bytes`` is the largest file read)."""
        given: dict[str, dict] = {part: {} for part in _PARTS}
        for setting, path in ANSWERING.items():
            part, _, name = path.rpartition(".")
            value = getattr(self, setting)
            empty = _default(path) is None and value in ("", 0)
            given[part][name] = None if empty else value
        default = AnswerOptions()
        return replace(default, **given[""], gpu=replace(default.gpu, **given["gpu"]),
                       rules=replace(default.rules, **given["rules"]))


def _default(path: str):
    part, _, name = path.rpartition(".")
    return getattr(AnswerOptions() if not part else getattr(AnswerOptions(), part), name)


def _answering_fields() -> list[tuple[str, str, object]]:
    """(setting, type, field) of each answering setting: AnswerOptions' type and default."""
    out = []
    for setting, path in ANSWERING.items():
        part, _, name = path.rpartition(".")
        hint = get_type_hints(_PARTS[part])[name]
        kind = next(t for t in (bool, int, float, str) if hint is t or t in getattr(
            hint, "__args__", ()))
        default = SERVICE_DEFAULTS.get(setting, _default(path))
        out.append((setting, kind.__name__, field(default=kind() if default is None else default)))
    return out


#: The service's settings: its own (``_Settings``) and the answering ones (:data:`ANSWERING`),
#: those that decide answers becoming its ``AnswerOptions``.
ServeConfig = make_dataclass("ServeConfig", _answering_fields(), bases=(_Settings,), frozen=True,
                             namespace={"__module__": __name__, "__doc__": _Settings.__doc__})


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
