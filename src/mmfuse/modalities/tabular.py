"""What the tabular input types (``number``, ``category``, ``binary``) share: one value per row,
read from a cell (CSV text, or a JSON / Parquet number, string or boolean), with every bad cell
named by its row, column and value.

The unique values of a column are its items, as for text: rows that share a value share an
item. A blank cell (and a NaN) is a missing input and takes the missing-input path, as an empty
image cell does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data.table import Table
from ..errors import DataError
from .base import MISSING, Column, Preprocessor
from .kind import BadValue, Modality, blank

MAX_REPORTED = 10  # bad cells listed in one error


class TabularPreprocessor(Preprocessor):
    """Cells -> parsed values (``parse``) -> unique items and each row's index."""

    what = "value"  # what a cell must hold, for error messages

    def __init__(self, config: Any) -> None:
        self.name, self.column = config.name, config.column

    def parse(self, value: Any) -> Any:
        """One non-blank cell as this type's value.

        Raises:
            ValueError: the cell does not hold such a value (the message says what it holds).
        """
        raise NotImplementedError

    def parsed(self, table: Table) -> list[Any]:
        """Every cell of the column parsed (None where blank).

        Raises:
            DataError: cells that do not parse, each with its row (1-based), column and value.
        """
        values, bad = [], []
        for row, cell in enumerate(table.column(self.column)):
            if missing_cell(cell):
                values.append(None)
                continue
            try:
                values.append(self.parse(cell))
            except ValueError as exc:
                bad.append(f"  row {table.row_number(row)}: {cell!r}: {exc}")
                values.append(None)
        if bad:
            more = f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
            raise DataError(f"{table.source}: {len(bad)} bad cell(s) in column {self.column!r}, "
                            f"which must hold {self.what}:\n" + "\n".join(bad[:MAX_REPORTED])
                            + more + "\nFix these cells (or leave them empty to mark the value "
                            "missing) and run again.")
        return values

    def training_values(self, table: Table, role: str) -> np.ndarray:
        """The column's parsed numbers (blank cells left out) to learn statistics from.

        Raises:
            DataError: no cell holds one (``role``: "input" or "output", for the fix).
        """
        values = np.array([v for v in self.parsed(table) if v is not None], dtype=np.float64)
        if not len(values):
            raise DataError(f"{table.source}: column {self.column!r} has no numbers to learn "
                            f"from; fill some cells or remove this {role}")
        return values

    def encode(self, table: Table) -> Column:
        return self.column_of(self.parsed(table))

    def column_of(self, values: list[Any]) -> Column:
        """The column of parsed values (None: missing): unique items and each row's index."""
        position: dict[Any, int] = {}
        index = np.full(len(values), MISSING, dtype=np.int64)
        for row, value in enumerate(values):
            if value is not None:
                index[row] = position.setdefault(value, len(position))
        return Column(self.items(list(position)), index)

    def items(self, unique: list[Any]) -> np.ndarray:
        """The stored items of the unique parsed values."""
        return np.asarray(unique)


def label_text(value: object) -> str:
    """A label or category value as text: ``3`` in JSON and ``"3"`` in CSV are the same."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def missing_cell(value: Any) -> bool:
    """A blank cell, or a NaN number (how pandas and Parquet write a gap)."""
    return blank(value) or (isinstance(value, float) and math.isnan(value))


class TabularModality(Modality):
    """A tabular input type: one value per row, encoded as a single token without position."""

    tabular = True

    def missing(self, value: Any) -> bool:
        return missing_cell(value)

    def request_value(self, value: Any, prep: TabularPreprocessor, limits: Any) -> Any:
        if missing_cell(value):
            return None
        if isinstance(value, dict | list | bytes):
            got = "a file upload" if isinstance(value, bytes) else type(value).__name__
            raise BadValue(f"expected {prep.what}, got {got}")
        try:
            return prep.parse(value)
        except ValueError as exc:
            raise BadValue(f"expected {prep.what}: {exc}") from None
