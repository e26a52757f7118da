"""`facet predict --engine ray`: batch inference on Ray Data, over the CPUs and GPUs of a cluster,
written as numbered Parquet parts that a re-run skips. This is the driver; what runs on the
workers (decode tasks, answering actors) is ``ray_workers``.

Decoding (the local engine's decoder: its loader, rules and face detection) runs in
Ray tasks, so it scales with the cluster's CPUs; the models run in a pool of actors, each with
one ``Predictor`` built from the model files that the driver read once and put in the object
store. A task packs each row's model inputs into one uint8 array (``predictor.pack``). The
driver gets back a few numbers per row, writes each part as soon as its rows are in, and
merges the parts into the local engine's CSV files. No torch here.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from facet import privacy
from facet.combine import ATTRIBUTES
from facet.faces import Face
from facet.model_folder import INDEX, read_index

from .inputs import InputError, Inputs
from .tables import details, submission
from .predictor import Predictor
from .ray_workers import Answerer, Answering, decode_batch, digest
from .results import BatchResult, Collector
from .storage import Filesystems, PartStore

privacy.apply_defaults()  # before Ray starts: no usage stats
import ray  # noqa: E402
import ray.data  # noqa: E402

# A decode worker process itself (Python, numpy, OpenCV, onnxruntime for the face detector):
# Ray Data measured about 125 MiB.
DECODE_WORKER_BYTES = 160 * 2**20


@dataclass(frozen=True)
class Cluster:
    """Where the job runs and how wide: ``address`` ``auto`` or ``ray://host:port`` joins a
    running cluster, None starts one on this machine. Actors take a fraction of a CPU by
    default: they would otherwise hold every CPU of a small machine and leave none to the
    decode tasks that feed them. ``resources``: custom resources each actor needs (they pin
    the actors to the nodes that have them)."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    batch_size: int = 64

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor else "cpu"


@dataclass
class Report:
    """What a run did: parts done, skipped (written before) and failed (left for a re-run)."""

    parts: int
    skipped: int
    done: int = 0
    failed: int = 0
    rows: int = 0  # rows answered by this run
    seconds: float = 0.0  # from joining the cluster to the last part written
    startup_s: float | None = None  # joining the cluster until the first answers came back
    nodes: set[str] = field(default_factory=set)  # Ray node ids the actors ran on
    error: str | None = None  # why the run stopped early

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start one sized to this machine; True when it was
    started here (and is to be shut down here). An already connected process keeps its own."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return True


def _no_room(cluster: Cluster) -> str | None:
    """Why the actors and one decode task cannot all run on the cluster now, if they cannot."""
    need = {"CPU": cluster.actors * cluster.cpus_per_actor + 1,
            "GPU": cluster.actors * cluster.gpus_per_actor,
            **{name: cluster.actors * amount for name, amount in cluster.resources.items()}}
    have = ray.cluster_resources()
    short = [f"{name} {amount:g} needed, {have.get(name, 0):g} here"
             for name, amount in need.items() if amount > have.get(name, 0)]
    return (f"{cluster.actors} actor(s) and a decode task do not fit: {'; '.join(short)}"
            if short else None)


class _Part:
    """The answers of one part's rows as they come back, in any order; a row that comes back
    twice (from a retried task) counts once."""

    def __init__(self, start: int, stop: int):
        self.start, self.missing = start, stop - start
        self.answered = np.zeros(stop - start, bool)
        self.collected = Collector(stop - start)

    def add(self, batch: dict, take: np.ndarray) -> None:
        rows = batch["row"][take] - self.start
        self.collected.put(rows, {a: batch[f"p_{a}"][take] for a in ATTRIBUTES},
                           batch["probs"][take],
                           [None if f < 0 else bool(f) for f in batch["found"][take]],
                           [None if np.isnan(b[0]) else Face(tuple(float(v) for v in b[:4]),
                                                             float(b[4]))
                            for b in batch["face"][take]])
        for row, message in zip(rows.tolist(), batch["error"][take]):
            if message:
                self.collected.fail(row, message)
        self.answered[rows] = True
        self.missing = int((~self.answered).sum())

    def result(self, paths: list) -> BatchResult:
        """As ``batch.predict_paths`` would give it for these rows."""
        return self.collected.result(paths)


class Job:
    """One input cut into numbered parts under ``parts_dir``. Building it checks the models
    (on the driver, on the CPU) and the parts already there: parts written for another input,
    part size, models or options are refused, never mixed in."""

    def __init__(self, inputs: Inputs, model_dir: str | Path, answering: Answering,
                 parts_dir: str | Path, part_size: int = 10_000,
                 filesystems: Filesystems | None = None):
        if part_size < 1:
            raise ValueError(f"part size must be at least 1, got {part_size}")
        self.inputs, self.answering, self.part_size = inputs, answering, part_size
        self.filesystems = filesystems or Filesystems()
        predictor = answering.predictor(model_dir, "cpu")  # checks the models
        self.decoder = predictor.decoder
        self.crops_faces = predictor.crops_faces
        self.files = model_files(Path(model_dir), predictor)
        self.store = PartStore(parts_dir, self.filesystems)
        self.parts = max(1, -(-len(inputs.paths) // part_size))  # an empty input: one empty part
        self.keys = {"facet.manifest": _manifest_key(inputs, part_size),
                     "facet.answers": digest(json.dumps(answering.key()).encode(),
                                             *[d for _, d in sorted(self.files.items())])}
        given, answers = self._tables(0, 0, _Part(0, 0))
        self.submission_columns, self.answer_columns = list(given.columns), list(answers.columns)
        # a manifest column that shares a name with an answer column is kept as input_<name>
        self.stored_columns = [f"input_{c}" if c in self.answer_columns else c
                               for c in self.submission_columns]
        self.written = self._check_written()

    def _bounds(self, k: int) -> tuple[int, int]:
        return k * self.part_size, min((k + 1) * self.part_size, len(self.inputs.paths))

    def _tables(self, start: int, stop: int, part: _Part) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rows ``start:stop`` as the local engine writes them: the submission (the manifest's
        columns with ``ans`` filled) and the --details columns but the path."""
        rows = Inputs(self.inputs.frame.iloc[start:stop].reset_index(drop=True),
                      self.inputs.paths[start:stop])
        result = part.result(rows.paths)
        return (submission(rows, result),
                details(rows, result, faces=self.crops_faces).drop(columns="path"))

    def _check_written(self) -> set[int]:
        written = self.store.written()
        for k in written:
            meta = self.store.metadata(k)
            if meta.get("facet.manifest") != self.keys["facet.manifest"]:
                raise InputError(f"{self.store.location} holds parts of another input or "
                                 f"--part-size ({self.store.name(k)}): give another --parts-dir, "
                                 "or delete it to start again")
            if meta.get("facet.answers") != self.keys["facet.answers"]:
                raise InputError(f"{self.store.location} holds parts answered by other models or "
                                 f"options ({self.store.name(k)}): give another --parts-dir, or "
                                 "delete it to start again")
        return set(written)

    # ---- running ----------------------------------------------------------------------
    def run(self, cluster: Cluster) -> Report:
        """Answer the parts not written yet (none: Ray is not even started)."""
        report = Report(self.parts, skipped=len(self.written))
        pending = {k: _Part(*self._bounds(k)) for k in range(self.parts) if k not in self.written}
        for k in [k for k, part in pending.items() if not part.missing]:  # an empty input
            self._write(k, pending.pop(k), report)
        if pending:
            start = time.perf_counter()
            started = connect(cluster.address)
            try:
                # a cluster started here never grows: a pool that does not fit would wait forever
                report.error = _no_room(cluster) if started else None
                if not report.error:
                    self._answer(pending, cluster, report, start)
            finally:
                report.seconds = time.perf_counter() - start
                if started:
                    ray.shutdown()
        report.failed += len(pending)
        return report

    def _answer(self, pending: dict[int, _Part], cluster: Cluster, report: Report,
                start: float) -> None:
        """Stream the answers back and write each part once all its rows are in; a failed
        job leaves the parts written so far, and the others in ``pending``."""
        try:
            for batch in self._dataset(sorted(pending), cluster).iter_batches(
                    batch_size=None, batch_format="numpy"):
                if report.startup_s is None:
                    report.startup_s = time.perf_counter() - start
                report.nodes.update(batch["node"])
                owner = batch["row"] // self.part_size
                for k in map(int, np.unique(owner)):
                    pending[k].add(batch, owner == k)
                    if not pending[k].missing:
                        self._write(k, pending.pop(k), report)
        except ray.exceptions.RayError as exc:
            report.error = _reason(exc)

    def _dataset(self, parts: list[int], cluster: Cluster):
        import pyarrow as pa
        rows = np.concatenate([np.arange(*self._bounds(k)) for k in parts])
        blocks = [pa.table({"row": chunk,
                            "path": [str(self.inputs.paths[i]) for i in chunk],
                            "refused": [self.inputs.refused.get(i, "") for i in chunk]})
                  for chunk in np.array_split(rows, -(-len(rows) // cluster.batch_size))]
        files = ray.put(self.files)  # once: every actor fetches the same object
        # A decode task reserves its worker's own memory, one photo at the pixel limit and the
        # batch it packs. The reservation also keeps the two steps' resource requests apart:
        # Ray Data fuses steps whose requests are equal, and decoding would then run inside
        # the actors instead of spreading over the cluster's CPUs.
        memory = (DECODE_WORKER_BYTES + self.decoder.rules.max_pixels * 3
                  + cluster.batch_size * self.decoder.width)
        return (ray.data.from_arrow(blocks)
                .map_batches(decode_batch, batch_size=cluster.batch_size, batch_format="numpy",
                             fn_kwargs={"decoder": self.decoder, "answering": self.answering,
                                        "filesystems": self.filesystems},
                             num_cpus=1, memory=memory)
                .map_batches(Answerer, batch_size=cluster.batch_size, batch_format="numpy",
                             compute=ray.data.ActorPoolStrategy(size=cluster.actors),
                             fn_constructor_args=(files, self.answering, cluster.device),
                             num_cpus=cluster.cpus_per_actor, num_gpus=cluster.gpus_per_actor,
                             **({"resources": cluster.resources} if cluster.resources else {})))

    def _write(self, k: int, part: _Part, report: Report) -> None:
        """A part's table: the submission's columns, then the answers' (see ``_tables``)."""
        start, stop = self._bounds(k)
        given, answers = self._tables(start, stop, part)
        given.columns = self.stored_columns
        try:
            self.store.write(k, pd.concat([given, answers], axis=1),
                             {**self.keys, "facet.rows": f"{start}:{stop}"})
        except OSError as exc:
            report.failed += 1
            report.error = f"{self.store.name(k)}: {exc}"
            return
        report.done += 1
        report.rows += stop - start

    # ---- the merged files ---------------------------------------------------------------
    def submission(self) -> Iterator[pd.DataFrame]:
        """The local engine's submission, part by part (write it with
        ``facet.atomic.write_csv``)."""
        for k in range(self.parts):
            yield self.store.read(k, self.stored_columns).set_axis(self.submission_columns, axis=1)

    def details(self) -> Iterator[pd.DataFrame]:
        """The local engine's --details file, part by part."""
        for k in range(self.parts):
            start, stop = self._bounds(k)
            frame = self.store.read(k, self.answer_columns)
            frame.insert(0, "path", [str(p) for p in self.inputs.paths[start:stop]])
            yield frame

    def errors(self) -> list[tuple[int, str, str]]:
        """(row, path, message) of every row without an answer, as ``BatchResult.errors``."""
        out = []
        for k in range(self.parts):
            start, _ = self._bounds(k)
            messages = self.store.read(k, ["error"])["error"].to_numpy()
            out += [(start + int(i), str(self.inputs.paths[start + i]), messages[i])
                    for i in np.flatnonzero(messages != "")]
        return out


def model_files(model_dir: Path, predictor: Predictor) -> dict[str, bytes]:
    """The files a Predictor of this variant reads: facet.json, the three models and the
    merged graph when there is one."""
    names = [INDEX, *read_index(model_dir)["models"][predictor.variant].values()]
    if predictor.merged_path.exists():
        names.append(predictor.merged_path.name)
    return {name: (model_dir / name).read_bytes() for name in dict.fromkeys(names)}


def _reason(exc: Exception) -> str:
    """The root error of a Ray traceback (``ValueError: ...``), else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
    return causes[-1] if causes else (lines or [type(exc).__name__])[0]


def _manifest_key(inputs: Inputs, part_size: int) -> str:
    frame = inputs.frame
    paths = pd.Series([str(p) for p in inputs.paths], dtype=object)
    return digest(json.dumps([list(map(str, frame.columns)), part_size]).encode(),
                  pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes(),
                  pd.util.hash_pandas_object(paths, index=False).to_numpy().tobytes())
