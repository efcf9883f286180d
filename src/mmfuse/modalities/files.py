"""What image, audio and video preprocessing share: a column of file paths, decoded once.

A :class:`FilePreprocessor` resolves the unique paths of its column (empty cells are missing
rows), checks that every file exists, decodes them in a thread pool into one cached array (or a
tuple of arrays) and reports every unreadable file with its row and path at once, so a user
fixes a table in one pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cache import cache_key, cached_arrays
from ..data.table import Table, resolve_file
from ..errors import DataError
from ..training.threads import available_cpus
from .base import MISSING, Column, Preprocessor, unique_values


class UnreadableFile(Exception):
    """Raised by a decoder for a file it cannot read; the message says why."""


class FilePreprocessor(Preprocessor):
    """Paths in a column -> decoded, cached arrays; subclasses decode one file and stack."""

    is_file = True
    kind = "file"  # "image", "audio", "video": names the cache entries and the error messages
    use_cache = True

    def settings(self) -> dict:
        """Everything that changes the decoded arrays (part of the cache key)."""
        raise NotImplementedError

    def decode(self, path: Path) -> np.ndarray:
        """Decode one file.

        Raises:
            UnreadableFile: the file is not a readable file of this modality.
        """
        raise NotImplementedError

    def stack(self, decoded: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Join the decoded files into the cached array(s) (pad to one shape if needed)."""
        return (np.stack(decoded),)

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
        values = table.column(self.column)
        unique, index = unique_values([None if v is None else str(v) for v in values])
        if not unique:
            raise DataError(f"{table.source}: column {self.column!r} is empty in every row; "
                            f"give at least one {self.kind} file or remove this input")
        first_rows = np.unique(index[index >= 0], return_index=True)[1]
        present_rows = np.flatnonzero(index >= 0)
        first_row = {value: int(present_rows[first_rows[i]]) for i, value in enumerate(unique)}
        paths = [resolve_file(v, table, first_row[v], self.column) for v in unique]
        missing = [(first_row[v], v, "file not found")
                   for v, p in zip(unique, paths, strict=True) if not p.is_file()]
        if missing:
            self._raise_unreadable(table, missing)
        key = cache_key(self.kind, self.settings(), paths)
        arrays = cached_arrays(key, lambda: self._decode_all(table, unique, paths, first_row),
                               self.use_cache)
        return Column(self.unpack(arrays), index, is_file=True, key=key)

    def column_of(self, values: list[np.ndarray | None]) -> Column:
        """The column of already decoded files (one per row; None where the row misses the
        input), stacked exactly as :meth:`encode` stacks the decoded files of a table."""
        present = [v for v in values if v is not None]
        index = np.full(len(values), MISSING, dtype=np.int64)
        index[[i for i, v in enumerate(values) if v is not None]] = np.arange(len(present))
        items = self.unpack(self.stack(present)) if present else None
        return Column(items, index, is_file=True)

    def _decode_all(self, table: Table, values: list[str], paths: list[Path],
                    first_row: dict[str, int]) -> tuple[np.ndarray, ...]:
        decoded: list[np.ndarray | None] = [None] * len(paths)
        errors: list[tuple[int, str, str]] = []

        def run(i: int) -> None:
            try:
                decoded[i] = self.decode(paths[i])
            except UnreadableFile as exc:
                errors.append((first_row[values[i]], values[i], str(exc).split("\n")[0]))

        with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
            list(pool.map(run, range(len(paths))))
        if errors:
            self._raise_unreadable(table, sorted(errors))
        return self.stack(decoded)

    def _raise_unreadable(self, table: Table, errors: list[tuple[int, str, str]]) -> None:
        lines = [f"  row {row + 1}: {value!r}: {why}" for row, value, why in errors[:10]]
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
        where = [slice(None)] * a.ndim
        where[axis] = slice(0, a.shape[axis])
        out[(i, *where)] = a
    return out, lengths
