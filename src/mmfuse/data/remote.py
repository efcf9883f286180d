"""Data behind a URL, read through fsspec: ``http(s)://`` with the ``remote`` extra, and
``s3://``, ``gs://`` and ``hf://`` where their fsspec backends are installed (the ``s3``,
``gcs`` and ``hf`` extras).

A URL may name a table, WebDataset shards, or a file in a table's cell. Each file is copied
once into a local cache folder (``remote/`` in the preprocessing cache, ``data/cache.py``) the
first time it is read, and read from there afterwards. Streamed training reads a shard as it
arrives and keeps the copy it made on the way (:func:`stream_url`), so nothing is fetched
whole before training starts.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from pathlib import Path
from typing import IO

from ..errors import DataError
from .cache import cache_dir

SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hf",
          "http": "remote", "https": "remote"}


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``scheme://...``) rather than a local path."""
    match = SCHEME.match(text)
    return bool(match) and match.group(1).lower() != "file"


def remote_cache() -> Path:
    """Where fetched files are kept."""
    return cache_dir() / "remote"


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise DataError("reading data at URLs needs fsspec: pip install 'mmfuse[remote]'") from None
    return fsspec


def _copy_path(url: str) -> Path:
    """Where the local copy of ``url`` lives: named by a digest of the URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[-60:]
    return remote_cache() / digest[:2] / f"{digest[2:]}-{name}"


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def local_copy(url: str) -> Path:
    """A local copy of the file at ``url``, fetched on first use.

    The copy is named by a digest of the URL and lands by an atomic rename, so threads and
    processes fetching at once never see a partial file or lose each other's copies (fsspec's
    ``filecache`` keeps one metadata file that concurrent writers overwrite)."""
    path = _copy_path(url)
    if path.exists():
        return path
    fsspec = _fsspec()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(path)
    try:
        fs, remote = fsspec.core.url_to_fs(url)
        fs.get_file(remote, str(partial))  # one streamed GET over http(s)
        os.replace(partial, path)
    except Exception as exc:  # fsspec backends raise their own types
        partial.unlink(missing_ok=True)
        raise _error(url, exc) from None
    return path


def stream_url(url: str) -> IO[bytes]:
    """The file at ``url`` to read front to back: its local copy when there is one, else the
    remote file as it arrives, copied on the way (the copy is kept only when read to its end),
    so a shard streamed in one epoch is read from the disk in the next."""
    path = _copy_path(url)
    if path.exists():
        return path.open("rb")
    fsspec = _fsspec()
    try:
        http = url.lower().startswith(("http://", "https://"))  # one streamed GET
        source = fsspec.open(url, "rb", block_size=0 if http else 1 << 22).open()
    except Exception as exc:  # fsspec backends raise their own types
        raise _error(url, exc) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.BufferedReader(_Tee(source, path), 1 << 20)


class _Tee(io.RawIOBase):
    """Reads ``source`` and writes what it read to ``path``, renamed into place at the end.
    Closed before the end (a tar reader stops at the archive's end marker, a fit at its last
    row), it copies the rest first; a copy that fails is dropped."""

    def __init__(self, source: IO[bytes], path: Path) -> None:
        self.source, self.path, self.partial = source, path, _partial(path)
        self.copy = self.partial.open("wb")
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.source.read(len(buffer))
        if not data:
            self.ended = True
            return 0
        buffer[:len(data)] = data
        self.copy.write(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            while not self.ended and self.readinto(bytearray(1 << 20)):
                pass
        except Exception:  # the copy is incomplete: dropped below, and fetched again later
            pass
        self.source.close()
        self.copy.close()
        if self.ended:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
        super().close()


def open_url(url: str) -> IO[bytes]:
    """The file at ``url``, opened for reading (from the local copy, fetched on first use)."""
    return local_copy(url).open("rb")


def fetch_bytes(url: str) -> bytes:
    """The bytes of the file at ``url`` (a table cell that names a file by URL)."""
    return local_copy(url).read_bytes()


def _error(url: str, exc: Exception) -> DataError:
    scheme = SCHEME.match(url).group(1).lower()
    text = str(exc)
    if isinstance(exc, ImportError) or any(s in text for s in ("not registered", "Install",
                                                               "Protocol not known")):
        extra = EXTRAS.get(scheme)
        fix = f"pip install 'mmfuse[{extra}]'" if extra else \
            f"install the fsspec backend for {scheme}://"
        return DataError(f"{url}: cannot read {scheme}:// URLs here ({exc}); {fix}")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{url}: not found; check the URL")
    return DataError(f"{url}: could not be read ({type(exc).__name__}: {exc})")
