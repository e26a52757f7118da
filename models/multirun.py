"""Several independent runs from one command (attributes, folds), trained at the same time.

A :class:`Run` is one run folder to train. :func:`train_runs` trains them on local processes,
one per :class:`Slot` (a device and its share of this machine's cores; a device named twice
takes two runs at once), or hands them to Ray (``ray_runs``), whose scheduler places each on a
node with the CPUs and GPUs it asks for. Each finished or failed run is reported as it ends; a
failure stops only its own run.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .recipe import Recipe


@dataclass(frozen=True)
class Run:
    """One run to train: ``name`` (``gender``, ``gender/fold2``), its recipe and folder, and
    whether it continues from the folder's last.pt. ``store``: the folder's place in an object
    store, where the run is kept (``run_dir`` is then the command's local mirror)."""

    name: str
    recipe: Recipe
    run_dir: Path
    resume: bool = False
    store: str | None = None


@dataclass(frozen=True)
class Slot:
    """Where a run trains: a device, and the CPU threads its process uses (its DataLoader
    workers: one fewer, at least one, unless --workers says; None: torch's and the machine's
    defaults, for a process that trains alone)."""

    device: str
    threads: int | None


@dataclass(frozen=True)
class Job:
    """What every run of a command shares (the data, the cache, the options): called with a
    run and a slot, it trains that run. It travels to the processes or Ray tasks that train."""

    table: object
    cache_dir: Path
    workers: int | None
    source: str
    track: str | None

    def __call__(self, run: Run, slot: Slot) -> dict:
        import torch

        from facet.tracking import tracker

        from . import distributed
        from .recipe import load_recipe
        from .train import Trainer
        workers = self.workers
        if slot.threads is not None:
            torch.set_num_threads(slot.threads)
            workers = max(1, slot.threads - 1) if workers is None else workers
        run_dir, mirror = run.run_dir, None
        if run.store:  # trained on this node's disk, kept in the store
            from .run_store import Mirror
            mirror = Mirror(run.store)
            mirror.pull()
            run_dir = mirror.local
        track = tracker(self.track)

        def on_epoch(epoch: int, row: dict) -> None:
            track.log_epoch(epoch, row)
            if mirror is not None:
                mirror.push()

        try:
            trainer = Trainer(run.recipe, load_recipe(run.recipe.attribute)[1], self.table,
                              run_dir, self.cache_dir, slot.device, workers, source=self.source)
            with track.training(run.recipe, run_dir):
                result = trainer.fit(resume=run.resume, on_epoch=on_epoch)
            if mirror is not None:
                mirror.push()  # the end of run files
        finally:
            if mirror is not None:
                mirror.close()
        main = trainer.ranks.main
        distributed.leave()
        del trainer
        gc.collect()
        if torch.cuda.is_available():  # a process trains run after run
            torch.cuda.empty_cache()
        return {"best_f1": result.best_f1, "best_epoch": result.best_epoch,
                "run_dir": run.store or str(result.run_dir), "main": main}


Report = Callable[[Run, dict | None, BaseException | None], None]


def slots(devices: list[str], threads: int | None = None) -> list[Slot]:
    """A slot per device named, each with ``threads``, or an equal share of this process's
    cores."""
    share = max(1, len(os.sched_getaffinity(0)) // len(devices))
    return [Slot(d, threads or share) for d in devices]


def train_runs(runs: list[Run], job: Job, where: list[Slot], report: Report) -> None:
    """Train ``runs`` over the slots, as many at once as there are slots; ``report(run,
    summary, error)`` as each ends. One slot trains them in this process, one after another."""
    if len(where) == 1 or len(runs) == 1:
        for run in runs:
            try:
                summary = job(run, where[0])
            except Exception as exc:  # noqa: BLE001 - reported for its run; the others go on
                report(run, None, exc)
            else:
                report(run, summary, None)
        return
    # spawn: a fresh interpreter per process (CUDA cannot be forked); each process takes one
    # slot for its life and trains run after run
    ctx = mp.get_context("spawn")
    free = ctx.Queue()
    for slot in where:
        free.put(slot)
    with ProcessPoolExecutor(len(where), mp_context=ctx, initializer=_take_slot,
                             initargs=(free,)) as pool:
        pending = {pool.submit(_in_slot, job, run): run for run in runs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                run = pending.pop(future)
                error = future.exception()
                report(run, None if error else future.result(), error)


_SLOT: Slot | None = None  # the slot of this worker process


def _take_slot(free) -> None:
    global _SLOT
    _SLOT = free.get()


def _in_slot(job: Job, run: Run) -> dict:
    return job(run, _SLOT)


def finished(run_dir: Path, recipe: Recipe) -> bool:
    """Whether a run folder holds a finished run of ``recipe``: its last.pt is the last epoch
    (or early stopping's) and the end of run files are written."""
    import torch

    from . import run_folder
    last = run_dir / run_folder.LAST
    if not (last.exists() and (run_dir / run_folder.CURVES).exists()):
        return False
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"]) >= recipe.epochs or int(state["stale"]) >= recipe.patience
