"""What runs on a Ray cluster's workers for `facet predict --engine ray`: the answering options
as they travel to them, the decode task and the answering actor. The driver's side (parts,
scheduling, the merged files) is ``ray_engine``. No torch here.
"""
from __future__ import annotations

import hashlib
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facet import privacy
from facet.faces import YuNet
from facet.preprocess import ImageError

from .inputs import is_uri
from .options import AnswerOptions, Decoder
from .predictor import Predictor, pack, unpack
from .results import Collector
from .storage import Filesystems

privacy.apply_defaults()  # before Ray starts: no usage stats
import ray  # noqa: E402


@dataclass(frozen=True)
class Answering:
    """A job's answering options as they travel to the decode tasks and the actors, with the
    bytes of another detector file (the nodes share no filesystem). The driver (which checks
    the models before any work) and every actor build the same Predictor from it."""

    options: AnswerOptions
    detector_file: tuple[str, bytes] | None = None  # another YuNet file: (name, bytes)

    def __post_init__(self):
        if self.options.detector and self.detector_file is None:  # read once, on the driver
            path = Path(self.options.detector)
            object.__setattr__(self, "detector_file", (path.name, path.read_bytes()))

    def detector(self) -> YuNet:
        """One detector per process (the decode tasks of a worker process share it)."""
        with _LOCK:
            if self not in _DETECTORS:
                path = None
                if self.detector_file:  # written out under its own name, for its messages;
                    name, data = self.detector_file  # kept: OpenCV's YuNet reads it per thread
                    path = Path(tempfile.mkdtemp(prefix="facet-yunet-")) / name
                    path.write_bytes(data)
                _DETECTORS[self] = self.options.face_detector(path)
            return _DETECTORS[self]

    def predictor(self, model_dir: str | Path, device: str) -> Predictor:
        # no spinning: the actors share the nodes' cores with the decode tasks
        return Predictor(model_dir, self.options, device=device, spinning=False,
                         face_detector=self.detector())

    def key(self) -> dict:
        """What changes answers, with the detector file's digest."""
        detector = self.detector_file[1] if self.detector_file else b""
        return self.options.answers_key() | {"detector_file": digest(detector)}


_LOCK = threading.Lock()
_DETECTORS: dict[Answering, YuNet] = {}


def decode_batch(batch: dict, decoder: Decoder, answering: Answering,
                 filesystems: Filesystems) -> dict:
    """Ray task: each row's packed model inputs, or its error (a refused row keeps its reason),
    with the local engine's decoder and messages; rows that fail are zeros the actors never
    read."""
    n = len(batch["row"])
    errors = batch["refused"].astype(object)
    pixels = np.zeros((n, decoder.width), np.uint8)
    detector = answering.detector() if decoder.crops_faces else None
    found = np.full(n, -1, np.int8)  # -1: no detection ran
    face = np.full((n, 5), np.nan)  # the primary face's box and score
    for i, path in enumerate(batch["path"]):
        if errors[i]:
            continue
        try:
            photo = decoder.decode(filesystems.read_image(path, decoder.rules.max_bytes)
                                   if is_uri(path) else path, detector)
        except (ImageError, OSError) as exc:
            errors[i] = str(exc)
            continue
        pixels[i] = pack(photo.inputs[0])
        if photo.face_found is not None:
            found[i] = photo.face_found
        if (primary := photo.face(photo.primary)) is not None:
            face[i] = [*primary.box, primary.score]
    return {"row": batch["row"], "error": errors, "found": found, "face": face,
            "pixels": pixels}


class Answerer:
    """Ray actor: one Predictor, built once from the model files in the object store."""

    def __init__(self, files: ray.ObjectRef, answering: Answering, device: str):
        with tempfile.TemporaryDirectory(prefix="facet-models-") as folder:
            for name, data in ray.get(files).items():
                (Path(folder) / name).write_bytes(data)
            # onnxruntime holds the models in memory: the folder is not needed afterwards
            self.predictor = answering.predictor(folder, device)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        ok = batch["error"] == ""
        answered = Collector(len(ok))
        if ok.any():
            out = self.predictor.predict(unpack(batch["pixels"][ok], self.predictor.distinct_specs))
            answered.put(np.flatnonzero(ok), out.attributes, out.probs)
        return {"row": batch["row"], "error": batch["error"], "found": batch["found"],
                "face": batch["face"], "probs": answered.probs, "node": np.full(len(ok), self.node),
                **{f"p_{a}": p for a, p in answered.attributes.items()}}


def digest(*chunks: bytes) -> str:
    """One sha256 of several byte strings (each hashed on its own first)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(hashlib.sha256(chunk).digest())
    return h.hexdigest()
