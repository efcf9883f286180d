"""``mmfuse datasets NAME DIR --format csv|parquet|webdataset``: the same rows and the same
media in every form, read back by mmfuse (and the Parquet by Hugging Face datasets)."""

from __future__ import annotations

import json

import pytest

from mmfuse.data.media import Embedded, cell_media
from mmfuse.data.table import read_table
from test_cli import run

pytest.importorskip("pyarrow")


def as_bytes(table, media: tuple[str, ...]) -> list[dict]:
    """Rows with each media cell as its bytes and every other cell as text (None if blank)."""
    out = []
    for row in table.rows:
        cells = {}
        for column in sorted(set(row) - {"__key__", "__shard__"}):
            value = row[column]
            if column in media and value not in (None, ""):
                cell = cell_media(value)
                value = cell.data if isinstance(cell, Embedded) else \
                    (table.root / cell).read_bytes()
            cells[column] = None if value == "" else value
        out.append(cells)
    return out


@pytest.mark.parametrize("name, media, args", [
    ("sort-of-clevr", ("image",), ["--train", "20", "--test", "5"]),
    ("av-digits", ("image", "audio"), ["--train", "30", "--test", "10"]),
])
def test_every_format_holds_the_same_rows(tmp_path, name, media, args):
    tables = {}
    for form in ("csv", "parquet", "webdataset"):
        summary = json.loads(run("datasets", name, tmp_path / form, *args, "--format", form,
                                 "--shard-size", "64", "--json").stdout)
        tables[form] = summary["tables"]
    assert tables["parquet"] == ["test.parquet", "train.parquet"]
    assert {p.name for p in (tmp_path / "parquet").iterdir()} - {"README.txt"} \
        == set(tables["parquet"])
    assert all(p.suffix == ".tar" for p in (tmp_path / "webdataset").iterdir()
               if p.name != "README.txt")
    for split in ("train", "test"):
        expected = as_bytes(read_table(tmp_path / "csv" / f"{split}.csv"), media)
        parquet = as_bytes(read_table(tmp_path / "parquet" / f"{split}.parquet"), media)
        pattern = next(t for t in tables["webdataset"] if t.startswith(split))
        shards = as_bytes(read_table(str(tmp_path / "webdataset" / pattern)), media)
        assert parquet == expected
        assert shards == [{k: v for k, v in r.items() if v is not None or k not in media}
                          for r in expected]


def test_a_readme_says_which_tables_it_describes(tmp_path):
    run("datasets", "products", tmp_path, "--train", "20", "--test", "10", "--format",
        "webdataset")
    assert "Written with --format webdataset: the tables are test-{000000..000000}.tar, " \
        "train-{000000..000000}.tar" in (tmp_path / "README.txt").read_text()


def test_the_parquet_form_is_a_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    run("datasets", "sort-of-clevr", tmp_path, "--train", "10", "--test", "3",
        "--format", "parquet")
    ds = datasets.Dataset.from_parquet(str(tmp_path / "test.parquet"))
    assert ds.features["image"] == datasets.Image()
    assert ds[0]["image"].size == (75, 75) and len(ds) == 60


def test_an_unknown_format_is_refused(tmp_path):
    result = run("datasets", "sort-of-clevr", tmp_path, "--format", "zip", check=False)
    assert result.returncode != 0 and "--format 'zip': use one of csv, parquet, webdataset" \
        in result.stderr
