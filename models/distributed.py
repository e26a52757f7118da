"""One run over several processes, as ``torchrun`` starts them: each process (rank) trains on its
own device and its share of every epoch (DDP averages the gradients), validates a slice of the
val set, and the scores are gathered so every rank decides the same (best epoch, early stop).
Rank 0 alone writes the run folder. NCCL joins GPUs, gloo CPUs (how the tests run it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``world`` processes, this one ``rank`` (``local``: its
    index on this machine, the GPU it takes)."""

    world: int = 1
    rank: int = 0
    local: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run folder and prints."""
        return self.rank == 0


def join(device: torch.device) -> tuple[Ranks, torch.device]:
    """This process's ranks from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), with the
    process group joined, and its device: ``cuda:LOCAL_RANK`` for CUDA. One process: Ranks()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    ranks = Ranks(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def total(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over the ranks (itself in a single process)."""
    if not dist.is_initialized():
        return list(values)
    for v in values:
        dist.all_reduce(v)
    return list(values)


def gathered(*arrays: np.ndarray) -> list[np.ndarray]:
    """Each array concatenated over the ranks, in rank order (itself in a single process)."""
    if not dist.is_initialized():
        return list(arrays)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return [np.concatenate([p[k] for p in parts]) for k in range(len(arrays))]


def leave() -> None:
    """Leaves the process group, if this process joined one (at the end of its run)."""
    if dist.is_initialized():
        dist.destroy_process_group()
