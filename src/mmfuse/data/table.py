"""Reading tables of examples and resolving the file paths they hold.

A table is a CSV, JSONL, Parquet or Arrow file, a folder of Parquet (or Arrow) shards read in
name order, or a folder written by Hugging Face ``datasets``' ``save_to_disk``. A file input's
cell holds a path, or the file itself (``data/media.py``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from .remote import is_url, local_copy, open_url, remote_cache
from .shards import is_shards, read_shard, shard_names, shards_root

TABLE_FORMATS = (".csv", ".jsonl", ".parquet", ".arrow")


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

    def where(self, index: int) -> str:
        """How messages name row ``index``: its number, or a shard's sample by its key."""
        row = self.rows[index] if 0 <= index < len(self.rows) else {}
        if "__key__" in row:
            return f"shard {row.get('__shard__')}, sample {row['__key__']!r}"
        return f"row {self.row_number(index)}"

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
    text = str(path)
    if is_shards(text):
        return _read_shards(text, data_root)
    if is_url(text):
        rows = _read_file(local_copy(text), Path(text.split("?")[0]).suffix)
        root = Path(data_root) if data_root is not None else remote_cache()
        return Table(rows, root.resolve(), text)
    path = Path(path)
    if path.is_dir():
        rows = _read_folder(path)
    elif not path.is_file():
        raise DataError(f"table {str(path)!r} not found; pass a CSV, JSONL, Parquet or Arrow "
                        "file, or a folder of Parquet shards")
    else:
        rows = _read_file(path)
    if not rows:
        raise DataError(f"table {str(path)!r} has no rows")
    root = Path(data_root) if data_root is not None else path if path.is_dir() else path.parent
    return Table(rows, root.resolve(), str(path))


def _read_shards(pattern: str, data_root: str | Path | None) -> Table:
    """Every sample of WebDataset shards (``data/shards.py``), local or at URLs, in order."""
    names = shard_names(pattern)
    rows: list[dict] = []
    for name in names:
        with open_url(name) if is_url(name) else Path(name).open("rb") as stream:
            rows.extend(read_shard(stream, name))
    if not rows:
        raise DataError(f"{pattern!r}: the shards hold no samples")
    return Table(rows, shards_root(names, data_root), pattern)


def _read_file(path: Path, suffix: str | None = None) -> list[dict]:
    suffix = (suffix or path.suffix).lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix in (".parquet", ".arrow"):
        return _read_arrow_table(path, suffix).to_pylist()
    raise DataError(f"table {str(path)!r}: unknown format {suffix!r}; use one of "
                    f"{', '.join(TABLE_FORMATS)}, or a folder of Parquet shards")


def _read_folder(path: Path) -> list[dict]:
    """The rows of every shard of a folder: a ``save_to_disk`` folder's Arrow files in its
    own order, else the Parquet (or Arrow) files in name order."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(f"{str(path)!r} holds a DatasetDict; pass one split's folder: "
                        + ", ".join(str(path / s) for s in splits))
    state = path / "state.json"
    if state.is_file():  # datasets.Dataset.save_to_disk
        try:
            files = [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{state}: not a datasets save_to_disk state ({exc})") from None
    else:
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.arrow"))
    if not files:
        raise DataError(f"folder {str(path)!r} holds no Parquet or Arrow files; pass a table "
                        "file, a folder of .parquet shards, or a folder that "
                        "datasets.Dataset.save_to_disk wrote")
    rows: list[dict] = []
    for file in files:
        rows.extend(_read_arrow_table(file).to_pylist())
    return rows


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


def _read_arrow_table(path: Path, suffix: str | None = None):
    """A Parquet file, or an Arrow IPC file (stream or file format, as ``save_to_disk``
    writes), as a pyarrow Table."""
    suffix = (suffix or path.suffix).lower()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet and Arrow needs pyarrow: pip install "
                        "'mmfuse[parquet]'") from None
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        kind = "Parquet" if suffix == ".parquet" else "Arrow"
        raise DataError(f"{path}: not a readable {kind} file ({exc})") from None


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
            f"{table.source}, {table.where(row)}, column {column!r}: path {str(value)!r} "
            "resolves "
            f"outside the table's folder {str(table.root)!r}; move the file there or pass "
            "--data-root with a folder that contains it"
        )
    return full
