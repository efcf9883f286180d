"""Writing a generated dataset as Parquet with its media inside, or as WebDataset shards
(``mmfuse datasets NAME DIR --format parquet|webdataset``).

Every generator writes CSV tables of paths beside the media files; this turns each table
(``train.csv``, ``test.csv``) into

- ``parquet``: ``NAME.parquet``, in the Hugging Face layout: each file column is the
  ``{bytes, path}`` struct of an ``Image``, ``Audio`` or ``Video`` feature (the
  ``huggingface`` schema metadata says which), every other column a string, so both
  ``datasets.load_dataset("parquet", ...)`` and mmfuse read it;
- ``webdataset``: ``NAME-000000.tar``, ... (``shard_size`` samples each): ``KEY.COLUMN.EXT``
  per file and ``KEY.json`` with the other columns (``data/shards.py`` reads them back).

The media files and CSV tables are then removed: the folder holds the tables only.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

from ..errors import MmfuseError

FORMATS = ("csv", "parquet", "webdataset")
FEATURES = {"image": ("Image", {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}),
            "audio": ("Audio", {".wav", ".flac", ".mp3", ".ogg", ".m4a"}),
            "video": ("Video", {".mp4", ".webm", ".avi", ".mkv", ".mov"})}


def file_columns(rows: list[dict], folder: Path) -> dict[str, str]:
    """Columns whose every filled cell is a media file under ``folder``: name -> feature."""
    found = {}
    for column in rows[0]:
        cells = [r[column] for r in rows if r.get(column)]
        for feature, suffixes in FEATURES.values():
            if cells and all(Path(c).suffix.lower() in suffixes and (folder / c).is_file()
                             for c in cells):
                found[column] = feature
    return found


def convert(folder: Path, form: str, shard_size: int = 1000) -> list[str]:
    """Rewrite the CSV tables in ``folder`` as ``form``; the tables written."""
    if form not in FORMATS:
        raise MmfuseError(f"--format {form!r}: use one of {', '.join(FORMATS)}")
    if form == "csv":
        return sorted(p.name for p in folder.glob("*.csv"))
    written, media = [], set()
    for table in sorted(folder.glob("*.csv")):
        with table.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        files = file_columns(rows, folder)
        media |= {(folder / r[c]).resolve() for r in rows for c in files if r.get(c)}
        if form == "parquet":
            written.append(_write_parquet(rows, files, folder, table.stem))
        else:
            written.append(_write_shards(rows, files, folder, table.stem, shard_size))
        table.unlink()
        table.with_suffix(".jsonl").unlink(missing_ok=True)  # the same table again
    for path in media:
        path.unlink(missing_ok=True)
    readme = folder / "README.txt"
    if readme.is_file():  # it describes the CSV tables of paths, which are gone
        readme.write_text(readme.read_text(encoding="utf-8") + (
            f"\nWritten with --format {form}: the tables are {', '.join(written)}, with the "
            "files inside (file columns keep their names); the columns are as described "
            "above.\n"), encoding="utf-8")
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(sub.iterdir()):
            shutil.rmtree(sub)
    return written


def _write_parquet(rows: list[dict], files: dict[str, str], folder: Path, name: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def cell(column: str, value: str):
        if column not in files:
            return value
        return {"bytes": (folder / value).read_bytes(), "path": Path(value).name} if value \
            else None

    table = pa.Table.from_pylist([{c: cell(c, v) for c, v in r.items()} for r in rows])
    features = {c: {"_type": files[c]} if c in files else {"dtype": "string", "_type": "Value"}
                for c in rows[0]}
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, folder / f"{name}.parquet")
    return f"{name}.parquet"


def _write_shards(rows: list[dict], files: dict[str, str], folder: Path, name: str,
                  shard_size: int) -> str:
    shards = -(-len(rows) // shard_size)
    for k in range(shards):
        with tarfile.open(folder / f"{name}-{k:06d}.tar", "w") as tar:
            for i in range(k * shard_size, min(len(rows), (k + 1) * shard_size)):
                row, key = rows[i], f"{i:08d}"
                members = {f"{key}.json": json.dumps(
                    {c: v for c, v in row.items() if c not in files}).encode()}
                for column in files:
                    if row[column]:
                        suffix = Path(row[column]).suffix.lower()
                        members[f"{key}.{column}{suffix}"] = (folder / row[column]).read_bytes()
                for member, data in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{name}-{{000000..{shards - 1:06d}}}.tar"
