"""Multi-process training on torch.distributed: ranks, sharding, reductions, the launcher.

mmfuse does not launch processes itself: ``mmfuse train --nproc N`` hands the command to
PyTorch's own launcher (``python -m torch.distributed.run``, which ``torchrun`` also is), and each
process it starts reads its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``). A single process is a world of one, and every helper here
is then a no-op, so the training loop has one code path.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process, so collectives are needed."""
        return self.world > 1


SINGLE = Ranks()  # one process: no collectives


def from_env() -> Ranks:
    """The ranks torchrun put in the environment (a world of one without torchrun)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return Ranks(rank=int(env.get("RANK", 0)), world=world,
                 local_rank=int(env.get("LOCAL_RANK", 0)),
                 local_world=int(env.get("LOCAL_WORLD_SIZE", world)))


def setup(device: torch.device) -> Ranks:
    """Join the process group when started by torchrun: gloo on CPU, nccl on GPU."""
    ranks = from_env()
    if ranks.active and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun worker's training)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(batches: list[np.ndarray], ranks: Ranks) -> list[np.ndarray]:
    """This rank's batches: every ``world``-th one, starting at its rank.

    Every rank gets the same number, so no rank waits in a collective for a step another never
    takes: a short shard is topped up with batches from the start of the epoch's order (as
    PyTorch's DistributedSampler pads), which some rows see twice that epoch.
    """
    if not ranks.active:
        return batches
    steps = -(-len(batches) // ranks.world)
    padded = [batches[i % len(batches)] for i in range(steps * ranks.world)]
    return padded[ranks.rank::ranks.world]


def rows_of(n: int, ranks: Ranks) -> np.ndarray:
    """This rank's contiguous share of ``n`` rows (validation is split, then reduced)."""
    return np.array_split(np.arange(n), ranks.world)[ranks.rank]


def weighted_mean(values: dict[str, float], weight: float, ranks: Ranks) -> dict[str, float]:
    """``values`` averaged over ranks, each weighted by its ``weight`` (its rows); a rank
    whose value is NaN (no target among its rows) is left out of that value's mean."""
    if not ranks.active:
        return values
    names = sorted(values)
    finite = [math.isfinite(values[k]) for k in names]
    sums = torch.tensor([values[k] * weight if ok else 0.0 for k, ok in zip(names, finite,
                                                                           strict=True)]
                        + [weight if ok else 0.0 for ok in finite], dtype=torch.float64)
    dist.all_reduce(sums)
    n = len(names)
    return {k: (sums[i] / sums[n + i]).item() if sums[n + i] > 0 else float("nan")
            for i, k in enumerate(names)}


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank when ``flag`` is true on any (a stop asked for on one rank)."""
    return bool(largest([float(flag)], ranks)[0])


def largest(values: list[float], ranks: Ranks) -> list[float]:
    """Each of ``values``, the largest over ranks (as they are, alone)."""
    if not ranks.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather(obj, ranks: Ranks) -> list:
    """``obj`` from every rank, in rank order (``[obj]`` alone)."""
    if not ranks.active:
        return [obj]
    out: list = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def wrap(model: torch.nn.Module, device: torch.device, find_unused: bool,
         ranks: Ranks) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (itself otherwise).

    Args:
        find_unused: some parameters can take no part in a step (an input missing from every
            row of a batch leaves its encoder out), so DDP must look for them instead of
            waiting for their gradients forever.
    """
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


@contextlib.contextmanager
def main_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: the preprocessing cache is built once,
    by rank 0, and read by the rest."""
    if not ranks.main:
        barrier(ranks)
    try:
        yield
    finally:
        if ranks.main:
            barrier(ranks)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``mmfuse ARGV`` in ``nproc`` processes through ``torch.distributed.run`` (the module
    behind ``torchrun``) on this machine; returns its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "mmfuse", *argv]
    return subprocess.call(command)
