"""Streamed training data: a source read as *pieces* (WebDataset shards, or slices of a table
whose files are decoded on the fly), each piece read front to back, once per epoch.

``training/streamed.py`` splits the pieces across torchrun ranks and DataLoader workers and
turns their rows into batches; this module knows only how to list, read and count them:

- :func:`streams` says whether a ``--data`` value is streamed (shards and URLs by default,
  any table with ``data.streaming: true``);
- :func:`open_source` lists the pieces; :meth:`Source.read` yields a piece's rows with their
  offsets (a truncated shard's rest comes as one :class:`BadRow`, so training can skip it);
- :func:`hold_out_pieces` is the validation rule without ``--valid``: the last pieces;
- :func:`fit_table` reads the first ``data.fit_rows`` rows, which fit the preprocessing;
- :func:`assigned` is which pieces one (rank, worker) slot reads in an epoch;
- per-piece row counts are kept in the cache folder (:func:`known_counts`), so that
  ``epochs: auto`` and the schedule know the epoch's length from the second run on (the first
  run estimates it from the rows per piece that the fit read).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..atomic import write_text
from ..errors import DataError
from .cache import cache_dir
from .remote import is_url, stream_url
from .shards import is_shards, read_shard, shard_names, shards_root
from .table import Table, read_table

PIECE_ROWS = 1000  # rows per piece of a streamed table (its unit of order, split and resume)


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read: its shard and key, and why."""

    where: str
    why: str


@dataclass
class Source:
    """The pieces of a streamed training source.

    ``names`` are shard paths or URLs; a streamed table instead has ``table`` and ``spans``
    (the row range of each piece). ``root`` is where relative file paths start.
    """

    description: str
    root: Path
    names: list[str]
    table: Table | None = None
    spans: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def read(self, piece: int) -> Iterator[tuple[int, dict | BadRow]]:
        """The rows of ``piece`` with their offsets in it; a truncated or corrupt shard ends
        with a :class:`BadRow` at the offset where reading failed."""
        if self.table is not None:
            start, stop = self.spans[piece]
            for offset, row in enumerate(self.table.rows[start:stop]):
                yield offset, {**row, "__key__": f"row {start + offset + 1}"}
            return
        name, offset = self.names[piece], 0
        try:
            with _open(name) as stream:
                for row in read_shard(stream, name):
                    yield offset, row
                    offset += 1
        except DataError as exc:  # truncated or corrupt: the rest of the shard is one bad row
            yield offset, BadRow(name, str(exc))

    def identity(self, piece: int) -> str:
        """What names a piece in the row-count cache: a URL, or a local shard's path, size
        and modification time (a rewritten shard is counted again)."""
        name = self.names[piece]
        if self.table is not None or is_url(name):
            return name
        stat = Path(name).stat()
        return f"{Path(name).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    def subset(self, pieces: list[int]) -> Source:
        spans = [self.spans[i] for i in pieces] if self.spans is not None else None
        return Source(self.description, self.root, [self.names[i] for i in pieces],
                      self.table, spans)


def _open(name: str) -> IO[bytes]:
    """A shard's bytes: a local file, or the URL read front to back as it arrives (and copied
    into the cache on the way: ``remote.stream_url``)."""
    return stream_url(name) if is_url(name) else Path(name).open("rb")


def streams(data: Any, streaming: bool | None) -> bool:
    """Whether training reads ``data`` streamed: ``data.streaming`` when set, else for shard
    patterns and URLs (rows given in Python are never streamed)."""
    if not isinstance(data, str | Path):
        return False
    if streaming is not None:
        return streaming
    return is_shards(str(data)) or is_url(str(data))


def open_source(data: str | Path, data_root: str | Path | None) -> Source:
    """The pieces of ``data``: its shards, or slices of its table (:func:`table_source`).

    Raises:
        DataError: a local shard is missing (before any is read: ``shards.shard_names``).
    """
    text = str(data)
    if is_shards(text):
        names = shard_names(text)
        return Source(text, shards_root(names, data_root), names)
    return table_source(read_table(data, data_root))


def table_source(table: Table) -> Source:
    """A table streamed in pieces of :data:`PIECE_ROWS` rows (its files decoded on the fly)."""
    text = table.source
    spans = [(s, min(s + PIECE_ROWS, len(table))) for s in range(0, len(table), PIECE_ROWS)]
    names = [f"{text}[rows {s + 1}-{e}]" for s, e in spans]
    return Source(text, table.root, names, table, spans)


def hold_out_pieces(source: Source, fraction: float) -> tuple[Source, list[int]]:
    """The validation rule of a streamed source without ``--valid``: its last
    ``round(fraction * pieces)`` pieces (at least one) are held out, whole. Returns the
    training source and the held-out pieces.

    Raises:
        DataError: too few pieces to hold any out.
    """
    n_valid = max(1, round(fraction * len(source)))
    if n_valid >= len(source):
        raise DataError(f"{source.description}: {len(source)} shard(s) are too few to hold out "
                        f"{fraction:.0%} of them for validation (a streamed source holds out "
                        "its last shards, whole); pass --valid or set "
                        "training.valid_fraction: 0")
    keep = list(range(len(source) - n_valid))
    return source.subset(keep), list(range(len(source) - n_valid, len(source)))


def read_pieces(source: Source, pieces: list[int]) -> Table:
    """Pieces read whole into a table (held-out validation shards)."""
    rows = [row for i in pieces for _, row in source.read(i)]
    bad = [row for row in rows if isinstance(row, BadRow)]
    if bad:
        raise DataError(bad[0].why)
    return Table(rows, source.root, ", ".join(source.names[i] for i in pieces))


def fit_table(source: Source, rows: int) -> tuple[Table, dict[int, int]]:
    """The first ``rows`` rows, in piece order, which fit the preprocessing; and the row count
    of each piece read to its end on the way."""
    taken: list[dict] = []
    counts: dict[int, int] = {}
    for piece in range(len(source)):
        n = 0
        for _, row in source.read(piece):
            if isinstance(row, BadRow):
                continue
            n += 1
            if len(taken) < rows:
                taken.append(row)
            elif source.table is None:
                break  # this piece's count stays unknown
        else:
            counts[piece] = n
        if len(taken) >= rows:
            break
    if not taken:
        raise DataError(f"{source.description}: no readable rows to fit the preprocessing on")
    return Table(taken, source.root, source.description), counts


def estimate_rows(source: Source, counts: dict[int, int]) -> int:
    """The rows of an epoch: exact where every piece is counted, else the mean count of the
    counted pieces times the number of pieces."""
    if source.spans is not None:
        return sum(e - s for s, e in source.spans)
    if len(counts) == len(source):
        return sum(counts.values())
    mean = sum(counts.values()) / len(counts) if counts else 1.0
    return max(1, math.ceil(mean * len(source)))


def assigned(pieces: int, epoch: int, seed: int, slot: int, slots: int) -> list[int]:
    """The pieces that slot ``slot`` of ``slots`` (``rank * workers + worker``) reads in
    ``epoch``: the pieces in an order drawn from the seed and the epoch, dealt round-robin, so
    every piece is read by exactly one slot."""
    order = np.random.default_rng([seed, epoch]).permutation(pieces)
    return [int(p) for p in order[slot::slots]]


def _counts_file() -> Path:
    return cache_dir() / "stream" / "row_counts.json"


def _read_counts() -> dict[str, int]:
    try:
        return json.loads(_counts_file().read_text())
    except (OSError, ValueError):
        return {}


def known_counts(source: Source) -> dict[int, int]:
    """The row counts of the pieces counted by an earlier epoch (of any run)."""
    saved = _read_counts()
    found = {}
    for piece in range(len(source)):
        key = _count_key(source, piece)
        if key in saved:
            found[piece] = saved[key]
    return found


def record_counts(source: Source, counts: dict[int, int]) -> None:
    """Keep pieces' row counts for later runs (written atomically; last writer wins)."""
    if source.table is not None or not counts:
        return
    saved = _read_counts()
    saved.update({_count_key(source, p): n for p, n in counts.items()})
    _counts_file().parent.mkdir(parents=True, exist_ok=True)
    write_text(_counts_file(), json.dumps(saved))


def _count_key(source: Source, piece: int) -> str:
    return hashlib.sha256(source.identity(piece).encode()).hexdigest()[:32]
