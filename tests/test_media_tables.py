"""Tables that hold their media: Parquet and Arrow binary columns, the Hugging Face
``{bytes, path}`` struct (written by the real ``datasets`` library), data: URLs in JSONL;
folders of Parquet shards and ``save_to_disk`` folders as ``--data``."""

from __future__ import annotations

import base64
import csv
import json
import os
from pathlib import Path

import pytest

from mmfuse.data.table import read_table
from mmfuse.errors import DataError
from test_cli import run

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def embedded(rows: list[dict], folder: Path, files: tuple[str, ...]) -> list[dict]:
    """The rows with each file cell replaced by the file's bytes (blank cells: None)."""
    return [{k: ((folder / v).read_bytes() if v else None) if k in files else v
             for k, v in row.items()} for row in rows]


def rounded(value, digits: int = 4):
    """``value`` with every float rounded (nested dicts and lists)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def loose_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def qa(served_run, tmp_path_factory):
    """The served run's test table as CSV + files and in every embedded form."""
    folder = tmp_path_factory.mktemp("media_tables")
    data = served_run["data"]
    rows = read_csv(served_run["test"])
    inline = embedded(rows, data, ("image",))
    forms = {"csv": served_run["test"]}
    forms["binary.parquet"] = folder / "binary.parquet"
    pq.write_table(pa.Table.from_pylist(inline), forms["binary.parquet"])
    forms["struct.parquet"] = folder / "struct.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{**r, "image": {"bytes": r["image"], "path": f"img{i}.png"}}
         for i, r in enumerate(inline)]), forms["struct.parquet"])
    forms["jsonl"] = folder / "data_urls.jsonl"
    forms["jsonl"].write_text("".join(json.dumps(
        {**r, "image": "data:image/png;base64," + base64.b64encode(r["image"]).decode()}) + "\n"
        for r in inline))
    return {"rows": rows, "inline": inline, "forms": forms, "folder": folder}


def test_embedded_images_predict_and_evaluate_as_their_files(served_run, qa, monkeypatch,
                                                               tmp_path):
    """Raw binary, the {bytes, path} struct and data: URLs give the same predictions and the
    same metrics as the CSV of paths, without writing a file beside the table; the decode
    cache names an embedded image by its content, so every form shares one entry."""
    import mmfuse

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    model = mmfuse.Model.load(served_run["run"])
    before = loose_files(qa["folder"])
    expected = model.evaluate(qa["forms"]["csv"])
    answers = [o["answer"] for o in model.predict(
        [{"image": str(served_run["data"] / r["image"]), "question": r["question"]}
         for r in qa["rows"]])]
    entries = set()
    for name in ("binary.parquet", "struct.parquet", "jsonl"):
        got = model.evaluate(qa["forms"][name])
        assert got["outputs"]["answer"] == expected["outputs"]["answer"], name
        entries |= {p.name.split(".")[0] for p in (tmp_path / "cache").iterdir()
                    if p.name.startswith("image-")}
    assert len(entries) == 2, f"one entry for the files, one for the three embedded forms: " \
        f"{sorted(entries)}"
    assert [o["answer"] for o in model.predict(qa["inline"])] == answers
    assert loose_files(qa["folder"]) == before, "nothing was unpacked beside the tables"


def test_hugging_face_datasets_parquet_shards_and_save_to_disk(served_run, qa, tmp_path,
                                                               monkeypatch):
    """Tables written by the real ``datasets`` library (Image feature, bytes embedded): one
    Parquet file, a folder of Parquet shards and a save_to_disk folder all read as the CSV."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    import mmfuse

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    rows = qa["rows"]
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(served_run["data"] / r["image"]).copy() for r in rows],  # in
         # memory, so the Image feature embeds PNG bytes (an opened file keeps only its path)
         "question": [r["question"] for r in rows], "answer": [r["answer"] for r in rows]},
        features=features)
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    (tmp_path / "shards").mkdir()
    for k in range(3):
        ds.shard(3, k, contiguous=True).to_parquet(str(tmp_path / f"shards/train-{k:05d}.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    assert pq.read_table(tmp_path / "hf.parquet").schema.field("image").type.num_fields == 2
    model = mmfuse.Model.load(served_run["run"])
    expected = model.evaluate(qa["forms"]["csv"])["outputs"]["answer"]
    for table in ("hf.parquet", "shards", "saved"):
        assert model.evaluate(tmp_path / table)["outputs"]["answer"] == expected, table
    dict_folder = tmp_path / "dict"
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(dict_folder))
    with pytest.raises(DataError, match="DatasetDict; pass one split's folder"):
        model.evaluate(dict_folder)


def test_train_from_parquet_shards_with_a_save_to_disk_valid(served_run, qa, tmp_path):
    """The CLI trains with --data a folder of Parquet shards and --valid a save_to_disk
    folder, both holding their images."""
    datasets = pytest.importorskip("datasets")
    import yaml

    from conftest import MINIMAL

    train = embedded(read_csv(served_run["train"]), served_run["data"], ("image",))
    (tmp_path / "train").mkdir()
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(train[k::2]), tmp_path / f"train/part-{k}.parquet")
    datasets.Dataset.from_list(qa["inline"]).save_to_disk(str(tmp_path / "valid"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "training": {**MINIMAL["training"],
                                                                "epochs": 1}}))
    result = run("train", config, "--data", tmp_path / "train", "--valid", tmp_path / "valid",
                 "--out", tmp_path / "run", "--json")
    summary = json.loads(result.stdout)
    assert summary["train_rows"] == len(train)
    metrics = json.loads(run("evaluate", tmp_path / "run", "--data", qa["forms"]["struct.parquet"],
                             "--json").stdout)
    assert 0 <= metrics["outputs"]["answer"]["accuracy"] <= 1


def test_every_file_type_embedded(every_type_run, tmp_path, monkeypatch):
    """Images, audio and video held in a Parquet table predict as their files do (audio and
    video decode from a temporary file, which is removed)."""
    import tempfile

    import mmfuse

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    rows = read_csv(every_type_run["csv"])[:12]
    inline = embedded(rows, every_type_run["data"], ("image", "sound", "clip"))
    pq.write_table(pa.Table.from_pylist(inline), tmp_path / "every.parquet")
    model = mmfuse.Model.load(every_type_run["run"])
    scratch = set(os.listdir(tempfile.gettempdir()))
    got = model.predict(read_table(tmp_path / "every.parquet"))
    assert not [f for f in set(os.listdir(tempfile.gettempdir())) - scratch
                if f.startswith("mmfuse-embedded-")]
    paths = [{k: str(every_type_run["data"] / v) if k in ("image", "sound", "clip") and v else v
              for k, v in r.items()} for r in rows]
    assert rounded(got) == rounded(model.predict(paths))  # float noise of 1e-6 aside


def test_bad_embedded_cells_name_the_row_and_the_fix(served_run, qa, tmp_path, monkeypatch):
    import mmfuse

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    model = mmfuse.Model.load(served_run["run"])
    rows = [dict(r) for r in qa["inline"]]
    rows[3]["image"] = b"not an image at all"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match=r"row 4: '<embedded file 19 bytes, sha256"):
        model.evaluate(tmp_path / "corrupt.parquet")
    (tmp_path / "bad.jsonl").write_text(json.dumps(
        {"image": "data:image/png;base64,@@@", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"row 1, column 'image': the data: URL's "
                       "content is not valid base64"):
        model.evaluate(tmp_path / "bad.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet or Arrow files"):
        model.evaluate(tmp_path / "empty")
    pq.write_table(pa.Table.from_pylist([{"image": {"other": 1}, "question": "q",
                                          "answer": "a"}]), tmp_path / "struct.parquet")
    with pytest.raises(DataError, match=r"row 1, column 'image': a struct cell must be "
                       r"the Hugging Face \{bytes, path\}"):
        model.evaluate(tmp_path / "struct.parquet")
