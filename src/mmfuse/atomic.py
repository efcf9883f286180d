"""Atomic file writes: a temporary file beside the target, then a rename, so a reader (or a
run after a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path

_temp_ids = itertools.count()  # distinct temporary names for writers running in threads


def temp_name(path: Path, suffix: str = "") -> Path:
    """A temporary file name next to ``path``, distinct per process and per call (the
    process id is in it, so a killed writer's leftovers can be told apart)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{next(_temp_ids)}.tmp{suffix}")


def write_text(path: Path, text: str) -> int:
    """Write ``text`` as UTF-8 to ``path`` atomically; its size in bytes."""
    data = text.encode("utf-8")
    tmp = temp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


_TEMP = re.compile(r"\.(\d+)-\d+\.tmp(?:\.[a-z]+)?$")  # ".PID-N.tmp", maybe with a suffix


def orphaned(path: Path) -> bool:
    """Whether ``path`` is a :func:`temp_name` file whose writer no longer runs (a process
    killed mid-write left it); a write still running in another process keeps its file."""
    match = _TEMP.search(path.name)
    return bool(match) and not running(int(match.group(1)))


def running(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def replace_folder(source: Path, target: Path) -> None:
    """Make the finished folder ``source`` become ``target`` by renames (the old ``target``,
    if any, is moved aside first and deleted last), so readers never see half of either."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)
