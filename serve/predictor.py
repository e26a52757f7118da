"""The inference engine: exported ONNX models on onnxruntime, numpy in, probabilities out.

Imports numpy, OpenCV/Pillow (via facet.preprocess) and onnxruntime only: no torch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from facet import privacy
from facet.combine import ATTRIBUTES, class_names, combine_probs
from facet.faces import Detector
from facet.model_folder import INDEX, default_variant, merged_file, read_index
from facet.model_metadata import ModelFileError, parse
from facet.preprocess import Photo, PreprocessSpec, normalize

from .options import DEVICES, AnswerOptions, Decoder, GpuOptions

privacy.apply_defaults()  # before onnxruntime is imported: ORT >= 1.29 reports usage otherwise
import onnxruntime as ort  # noqa: E402

log = logging.getLogger(__name__)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def providers(device: str = "auto", gpu: GpuOptions = GpuOptions()) -> list:
    """onnxruntime providers, best first, each with its options: TensorRT only when asked for
    (device=tensorrt: engines take minutes to build on first use), CUDA when onnxruntime-gpu
    has it, the CPU always last as the fallback for ops the others lack."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    available = ort.get_available_providers()
    cpu, cuda = "CPUExecutionProvider", ("CUDAExecutionProvider", gpu.cuda())
    if device == "cpu":
        return [cpu]
    if device in ("cuda", "tensorrt") and cuda[0] not in available:
        raise RuntimeError(f"device={device} but onnxruntime has no CUDAExecutionProvider: "
                           "install facet[gpu] (onnxruntime-gpu) instead of facet[cpu]")
    if device == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeError("device=tensorrt but this onnxruntime has no "
                               "TensorrtExecutionProvider (onnxruntime-gpu with TensorRT's "
                               "libraries on the library path); use device=cuda")
        Path(gpu.trt_cache).mkdir(parents=True, exist_ok=True)
        return [("TensorrtExecutionProvider", gpu.tensorrt()), cuda, cpu]
    return [cuda, cpu] if cuda[0] in available else [cpu]


def _session(path: Path, options: AnswerOptions) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.threads:
        opts.intra_op_num_threads = options.threads
    if not options.spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    device = options.device
    chosen = providers(device, options.gpu)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found (re-run `facet export`)")
    try:
        session = ort.InferenceSession(str(path), opts, providers=chosen)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error classes, one per cause
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelFileError(f"{path}: not a valid ONNX model ({reason})") from None
    wanted = chosen[0] if isinstance(chosen[0], str) else chosen[0][0]
    got = session.get_providers()[0]
    # onnxruntime falls back to the CPU, with only a log line, when the CUDA or cuDNN
    # libraries do not load: a GPU asked for by name must not quietly run on the CPU.
    if got != wanted and device != "auto":
        raise RuntimeError(f"{path.name}: device={device} asked for {wanted}, but onnxruntime "
                           f"runs it on {got} (the CUDA, cuDNN or TensorRT libraries did not "
                           "load: see onnxruntime's messages above)")
    if got != wanted:
        log.warning("%s: %s did not load, running on %s", path.name, wanted, got)
    return session


@dataclass
class Prediction:
    """Per-image outputs of a batch: attribute probabilities and 18-class probabilities (a
    ``results.Collector`` turns them into answers and errors)."""

    attributes: dict[str, np.ndarray]  # name -> (N, k) probabilities
    probs: np.ndarray  # (N, 18)

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(1)


class Predictor:
    """Loads ``model_dir`` (written by `facet export`) and predicts batches of images, as
    ``options`` say (:class:`AnswerOptions`; keyword ``overrides`` replace single fields:
    ``Predictor(folder, mode="separate")``).

    The three models may each have their own input spec (size, resize mode, normalisation):
    an image is read once and resized once per distinct spec (:class:`Decoder`). Models
    exported with ``crop: face`` get a face detector: ``face_detector`` when given (one shared
    by a process), else the one the options name; none with ``decodes=False`` (a model worker
    that is sent decoded inputs, as the HTTP service's).
    """

    def __init__(self, model_dir: str | Path, options: AnswerOptions | None = None, *,
                 face_detector: Detector | None = None, decodes: bool = True, **overrides):
        options = replace(options or AnswerOptions(), **overrides)
        self.model_dir = Path(model_dir)
        self.index = read_index(self.model_dir)
        variant = options.variant or default_variant(self.index)
        files = self.index["models"].get(variant)
        if files is None:
            raise ValueError(f"no {variant} models in {self.model_dir}; exported: "
                             f"{list(self.index['models'])}")
        if not isinstance(files, dict) or set(files) != set(ATTRIBUTES):
            raise ModelFileError(f"{self.model_dir / INDEX}: the {variant} entry must name one "
                                 f"file for each of {list(ATTRIBUTES)} (re-run `facet export`)")
        self.merged_path = self.model_dir / merged_file(variant)
        merged = self.merged_path.exists()
        mode = options.mode
        if mode == "ensemble" and not merged:
            raise FileNotFoundError(
                f"no {self.merged_path.name} in {self.model_dir} (the models' specs differ, or "
                "it was not exported)" if variant != "int8" else "int8 models run as separate sessions")
        self.variant, self.tta = variant, options.tta
        modes = ("separate", "ensemble") if mode == "auto" and merged else (
            ("separate",) if mode == "auto" else (mode,))
        opened = {m: self._open(m, files, options) for m in modes}
        first = next(iter(opened.values()))[0]
        self.provider = next(iter(first.values())).get_providers()[0]
        on_gpu = self.provider in GPU_PROVIDERS
        self.binding = (("cuda" if on_gpu else "cpu", options.gpu.device_id if on_gpu else 0)
                        if (on_gpu if options.io_binding is None else options.io_binding) else None)
        self.timing_ms = _time_modes(opened, self.binding) if len(opened) > 1 else {}
        self.mode = min(self.timing_ms, key=self.timing_ms.get) if self.timing_ms else modes[0]
        self.sessions, self.info, self.specs = opened[self.mode]
        if self.tta and all(m.get("tta") for m in self.info.values()):
            log.warning("the models average each image with its mirror inside their graphs "
                        "already: tta ignored")
            self.tta = False
        self.distinct_specs = list(dict.fromkeys(self.specs.values()))
        self.options = replace(options, variant=variant, tta=self.tta)
        self.decoder = Decoder.of(self.distinct_specs, options)
        self.crops_faces = self.decoder.crops_faces
        self.detector = None
        if self.crops_faces and decodes:
            self.detector = face_detector or options.face_detector()
        trained = {m["detector"]["sha256"] for m in self.info.values() if m.get("detector")}
        if self.detector and trained and trained != {self.detector.sha256}:
            log.warning("the models were trained with crops from another detector file than %s: "
                        "their faces may be cut differently", self.detector.path)

    def _open(self, mode: str, files: dict, options: AnswerOptions):
        """(sessions, per-attribute info, per-attribute spec) of ``mode``, checked."""
        if mode == "ensemble":  # one session; the members' metadata rides in its own
            path = self.merged_path
            sessions = {"ensemble": _session(path, options)}
            info = parse(sessions["ensemble"].get_modelmeta().custom_metadata_map,
                         str(path))["members"]
        else:
            sessions = {a: _session(self.model_dir / files[a], options) for a in ATTRIBUTES}
            info = {a: parse(s.get_modelmeta().custom_metadata_map, files[a])
                    for a, s in sessions.items()}
        for attribute, classes in ATTRIBUTES.items():
            meta = info.get(attribute, {})
            if meta.get("attribute") != attribute or meta.get("classes") != list(classes):
                raise ModelFileError(f"{self.model_dir}: the {attribute} model holds "
                                     f"{meta.get('attribute')} {meta.get('classes')}, expected "
                                     f"{attribute} {list(classes)}")
        specs = {a: PreprocessSpec.from_dict(m["preprocess"]) for a, m in info.items()}
        return sessions, info, specs

    # ---- images -----------------------------------------------------------------------
    def load(self, source, every: bool = False) -> Photo:
        """The photo's faces and, for the primary face (or each face when ``every``), {spec:
        uint8 HWC} for each distinct spec. Raises ImageError."""
        return self.decoder.decode(source, self.detector, every)

    @staticmethod
    def stack(loaded: list[dict]) -> dict[PreprocessSpec, np.ndarray]:
        return {spec: np.stack([item[spec] for item in loaded]) for spec in loaded[0]}

    # ---- models -----------------------------------------------------------------------
    def predict(self, batches: dict[PreprocessSpec, np.ndarray]) -> Prediction:
        """``batches``: uint8 NHWC per spec (see :meth:`stack`)."""
        attributes = self.infer(self.feed(batches))
        if self.tta:
            flipped = self.infer(self.feed({s: b[:, :, ::-1] for s, b in batches.items()}))
            attributes = {a: (attributes[a] + flipped[a]) / 2 for a in attributes}
        return Prediction(attributes, combine_probs(attributes["mask"], attributes["gender"],
                                                     attributes["age"]))

    def feed(self, batches: dict[PreprocessSpec, np.ndarray]) -> dict:
        """uint8 NHWC per spec -> the models' inputs (normalised; on the device with io
        binding). With :meth:`infer`, the models alone can be timed on inputs made once."""
        return _feed(batches, self.binding)

    def infer(self, inputs: dict) -> dict[str, np.ndarray]:
        """Each attribute's probabilities from :meth:`feed`'s inputs."""
        return _run_sessions(self.mode, self.sessions, self.specs, inputs)

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def model_info(self) -> dict:
        return {
            "mode": self.mode, "mode_timing_ms": self.timing_ms, "variant": self.variant,
            "provider": self.provider, "io_binding": self.binding is not None, "tta": self.tta,
            "detector": self.detector.describe() if self.detector else None,
            "primary_rule": self.options.primary_rule if self.crops_faces else None,
            "classes": class_names(),
            "attributes": {a: {"classes": m["classes"], "val_macro_f1": m["val_macro_f1"],
                               "backbone": m["backbone"], "checkpoint_sha256": m["checkpoint_sha256"],
                               "exported": m["exported"], "preprocess": m["preprocess"],
                               "age_rule": m["age_rule"], "temperature": m.get("temperature", 1.0)}
                           for a, m in self.info.items()},
        }

    def versions(self) -> dict[str, str]:
        return {a: m["checkpoint_sha256"][:12] for a, m in self.info.items()}


def pack(images: dict[PreprocessSpec, np.ndarray]) -> np.ndarray:
    """Each spec's uint8 HWC image, flattened end to end: one array per image, so images with
    several specs travel (and batch) as one row."""
    return np.concatenate([image.reshape(-1) for image in images.values()])


def unpack(rows: np.ndarray, specs: list[PreprocessSpec]) -> dict[PreprocessSpec, np.ndarray]:
    """Inverse of :func:`pack` for a batch: (N, L) uint8 -> {spec: (N, H, W, 3)}."""
    sizes = [s.height * s.width * 3 for s in specs]
    if rows.ndim != 2 or rows.shape[1] != sum(sizes):
        raise ValueError(f"expected (N, {sum(sizes)}) packed images, got {rows.shape}")
    parts = np.split(rows, np.cumsum(sizes)[:-1], axis=1)
    return {s: p.reshape(len(rows), s.height, s.width, 3) for s, p in zip(specs, parts)}


def _run_batches(mode: str, sessions: dict, specs: dict[str, PreprocessSpec],
         batches: dict[PreprocessSpec, np.ndarray],
         binding: tuple[str, int] | None = None) -> dict[str, np.ndarray]:
    return _run_sessions(mode, sessions, specs, _feed(batches, binding))


def _feed(batches: dict[PreprocessSpec, np.ndarray], binding: tuple[str, int] | None) -> dict:
    """Each spec's batch normalised and, with io binding, copied to the device once, however
    many sessions read it."""
    inputs = {spec: normalize(b, spec) for spec, b in batches.items()}
    if binding:
        inputs = {spec: ort.OrtValue.ortvalue_from_numpy(x, *binding) for spec, x in inputs.items()}
    return inputs


def _run_sessions(mode: str, sessions: dict, specs: dict[str, PreprocessSpec], inputs: dict
           ) -> dict[str, np.ndarray]:
    """Every attribute's probabilities from ``_feed``'s inputs."""
    def call(session, names, x):
        return _run_bound(session, names, x) if isinstance(x, ort.OrtValue) else \
            session.run(names, {"image": x})
    if mode == "ensemble":  # one input: its members share one spec (export checks)
        outputs = call(sessions["ensemble"], [f"{a}_probs" for a in ATTRIBUTES],
                       inputs[specs["mask"]])
        return dict(zip(ATTRIBUTES, outputs))
    return {a: call(sessions[a], ["probs"], inputs[specs[a]])[0] for a in ATTRIBUTES}


def _run_bound(session: ort.InferenceSession, names: list[str], image: ort.OrtValue
               ) -> list[np.ndarray]:
    """One run with the input already on the session's device and the outputs copied back."""
    bound = session.io_binding()
    bound.bind_ortvalue_input("image", image)
    for name in names:
        bound.bind_output(name, "cpu")
    session.run_with_iobinding(bound)
    return bound.copy_outputs_to_cpu()


def _time_modes(opened: dict, binding: tuple[str, int] | None, batch: int = 16,
                repeats: int = 3) -> dict[str, float]:
    """Median ms per batch of each mode, interleaved, on this machine: the merged graph's gain
    over three sessions depends on the cores and the provider, so it is measured where it runs."""
    rng = np.random.default_rng(0)
    specs = {s for _, _, per in opened.values() for s in per.values()}
    batches = {s: rng.integers(0, 256, (batch, s.height, s.width, 3), dtype=np.uint8) for s in specs}
    times: dict[str, list[float]] = {m: [] for m in opened}
    for i in range(repeats + 1):  # the first round warms up
        for mode, (sessions, _, per) in opened.items():
            start = time.perf_counter()
            _run_batches(mode, sessions, per, batches, binding)
            if i:
                times[mode].append((time.perf_counter() - start) * 1000)
    return {m: round(float(np.median(v)), 2) for m, v in times.items()}
