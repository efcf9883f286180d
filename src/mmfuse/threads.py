"""How many CPUs this process may really use, and setting torch's threads to match.

``os.cpu_count()`` reports the machine's cores, not the ones this process may use: a CPU affinity
mask or a cgroup quota (containers, CI) can allow fewer. Oversubscribing is expensive: on a
2-core machine, two torch threads sharing a core with another busy process ran a GRU 25 times
slower than one thread.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, if any."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.is_file():
            quota_us = int(v1.read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


_cap: int | None = None  # set by cap_cpus


def cap_cpus(count: int | None) -> None:
    """Use at most ``count`` CPUs in this process (None: no cap), e.g. one of several server
    processes that share a cgroup quota."""
    global _cap
    _cap = count


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup quota and by
    :func:`cap_cpus` (at least 1)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    if _cap is not None:
        count = min(count, _cap)
    return max(1, count)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` or to :func:`available_cpus`; returns it."""
    import torch

    count = threads or available_cpus()
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)  # batches run one at a time; extra pools only compete
    except RuntimeError:
        pass  # already set once in this process, which torch allows only before first use
    return count
