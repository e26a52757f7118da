"""`facet train --engine ray`: every run a Ray task asking for its CPUs and GPUs, so Ray's
scheduler places the runs over the cluster's nodes (a fraction of a GPU each puts several runs
on one GPU). The run folders must be on storage every node reaches (a shared file system); the
data too, and each node keeps its own decoded-image cache.
"""
from __future__ import annotations

from dataclasses import dataclass

from facet.serve.ray_engine import connect  # joins a cluster, or starts one (no usage stats)

import ray  # noqa: E402 - after facet's privacy defaults

from .multirun import Job, Report, Run, Slot


@dataclass(frozen=True)
class RayRuns:
    """The cluster (``address``: ``auto``, ``ray://host:port``; None starts one on this
    machine) and what each run asks of it. A run takes its DataLoader workers beyond its CPUs,
    which are the threads of its training steps; fractions let several runs share a CPU."""

    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0


def train_runs(runs: list[Run], job: Job, cluster: RayRuns, report: Report) -> None:
    """Train ``runs`` as Ray tasks; ``report(run, summary, error)`` as each ends."""
    started = connect(cluster.address)
    try:
        task = ray.remote(_train).options(num_cpus=cluster.cpus_per_run,
                                          num_gpus=cluster.gpus_per_run, max_retries=0)
        shared = ray.put(job)  # the data table once in the object store, not once per run
        slot = Slot("cuda" if cluster.gpus_per_run else "cpu",
                    max(1, int(cluster.cpus_per_run)))  # Ray shows a task only its own GPUs
        pending = {task.remote(shared, run, slot): run for run in runs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                summary = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # the run's own error, not Ray's wrapper
                report(run, None, exc.cause or exc)
            except ray.exceptions.RayError as exc:  # its worker died, or the task was cancelled
                report(run, None, exc)
            else:
                report(run, summary, None)
    finally:
        if started:
            ray.shutdown()


def _train(job: Job, run: Run, slot: Slot) -> dict:
    return job(run, slot)
