"""The on-disk preprocessing cache.

Decoded, resized images, resampled audio and sampled video frames are stored as ``.npy`` arrays
keyed by a hash of the preprocessing settings and of every file's path, size and modification
time, so a second run on the same data with the same settings skips decoding, and any change to
a file or a setting makes a new entry. Entries are written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """``$MMFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmfuse``, else ``~/.cache/mmfuse``."""
    if os.environ.get("MMFUSE_CACHE_DIR"):
        return Path(os.environ["MMFUSE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfuse"


def cache_key(kind: str, settings: dict, files: list[Path]) -> str:
    """A hash of the settings and of each file's resolved path, size and mtime."""
    digest = hashlib.sha256(json.dumps([kind, settings], sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{kind}-{digest.hexdigest()[:32]}"


def cached_arrays(key: str, build: Callable[[], tuple[np.ndarray, ...]],
                  enabled: bool = True) -> tuple[np.ndarray, ...]:
    """Load the arrays stored under ``key``, or build, store and return them.

    A builder returns one array (images) or several (clips and their lengths); they are stored
    as ``KEY.0.npy``, ``KEY.1.npy``, ... with a ``KEY.parts`` count written last, so a
    half-written entry is never read. Arrays are memory-mapped on load.
    """
    if not enabled:
        return build()
    base = cache_dir() / key
    count = base.with_suffix(".parts")
    if count.is_file():
        try:
            parts = int(count.read_text())
            return tuple(np.load(base.with_suffix(f".{i}.npy"), mmap_mode="r")
                         for i in range(parts))
        except (ValueError, OSError):
            count.unlink(missing_ok=True)
    arrays = build()
    for i, array in enumerate(arrays):
        _store(base.with_suffix(f".{i}.npy"), array)
    tmp = count.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(str(len(arrays)))
    os.replace(tmp, count)
    return arrays


def _store(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
