"""What every preprocessor does, and the encoded form of one table column.

A column is stored as its *unique* values (``items``) plus, per row, the index of its value
(``index``). Rows that share a file or a sentence share an item; a batch gathers the unique items
of its rows, the encoder runs once per item, and the features are expanded back to rows with
``index``. That is why the 20 questions of one Sort-of-CLEVR image cost one image encoding.
A row whose cell is empty (or whose field is absent) has index ``MISSING`` (-1): it has no item,
and the model masks the input out for that row (or gives it a learned placeholder, with
``missing: placeholder``) instead of encoder features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.table import Table
from ..specs import EncoderSpec, TargetSpec

MISSING = -1  # the item index of a row that lacks this input


@dataclass
class Column:
    """One encoded column: unique items and each row's item index."""

    items: Any  # np.ndarray [U, ...] or a tuple of arrays
    index: np.ndarray  # [N] int64; MISSING where the row lacks this input
    is_file: bool = False  # items are decoded files (batches may group rows by them)
    key: str | None = None  # what identifies the items (the decode cache's key), if known

    @property
    def sharing(self) -> float:
        """Rows per unique item (1.0 when no two rows share a value)."""
        present = self.index[self.index != MISSING]
        return len(present) / max(1, len(np.unique(present)))

    def item_tensors(self, prep: Preprocessor, unique: np.ndarray, train: bool,
                     generator: torch.Generator) -> dict:
        """The encoder's input for items ``unique``, made by the column's preprocessor (a
        column of cached features makes its own: ``data/features.py``)."""
        return prep.tensors(select(self.items, unique), train, generator)

    def without_rows(self) -> Column:
        """The same column with the input removed from every row (``evaluate --drop``)."""
        return replace(self, index=np.full_like(self.index, MISSING))


class Preprocessor:
    """Turns raw values of one column into tensors; learns its state from the training split."""

    name: str
    column: str
    is_file: bool = False

    def fit(self, table: Table) -> None:
        """Learn vocabulary or labels from the training split (default: nothing to learn)."""

    def fit_encode(self, table: Table) -> Column:
        """Fit on the training split and return its encoded column."""
        self.fit(table)
        return self.encode(table)

    def encode(self, table: Table) -> Column:
        """Encode the column of ``table`` (decode files, tokenize text) into a Column."""
        raise NotImplementedError

    def column_of(self, values: list[Any]) -> Column:
        """Encode values given directly rather than read from a table (the server's rows): here
        the raw values (text); file inputs override it to take what their ``decode`` returned.
        None is a missing value."""
        return self.encode(Table([{self.column: v} for v in values], Path.cwd(), "request",
                                 restrict=False))

    def tensors(self, items: Any, train: bool, generator: torch.Generator) -> dict:
        """Turn a selection of unique items into the encoder's keyword arguments."""
        raise NotImplementedError

    def targets(self, table: Table) -> np.ndarray:
        """An output's encoded targets for every row of ``table`` (label indices by default;
        number, binary and set outputs give floats, NaN where a row has no target)."""
        return self.encode(table).index

    def target_spec(self) -> TargetSpec:
        """What the output's head needs to build itself (labels, counts, statistics)."""
        return TargetSpec(labels=list(getattr(self, "labels", [])))

    def target_tensor(self, values: np.ndarray) -> torch.Tensor:
        """An output's encoded targets for a batch of rows, as the head's loss takes them."""
        return torch.from_numpy(values)

    def augments(self) -> bool:
        """Whether training batches are randomly augmented (cached features would freeze one
        draw of the augmentation)."""
        return False

    def state(self) -> dict:
        """Learned state as plain JSON-able data."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""

    def spec(self) -> EncoderSpec:
        """What the encoder needs to know to build itself (sizes, vocabulary size)."""
        raise NotImplementedError

    def batch(self, column: Column, row_items: np.ndarray, train: bool,
              generator: torch.Generator) -> dict:
        """Tensors for a batch whose rows hold items ``row_items`` (MISSING for none): the
        unique items once (no tensors at all when every row misses the input), plus ``index``
        mapping each row to its item or to MISSING."""
        present = row_items != MISSING
        unique, inverse = np.unique(row_items[present], return_inverse=True)
        index = np.full(len(row_items), MISSING, dtype=np.int64)
        index[present] = inverse.reshape(-1)
        out = column.item_tensors(self, unique, train, generator) if len(unique) else {}
        out["index"] = torch.from_numpy(index)
        return out


def select(items: Any, indices: np.ndarray) -> Any:
    """Index an items array, or each array of a tuple of them."""
    if isinstance(items, tuple):
        return tuple(np.asarray(part[indices]) for part in items)
    return np.asarray(items[indices])


def unique_values(values: list[Any]) -> tuple[list[Any], np.ndarray]:
    """Unique values in first-seen order and each row's index into them (MISSING for None)."""
    position: dict[Any, int] = {}
    index = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        index[row] = MISSING if value is None else position.setdefault(value, len(position))
    return list(position), index
