"""The on-disk preprocessing cache.

Decoded, resized images, resampled audio and sampled video frames are stored as ``.npy`` arrays
keyed by a hash of the preprocessing settings and of every file's path, size and modification
time, so a second run on the same data with the same settings skips decoding, and any change to
a file or a setting makes a new entry.

An entry is built straight into memory-mapped ``.npy`` files (``np.lib.format.open_memmap``):
the builder asks for its arrays with ``allocate(shape, dtype)`` and fills them chunk by chunk, so
a dataset larger than memory is decoded without holding it in RAM, and every run, the first one
included, gets read-only memory-mapped arrays whose pages the kernel loads and drops as batches
read them. Entries are atomic: arrays are written under temporary names, renamed when complete,
and the ``KEY.parts`` count is written last; a failed build removes its temporary files, so a
half-written entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import orphaned, temp_name, write_text

Allocate = Callable[[tuple[int, ...], np.dtype], np.ndarray]
"""``allocate(shape, dtype)``: a zero-filled array for a builder to fill (on disk if cached)."""


def cache_dir() -> Path:
    """``$MMFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmfuse``, else ``~/.cache/mmfuse``."""
    if os.environ.get("MMFUSE_CACHE_DIR"):
        return Path(os.environ["MMFUSE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmfuse"


def cache_key(kind: str, settings: dict, files: list[Path | str]) -> str:
    """A hash of the settings and of each file's resolved path, size and mtime (a file held in
    a table: its content key, ``sha256:...``)."""
    digest = hashlib.sha256(json.dumps([kind, settings], sort_keys=True).encode())
    for path in files:
        if isinstance(path, str):
            digest.update(f"\0{path}".encode())
            continue
        stat = path.stat()
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return f"{kind}-{digest.hexdigest()[:32]}"


def in_memory(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The :data:`Allocate` of a disabled cache: a plain zero-filled array in RAM."""
    return np.zeros(shape, dtype=dtype)


def cached_arrays(key: str, build: Callable[[Allocate], tuple[np.ndarray, ...]],
                  enabled: bool = True) -> tuple[np.ndarray, ...]:
    """Load the arrays stored under ``key``, or build, store and return them memory-mapped.

    ``build(allocate)`` returns one array (images) or several (clips and their lengths). Arrays
    it made with ``allocate`` are memory-mapped temporary files that it fills in place; they
    become ``KEY.0.npy``, ``KEY.1.npy``, ... by a rename, and allocated arrays it does not
    return (scratch space) are deleted. An array it made otherwise (in RAM) is saved. The
    ``KEY.parts`` count is written last, so a half-written entry is never read; if ``build``
    raises, its temporary files are removed. The arrays returned are read-only memmaps, on the
    first run as on later ones.

    With ``enabled`` false nothing touches the disk: ``allocate`` gives arrays in RAM and
    ``build``'s arrays are returned as they are (the whole dataset is then in memory).
    """
    if not enabled:
        return build(in_memory)
    base = cache_dir() / key
    count = base.with_suffix(".parts")
    if count.is_file():
        try:
            return _load(base, int(count.read_text()))
        except (ValueError, OSError):
            count.unlink(missing_ok=True)
    base.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(base)
    shapes: dict[str, tuple[int, ...]] = {}  # allocated temporary file -> its array's shape

    def allocate(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        temp = os.path.abspath(temp_name(base, ".npy"))
        shapes[temp] = tuple(shape)
        return np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=tuple(shape))

    try:
        arrays = build(allocate)
        for i, array in enumerate(arrays):
            final = base.with_suffix(f".{i}.npy")
            temp = getattr(array, "filename", None)
            if temp in shapes and array.shape == shapes[temp]:  # a whole allocated array
                array.flush()
                os.replace(temp, final)
            else:
                _store(final, np.asarray(array))
        parts = len(arrays)
        del arrays  # unmap the builder's arrays; the entry is reopened read-only below
        write_text(count, str(parts))
    finally:
        for temp in shapes:
            Path(temp).unlink(missing_ok=True)
    return _load(base, parts)


def remove_orphans(base: Path) -> list[Path]:
    """Delete the temporary files of this entry that a killed process left (its process id,
    in the name, is no longer running); a build running in another process keeps its own.
    Names: KEY.PID-N.tmp.npy (an allocated array), KEY.I.npy.PID-N.tmp.npy, KEY.parts.PID-N.tmp.
    """
    removed = []
    for temp in base.parent.glob(f"{base.name}.*.tmp*"):
        if orphaned(temp):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _load(base: Path, parts: int) -> tuple[np.ndarray, ...]:
    return tuple(np.load(base.with_suffix(f".{i}.npy"), mmap_mode="r") for i in range(parts))


def _store(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (temp file + rename)."""
    tmp = temp_name(path, ".npy")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
