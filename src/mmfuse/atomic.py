"""Atomic file writes: a temporary file beside the target, then a rename, so a reader (or a
run after a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import itertools
import os
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
