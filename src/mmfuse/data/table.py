"""Reading tables of examples (CSV, JSONL, Parquet) and resolving the file paths they hold."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

TABLE_FORMATS = (".csv", ".jsonl", ".parquet")


@dataclass
class Table:
    """Rows of a table and the folder that relative file paths in it start from.

    Attributes:
        rows: one dict per row; a missing or empty cell is ``None``.
        root: folder that relative paths are resolved against.
        source: where the rows came from, for error messages.
        restrict: reject file paths that resolve outside ``root``.
        numbers: each row's number in the file it was read from (1-based data rows), when
            the table is a subset of it (a training split); None: row i is number i + 1.
    """

    rows: list[dict[str, Any]]
    root: Path
    source: str
    restrict: bool = True
    numbers: list[int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def has_column(self, name: str) -> bool:
        """Whether any row has the field ``name`` (a JSONL row may leave fields out)."""
        return any(name in r for r in self.rows)

    def column(self, name: str) -> list[Any]:
        """The values of one column, or a DataError listing the columns there are."""
        if self.rows and name not in self.rows[0] and not self.has_column(name):
            raise DataError(
                f"{self.source}: no column {name!r}; the table has: {', '.join(self.rows[0])}. "
                "Rename the column or set 'column:' for that input/output in the config."
            )
        return [_empty_to_none(r.get(name)) for r in self.rows]

    def row_number(self, index: int) -> int:
        """The number of row ``index`` in the file it came from (1-based, header excluded), for
        error messages."""
        return self.numbers[index] if self.numbers is not None else index + 1

    def subset(self, indices: list[int]) -> Table:
        """A table with the given rows (same root), which keep their numbers in the file."""
        return Table([self.rows[i] for i in indices], self.root, self.source, self.restrict,
                     [self.row_number(i) for i in indices])


def _empty_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and value.strip() == "") else value


def read_table(path: str | Path, data_root: str | Path | None = None) -> Table:
    """Read a CSV, JSONL or Parquet table.

    Args:
        path: the table file.
        data_root: folder that relative paths start from and that every file must lie in;
            defaults to the table's own folder.

    Raises:
        DataError: the file is missing, of an unknown format, or malformed (with its line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"table {str(path)!r} not found; pass a CSV, JSONL or Parquet file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(f"table {str(path)!r}: unknown format {suffix!r}; use one of "
                        f"{', '.join(TABLE_FORMATS)}")
    if not rows:
        raise DataError(f"table {str(path)!r} has no rows")
    root = Path(data_root) if data_root is not None else path.parent
    return Table(rows, root.resolve(), str(path))


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row:
                raise DataError(f"{path}, line {reader.line_num}: more cells than header columns")
            rows.append(dict(row))
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object per line")
            rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'mmfuse[parquet]'") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def as_table(data: str | Path | list[dict] | Table, data_root: str | Path | None = None) -> Table:
    """Accept a table path, a list of row dicts (paths relative to the cwd) or a Table."""
    if isinstance(data, Table):
        return data
    if isinstance(data, list):
        if not data:
            raise DataError("no rows given")
        root = Path(data_root) if data_root is not None else Path.cwd()
        return Table([dict(r) for r in data], root.resolve(), "rows", restrict=False)
    return read_table(data, data_root)


def resolve_file(value: Any, table: Table, row: int, column: str) -> Path:
    """Resolve a file path from row ``row`` (0-based) of ``table``.

    Raises:
        DataError: the path leaves the table's folder, naming the row, the path and the fix.
    """
    path = Path(str(value)).expanduser()
    full = (path if path.is_absolute() else table.root / path).resolve()
    if table.restrict and not full.is_relative_to(table.root):
        raise DataError(
            f"{table.source}, row {table.row_number(row)}, column {column!r}: path {str(value)!r} "
            "resolves "
            f"outside the table's folder {str(table.root)!r}; move the file there or pass "
            "--data-root with a folder that contains it"
        )
    return full
