"""What image, audio and video preprocessing share: a column of file paths, decoded once.

A :class:`FilePreprocessor` resolves the unique paths of its column (empty cells are missing
rows), checks that every file exists, decodes them in a thread pool into one cached array (or a
tuple of arrays) and reports every unreadable file with its row and path at once, so a user
fixes a table in one pass.

Datasets larger than memory: the cached array is a memory-mapped file on disk
(``data/cache.py``), allocated before decoding at the largest item's shape (``item_shape``), and
each worker thread writes the file it decoded straight into its row. Files are handed to the
pool ``DECODE_CHUNK`` at a time, so the memory in use is that of the files being decoded, not
of the dataset. Batches then read only their rows from the map.

Variable lengths (audio samples, video frames; ``pad_axis``): the longest item is unknown until
every file is decoded, so rows are written at the configured cap (``max_seconds *
sample_rate`` samples, ``frames`` frames), zero-padded, with each item's length beside them.
When no item reaches the cap, the array is then copied, chunk by chunk, into one cut to the
longest item (what :func:`pad_stack` would give) and the capped scratch file is deleted. The
trade-off: one extra sequential copy of the data on a first run, against an entry (and batches)
as wide as the cap forever; the padding of the scratch file is never written, so it takes no
disk space on file systems with sparse files (ext4, XFS, APFS, tmpfs). When every clip is as
long as the cap (``uniform`` video sampling, audio trimmed at ``max_seconds``) there is no copy.

With ``use_cache`` false the same decoding fills arrays in RAM instead (the whole column is
then in memory).
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cache import Allocate, cache_key, cached_arrays
from ..data.media import Embedded, cell_key, cell_media
from ..data.remote import fetch_bytes, is_url
from ..data.table import Table, resolve_file
from ..errors import DataError
from ..threads import available_cpus
from .base import MISSING, Column, Preprocessor, unique_values
from .kind import BadValue, Modality, blank

log = logging.getLogger("mmfuse.serve")

DECODE_CHUNK = 256  # files handed to the decoding threads at a time (and rows copied per step)


class UnreadableFile(Exception):
    """Raised by a decoder for a file it cannot read; the message says why."""


class FilePreprocessor(Preprocessor):
    """Paths in a column -> decoded, cached arrays; subclasses decode one file and stack."""

    is_file = True
    kind = "file"  # "image", "audio", "video": names the cache entries and the error messages
    use_cache = True
    dtype: type = np.uint8  # of the cached array
    pad_axis: int | None = None  # the axis of an item whose length varies (padded), if any

    def settings(self) -> dict:
        """Everything that changes the decoded arrays (part of the cache key)."""
        raise NotImplementedError

    def decode(self, path: Path) -> np.ndarray:
        """Decode one file.

        Raises:
            UnreadableFile: the file is not a readable file of this modality.
        """
        raise NotImplementedError

    def item_shape(self) -> tuple[int, ...]:
        """The shape of the largest decoded file (at the cap along ``pad_axis``)."""
        raise NotImplementedError

    def stack(self, decoded: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Join decoded files as :meth:`encode` caches them: one array, or padded items and
        their lengths along ``pad_axis``."""
        if self.pad_axis is None:
            return (np.stack(decoded).astype(self.dtype, copy=False),)
        return pad_stack(decoded, self.pad_axis, self.dtype)

    def unpack(self, arrays: tuple[np.ndarray, ...]) -> Any:
        """The Column items made of the cached arrays: the one array, or the tuple of them
        (e.g. padded clips and their lengths)."""
        return arrays[0] if len(arrays) == 1 else tuple(arrays)

    def fit_encode(self, table: Table) -> Column:
        """Decode the training files, then learn the normalisation statistics from them."""
        column = self.encode(table)
        if self.options.normalize:
            self.fit_stats(column.items)
        return column

    def fit_stats(self, items: Any) -> None:
        """Learn ``self.mean`` and ``self.std`` from the decoded training items."""
        raise NotImplementedError

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def encode(self, table: Table) -> Column:
        cells = self._cells(table)
        unique, index = unique_values([cell_key(c) for c in cells])
        if not unique:
            raise DataError(f"{table.source}: column {self.column!r} is empty in every row; "
                            f"give at least one {self.kind} file or remove this input")
        first_rows = np.unique(index[index >= 0], return_index=True)[1]
        present_rows = np.flatnonzero(index >= 0)
        first_row = {value: int(present_rows[first_rows[i]]) for i, value in enumerate(unique)}
        sources = [cells[first_row[v]] for v in unique]
        sources = [s if isinstance(s, Embedded) or is_url(s) else  # a URL is fetched when
                   resolve_file(s, table, first_row[v], self.column)  # decoded, in the pool
                   for v, s in zip(unique, sources, strict=True)]
        missing = [(first_row[v], v, "file not found")
                   for v, p in zip(unique, sources, strict=True)
                   if isinstance(p, Path) and not p.is_file()]
        if missing:
            self._raise_unreadable(table, missing)
        names = [s.describe() if isinstance(s, Embedded) else v
                 for v, s in zip(unique, sources, strict=True)]
        key = cache_key(self.kind, self.settings(), [cell_key(s) for s in sources])
        rows = [first_row[v] for v in unique]
        arrays = cached_arrays(
            key, lambda allocate: self._decode_all(table, names, sources, rows, allocate),
            self.use_cache)
        return Column(self.unpack(arrays), index, is_file=True, key=key)

    def _cells(self, table: Table) -> list[str | Embedded | None]:
        """Each row's file: a path, an embedded file (``data/media.py``) or None."""
        cells = []
        for row, value in enumerate(table.column(self.column)):
            try:
                cells.append(cell_media(value))
            except ValueError as exc:
                raise DataError(f"{table.source}, {table.where(row)}, column "
                                f"{self.column!r}: {exc}") from None
        return cells

    def decode_source(self, source: Path | Embedded | str) -> Any:
        """Decode a file on disk, held in the table, or at a URL (``data/remote.py``: fetched
        once into the local cache; its content is taken not to change)."""
        if isinstance(source, str):
            try:
                data = fetch_bytes(source)
            except DataError as exc:
                raise UnreadableFile(str(exc).removeprefix(f"{source}: ")) from None
            source = Embedded.of(data, source.split("?", 1)[0])
        if isinstance(source, Embedded):
            return self.decode_embedded(source)
        return self.decode(source)

    def decode_embedded(self, file: Embedded) -> Any:
        """Decode a file held in the table from a temporary file (FFmpeg and libsndfile probe
        files; images override this to decode from memory)."""
        with tempfile.NamedTemporaryFile(prefix="mmfuse-embedded-", suffix=file.suffix) as tmp:
            tmp.write(file.data)
            tmp.flush()
            return self.decode(Path(tmp.name))

    def column_of(self, values: list[np.ndarray | None]) -> Column:
        """The column of already decoded files (one per row; None where the row misses the
        input), stacked exactly as :meth:`encode` stacks the decoded files of a table."""
        present = [v for v in values if v is not None]
        index = np.full(len(values), MISSING, dtype=np.int64)
        index[[i for i, v in enumerate(values) if v is not None]] = np.arange(len(present))
        items = self.unpack(self.stack(present)) if present else None
        return Column(items, index, is_file=True)

    def _decode_all(self, table: Table, names: list[str], paths: list[Path | Embedded | str],
                    rows: list[int], allocate: Allocate) -> tuple[np.ndarray, ...]:
        """Decode every file into arrays from ``allocate`` (see the module's docstring);
        ``names`` are how errors name them, ``rows`` the first row that holds each."""
        items = allocate((len(paths), *self.item_shape()), self.dtype)
        lengths = None if self.pad_axis is None else allocate((len(paths),), np.int64)
        errors: list[tuple[int, str, str]] = []

        def run(i: int) -> None:
            try:
                item = self.decode_source(paths[i])
            except UnreadableFile as exc:
                errors.append((rows[i], names[i], str(exc).split("\n")[0]))
                return
            if lengths is None:
                items[i] = item
            else:
                lengths[i] = item.shape[self.pad_axis]
                items[(i, *_prefix(self.pad_axis, item.shape[self.pad_axis]))] = item

        with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
            for start in range(0, len(paths), DECODE_CHUNK):
                list(pool.map(run, range(start, min(len(paths), start + DECODE_CHUNK))))
        if errors:
            self._raise_unreadable(table, sorted(errors))
        if lengths is None:
            return (items,)
        return trim_padding(items, lengths, self.pad_axis, allocate), lengths

    def _raise_unreadable(self, table: Table, errors: list[tuple[int, str, str]]) -> None:
        lines = [f"  {table.where(row)}: {value!r}: {why}"
                 for row, value, why in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(
            f"{table.source}: {len(errors)} unreadable {self.kind} file(s) in column "
            f"{self.column!r}:\n" + "\n".join(lines) + more
            + "\nFix or remove these rows (or leave the cell empty to mark the input missing) "
            "and run again."
        )


def pad_stack(arrays: list[np.ndarray], axis: int, dtype: np.dtype) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Stack arrays that differ in length along ``axis`` (zero-padded) and their lengths."""
    lengths = np.array([a.shape[axis] for a in arrays], dtype=np.int64)
    shape = list(arrays[0].shape)
    shape[axis] = int(lengths.max(initial=1))
    out = np.zeros((len(arrays), *shape), dtype=dtype)
    for i, a in enumerate(arrays):
        out[(i, *_prefix(axis, a.shape[axis]))] = a
    return out, lengths


def trim_padding(items: np.ndarray, lengths: np.ndarray, axis: int,
                 allocate: Allocate) -> np.ndarray:
    """``items [U, ...]`` padded along item axis ``axis`` cut to the longest of ``lengths``:
    copied, ``DECODE_CHUNK`` rows at a time, into an array from ``allocate`` (``items`` itself
    when the longest item fills it)."""
    longest = int(lengths.max(initial=1))
    if longest == items.shape[axis + 1]:
        return items
    shape = list(items.shape)
    shape[axis + 1] = longest
    out = allocate(tuple(shape), items.dtype)
    cut = _prefix(axis, longest)
    for start in range(0, len(items), DECODE_CHUNK):
        rows = slice(start, start + DECODE_CHUNK)
        out[rows] = items[rows][(slice(None), *cut)]
    return out


def _prefix(axis: int, length: int) -> tuple[slice, ...]:
    """The index of the first ``length`` positions along ``axis`` of an item."""
    return (*[slice(None)] * axis, slice(0, length))


class FileModality(Modality):
    """An input whose cells are paths to files (image, audio, video): a request sends the
    file's bytes, which are recognised by their content (never by a name or a claimed MIME
    type), checked against the server's limits and decoded by the input's own preprocessor."""

    value = "file"

    def request_value(self, value: Any, prep: Preprocessor, limits: Any) -> Any:
        if blank(value):
            return None
        if not isinstance(value, bytes):
            raise BadValue(f"expected an uploaded {self.name} file, got {type(value).__name__}")
        return self.decode_bytes(value, prep, limits)

    def decode_bytes(self, data: bytes, prep: FilePreprocessor, limits: Any) -> Any:
        """Check and decode a file's bytes (audio and video: from a temporary file, which FFmpeg
        and libsndfile probe; image overrides it to decode from memory)."""
        with tempfile.NamedTemporaryFile(prefix="mmfuse-upload-") as upload:
            upload.write(data)
            upload.flush()
            path = Path(upload.name)
            seconds = media_seconds(path, self.name)
            cap = limits.max_media_seconds
            if seconds is None:  # decoding a stream of unknown length could take any memory
                raise BadValue(f"not a readable {self.name} file, or its header does not give "
                               "its duration; send WAV, FLAC, OGG, MP3, M4A, MP4, WebM or "
                               "another file whose header states its length")
            if seconds > cap:
                raise BadValue(f"{self.name} of {seconds:.1f} s is over the limit of {cap:g} s; "
                               "send a shorter clip", 413)
            return self.decode(prep, path)

    def decode(self, prep: FilePreprocessor, source: Any) -> Any:
        """``prep.decode(source)`` (a path, a file object, or what the modality opened), its
        failures turned into a BadValue."""
        try:
            return prep.decode(source)
        except UnreadableFile as exc:
            raise BadValue(f"not a readable {self.name} file: {str(exc).splitlines()[0]}"
                           ) from None
        except Exception as exc:  # a crafted file may break a decoder in any way
            log.warning("decoding an uploaded %s failed: %r", self.name, exc)
            raise BadValue(f"not a readable {self.name} file ({type(exc).__name__})") from None

    def limits(self, limits: Any) -> dict:
        return {"max_seconds": limits.max_media_seconds}

    def describe(self, prep: Preprocessor) -> dict:
        return {"accept": self.accept}

    def schema(self, prep: Preprocessor, limits: Any, json_body: bool) -> dict:
        if json_body:
            return {"type": "string", "contentEncoding": "base64",
                    "description": f"the {self.name} file's bytes in base64 (a data: URL "
                    "prefix is allowed)"}
        return {"type": "string", "format": "binary"}


def media_seconds(path: Path, kind: str) -> float | None:
    """Duration of an audio or video file from its header (None when the header has none or the
    file is not readable)."""
    if kind == "audio":
        try:
            import soundfile

            info = soundfile.info(str(path))
            return info.frames / info.samplerate if info.samplerate else None
        except Exception:  # not a libsndfile format: ask FFmpeg below
            pass
    try:
        import av

        with av.open(str(path)) as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                return None
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / 1_000_000 if container.duration else None
    except Exception:
        return None
