"""How a model folder answers: one frozen set of options with one set of defaults, built by
`facet predict`, the HTTP service's settings and the Ray engine alike, and the decoder that
turns bytes or a path into the models' inputs under those options."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from facet.faces import (FACE_SCORE, PRIMARY_RULE, PRIMARY_RULES, Detector, YuNet,
                         default_detector)
from facet.preprocess import (DEFAULT_RULES, MAX_FACES, ImageRules, Photo, PreprocessSpec,
                              decode_faces)

MODES = ("auto", "ensemble", "separate")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass(frozen=True)
class GpuOptions:
    """onnxruntime's CUDA and TensorRT provider settings (ignored on the CPU)."""

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # tries every conv algorithm once per shape:
    #                                             slow first batch, fastest after
    gpu_mem_limit: int = 0  # bytes the CUDA arena may hold (0: no limit)
    arena_extend_strategy: str = "kNextPowerOfTwo"  # or kSameAsRequested (less memory held)
    trt_cache: str = ".cache/facet/tensorrt"  # TensorRT engines, built once per model and shape

    def __post_init__(self):
        if self.device_id < 0 or self.gpu_mem_limit < 0:
            raise ValueError("device_id and gpu_mem_limit must be >= 0")
        if self.cudnn_conv_algo_search not in CONV_SEARCH:
            raise ValueError(f"cudnn_conv_algo_search must be one of {CONV_SEARCH}, "
                             f"got {self.cudnn_conv_algo_search!r}")
        if self.arena_extend_strategy not in ("kNextPowerOfTwo", "kSameAsRequested"):
            raise ValueError("arena_extend_strategy must be kNextPowerOfTwo or kSameAsRequested")

    def cuda(self) -> dict:
        options = {"device_id": self.device_id,
                   "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
                   "arena_extend_strategy": self.arena_extend_strategy,
                   "do_copy_in_default_stream": True}
        return options | ({"gpu_mem_limit": self.gpu_mem_limit} if self.gpu_mem_limit else {})

    def tensorrt(self) -> dict:
        return {"device_id": self.device_id, "trt_fp16_enable": True,
                "trt_engine_cache_enable": True, "trt_engine_cache_path": self.trt_cache,
                "trt_timing_cache_enable": True, "trt_timing_cache_path": self.trt_cache}


@dataclass(frozen=True)
class AnswerOptions:
    """Everything that decides how a photo is answered, and how fast.

    mode: ``ensemble`` runs the merged graph (one session), ``separate`` one session per
    attribute, ``auto`` times both where it runs and keeps the faster. variant: the files to
    load (fp32, int8, fp16; None: the folder's default). spinning: onnxruntime's threads
    busy-wait between runs, fastest when the models have the cores to themselves (the HTTP
    service and the Ray actors turn it off: they share the cores with decoding). rules: the
    loader's bad-input rules. detector: another YuNet file (None: the shipped one), with
    ``face_score`` and ``face_upscale``; ``primary_rule`` picks the face that answers for a
    photo, ``max_faces`` bounds the faces answered per photo (the largest). io_binding: each
    batch goes to the device once (None: on when a GPU runs the models)."""

    mode: str = "auto"
    variant: str | None = None
    tta: bool = False
    device: str = "auto"
    gpu: GpuOptions = field(default_factory=GpuOptions)
    threads: int | None = None
    spinning: bool = True
    io_binding: bool | None = None
    rules: ImageRules = DEFAULT_RULES
    detector: str | None = None
    face_score: float = FACE_SCORE
    face_upscale: float = 1.0
    primary_rule: str = PRIMARY_RULE
    max_faces: int = MAX_FACES

    def __post_init__(self):
        checks = [(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
                  (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
                  (self.primary_rule in PRIMARY_RULES, f"primary face rule must be one of "
                   f"{PRIMARY_RULES}, got {self.primary_rule!r}"),
                  (self.max_faces >= 1, f"max_faces must be at least 1, got {self.max_faces}"),
                  (0 < self.face_score < 1, f"face_score must be in (0, 1), got {self.face_score}"),
                  (1 <= self.face_upscale <= 4, "face_upscale must be between 1 and 4, got "
                   f"{self.face_upscale}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def face_detector(self, path: str | Path | None = None) -> YuNet:
        """The detector these options describe (``path``: the same file, stored elsewhere);
        the shipped one with its defaults is made once per process."""
        if not (path or self.detector) and (self.face_score, self.face_upscale) == (FACE_SCORE, 1):
            return default_detector()
        return YuNet(path or self.detector, self.face_score, upscale=self.face_upscale)

    def answers_key(self) -> dict:
        """The options that change answers (not those that change only speed or where the
        models run), as plain data. The detector file changes answers too, but its path says
        nothing of its contents: a caller adds the file's digest (the Ray engine's key)."""
        speed = ("mode", "device", "gpu", "threads", "spinning", "io_binding", "detector")
        return {k: v for k, v in asdict(self).items() if k not in speed}


@dataclass(frozen=True)
class Decoder:
    """Bytes or a path -> a :class:`Photo`: decoded once, its faces found once (for specs that
    crop faces), each answered face cut for every distinct spec. The local engine, the Ray
    decode tasks and the HTTP front end decode through it, so the models get the same pixels
    from each; the detector is given per call (one per process or thread pool)."""

    specs: tuple[PreprocessSpec, ...]
    rules: ImageRules = AnswerOptions.rules
    primary_rule: str = AnswerOptions.primary_rule
    max_faces: int = AnswerOptions.max_faces

    @classmethod
    def of(cls, specs, options: AnswerOptions) -> "Decoder":
        return cls(tuple(specs), options.rules, options.primary_rule, options.max_faces)

    @property
    def crops_faces(self) -> bool:
        return any(s.crop == "face" for s in self.specs)

    @property
    def width(self) -> int:
        """Bytes of one packed input row (``predictor.pack``)."""
        return sum(s.height * s.width * 3 for s in self.specs)

    def decode(self, source: bytes | str | Path, detector: Detector | None,
               every: bool = False) -> Photo:
        """The photo's faces and the inputs of its primary face (each face with ``every``).
        Raises ImageError."""
        return decode_faces(source, list(self.specs), self.rules, detector, every,
                            self.primary_rule, self.max_faces)
