"""Tests for CPU counting and torch thread settings (mmfuse.threads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import mmfuse.threads as threads
from mmfuse.threads import available_cpus, configure_threads


def fake_cpus(monkeypatch, affinity: int, quota: float | None) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: quota)


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [
        (4, None, 4),  # no quota: the affinity mask decides
        (4, 1.5, 1),  # a fractional quota rounds down
        (4, 2.5, 2),
        (4, 8.0, 4),  # a quota above the mask does not add CPUs
        (4, 0.2, 1),  # never below one
        (1, None, 1),
        (16, 3.0, 3),
    ],
)
def test_available_cpus(monkeypatch, affinity, quota, expected):
    fake_cpus(monkeypatch, affinity, quota)
    assert available_cpus() == expected


def test_available_cpus_without_affinity_uses_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert available_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_available_cpus_on_this_machine_is_sane():
    count = available_cpus()
    assert 1 <= count <= (os.cpu_count() or 1)


@pytest.fixture
def fake_sys(tmp_path, monkeypatch):
    """Redirect the cgroup files that _cgroup_quota reads into tmp_path."""
    monkeypatch.setattr(threads, "Path", lambda p: tmp_path / str(p).lstrip("/"))

    def write(path: str, text: str) -> None:
        file = tmp_path / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)

    return write


def test_cgroup_v2_quota(fake_sys):
    fake_sys("/sys/fs/cgroup/cpu.max", "150000 100000\n")
    assert threads._cgroup_quota() == pytest.approx(1.5)


def test_cgroup_v2_without_limit(fake_sys):
    fake_sys("/sys/fs/cgroup/cpu.max", "max 100000\n")
    assert threads._cgroup_quota() is None


@pytest.mark.parametrize(("quota", "expected"), [("50000", 0.5), ("200000", 2.0), ("-1", None)])
def test_cgroup_v1_quota(fake_sys, quota, expected):
    fake_sys("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", quota + "\n")
    fake_sys("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert threads._cgroup_quota() == expected


def test_no_cgroup_files(fake_sys):
    assert threads._cgroup_quota() is None


def test_unreadable_cgroup_file(fake_sys):
    fake_sys("/sys/fs/cgroup/cpu.max", "garbage\n")
    assert threads._cgroup_quota() is None


def test_quota_from_files_caps_available_cpus(fake_sys, monkeypatch):
    fake_sys("/sys/fs/cgroup/cpu.max", "150000 100000\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert available_cpus() == 1


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_sets_torch_threads(restore_threads):
    assert configure_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_configure_threads_defaults_to_available_cpus(restore_threads, monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    torch.set_num_threads(2)
    assert configure_threads() == 1
    assert torch.get_num_threads() == 1


def test_path_is_the_real_pathlib_path():
    # The fake_sys fixture replaces threads.Path; make sure the module really uses pathlib.
    assert threads.Path is Path


def test_server_processes_split_the_allowed_cpus(monkeypatch):
    """--processes N pins each process to an even slice of the allowed CPUs (one each when
    there are more processes than CPUs), and pins none under a cgroup quota."""
    import os

    from mmfuse.serve import processes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(processes, "available_cpus", lambda: 6)
    assert processes.cpu_slices(4) == [[2, 3], [4, 5], [6], [7]]
    assert processes.cpu_slices(2) == [[2, 3, 4], [5, 6, 7]]
    assert processes.cpu_slices(8) == [[2], [3], [4], [5], [6], [7], [2], [3]]
    monkeypatch.setattr(processes, "available_cpus", lambda: 2)  # a quota of 2 CPUs
    assert processes.cpu_slices(2) == [None, None]


def test_cap_cpus_limits_what_a_process_uses():
    from mmfuse.threads import available_cpus, cap_cpus

    try:
        cap_cpus(1)
        assert available_cpus() == 1
    finally:
        cap_cpus(None)
    assert available_cpus() >= 1
