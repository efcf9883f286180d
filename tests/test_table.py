"""Tests for reading tables and resolving the file paths in them (mmfuse.data.table)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmfuse.data.table import Table, as_table, read_table, resolve_file
from mmfuse.errors import DataError

COLUMNS = ["image", "question", "answer"]
ROWS = [
    {"image": "img/a.png", "question": "What colour is the square?", "answer": "red"},
    {"image": "img/b.png", "question": "", "answer": "blue"},
    {"image": "img/a.png", "question": "Is it 中文?", "answer": ""},
]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    table = read_table(WRITERS[fmt](tmp_path / f"t.{fmt}", ROWS))

    assert len(table) == 3
    assert table.rows == ROWS
    assert table.column("image") == ["img/a.png", "img/b.png", "img/a.png"]
    assert table.column("question") == ["What colour is the square?", None, "Is it 中文?"]
    assert table.column("answer") == ["red", "blue", None]
    assert table.root == tmp_path.resolve()
    assert table.source == str(tmp_path / f"t.{fmt}")


def test_jsonl_null_blank_and_missing_cells_are_none(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1, "b": null}\n\n{"a": "  ", "b": "x"}\n{"b": "y"}\n')
    table = read_table(path)
    assert len(table) == 3  # the blank line is skipped
    assert table.column("a") == [1, None, None]
    assert table.column("b") == [None, "x", "y"]


def test_csv_with_bom_and_uppercase_extension(tmp_path):
    path = tmp_path / "T.CSV"
    path.write_bytes("\ufeffimage,answer\nx.png,yes\n".encode())
    table = read_table(path)
    assert table.rows == [{"image": "x.png", "answer": "yes"}]


def test_missing_column_lists_available_columns(tmp_path):
    table = read_table(write_csv(tmp_path / "t.csv", ROWS))
    with pytest.raises(DataError) as info:
        table.column("picture")
    message = str(info.value)
    assert "'picture'" in message
    assert "image, question, answer" in message
    assert "t.csv" in message


def test_column_present_only_in_some_jsonl_rows_is_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "extra": "e"}\n')
    assert read_table(path).column("extra") == [None, "e"]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3,,}\n')
    with pytest.raises(DataError, match="line 3") as info:
        read_table(path)
    assert "not valid JSON" in str(info.value)


def test_jsonl_line_that_is_not_an_object_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2"):
        read_table(path)


def test_csv_row_with_too_many_cells_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match="line 3"):
        read_table(path)


def test_corrupt_parquet_is_a_data_error(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        read_table(path)


@pytest.mark.parametrize("name", ["t.xlsx", "t.txt", "t"])
def test_unknown_extension_is_rejected(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unknown format") as info:
        read_table(path)
    assert ".csv" in str(info.value) and ".jsonl" in str(info.value)


def test_missing_table_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "absent.csv")


def test_table_without_rows_is_rejected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image,answer\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(path)


# --- file paths --------------------------------------------------------------------------------


def test_relative_paths_start_at_the_table_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    table = read_table(write_csv(data / "t.csv", ROWS))
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    assert resolve_file("img/a.png", table, 0, "image") == (data / "img" / "a.png").resolve()
    assert resolve_file("./img/../b.png", table, 0, "image") == (data / "b.png").resolve()
    inside_absolute = str((data / "img" / "c.png").resolve())
    assert resolve_file(inside_absolute, table, 0, "image") == Path(inside_absolute)


@pytest.mark.parametrize("kind", ["parent", "absolute"])
def test_paths_outside_the_table_folder_are_rejected(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    table = read_table(write_csv(data / "t.csv", ROWS))
    value = "../x.png" if kind == "parent" else str(tmp_path / "elsewhere" / "x.png")

    with pytest.raises(DataError) as info:
        resolve_file(value, table, 4, "image")
    message = str(info.value)
    assert "row 5" in message
    assert repr(value) in message
    assert "'image'" in message
    assert "--data-root" in message


def test_data_root_widens_the_allowed_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = read_table(write_csv(data / "t.csv", ROWS), data_root=tmp_path)

    assert table.root == tmp_path.resolve()
    assert resolve_file("data/img/a.png", table, 0, "image") == (data / "img/a.png").resolve()
    with pytest.raises(DataError):
        resolve_file("../x.png", table, 0, "image")


def test_symlink_leaving_the_folder_is_rejected(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (data / "link.png").symlink_to(outside)
    table = read_table(write_csv(data / "t.csv", ROWS))
    with pytest.raises(DataError, match="outside"):
        resolve_file("link.png", table, 0, "image")


def test_in_memory_rows_are_not_restricted(tmp_path):
    table = as_table([{"image": "../x.png"}], data_root=tmp_path / "sub")
    assert table.restrict is False
    assert resolve_file("../x.png", table, 0, "image") == (tmp_path / "x.png").resolve()


def test_as_table_passes_tables_through_and_reads_paths(tmp_path):
    path = write_csv(tmp_path / "t.csv", ROWS)
    table = as_table(path)
    assert isinstance(table, Table) and table.rows == ROWS
    assert as_table(table) is table
    with pytest.raises(DataError, match="no rows"):
        as_table([])


def test_subset_keeps_root_and_order(tmp_path):
    table = read_table(write_csv(tmp_path / "t.csv", ROWS))
    part = table.subset([2, 0])
    assert part.rows == [ROWS[2], ROWS[0]]
    assert part.root == table.root and part.restrict
