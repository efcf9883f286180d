"""WebDataset shards (written by the real webdataset library) and data behind URLs (served by
a real HTTP server that the test starts) as --data and --valid."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from mmfuse.data.shards import expand_braces
from mmfuse.data.table import read_table
from mmfuse.errors import DataError
from test_cli import run

wds = pytest.importorskip("webdataset")
pytest.importorskip("pyarrow")


def test_brace_patterns_expand_as_webdataset_reads_them():
    assert expand_braces("s/train-{000..003}.tar") == [f"s/train-{i:03d}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("one.tar") == ["one.tar"]
    import braceexpand  # webdataset's own dependency: the reference

    pattern = "x/{a,bb}/part-{0008..0011}.tar"
    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))
    with pytest.raises(DataError, match="a range must be of numbers"):
        expand_braces("{a..c}.tar")


def write_shards(rows: list[dict], folder: Path, data: Path, layout: str) -> str:
    """The rows as 3 shards through webdataset's ShardWriter; the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "train-%06d.tar"), maxcount=-(-len(rows) // 3),
                         verbose=0) as sink:
        for i, row in enumerate(rows):
            image = (data / row["image"]).read_bytes()
            if layout == "named":  # KEY.image.png, KEY.question.txt, KEY.answer.txt
                sink.write({"__key__": f"s{i:05d}", "image.png": image,
                            "question.txt": row["question"], "answer.txt": row["answer"]})
            else:  # KEY.png and KEY.json with the other columns
                sink.write({"__key__": f"s{i:05d}", "png": image,
                            "json": {"question": row["question"], "answer": row["answer"]}})
    return str(folder / "train-{000000..000002}.tar")


@pytest.fixture(scope="module")
def tables(served_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    with served_run["test"].open() as f:
        rows = list(csv.DictReader(f))
    return {"rows": rows, "folder": folder,
            "named": write_shards(rows, folder / "named", served_run["data"], "named"),
            "json": write_shards(rows, folder / "json", served_run["data"], "json")}


def test_shard_rows_match_what_webdataset_reads(tables):
    """Each sample is one row, in order; its members are its columns."""
    ours = read_table(tables["named"])
    theirs = list(wds.WebDataset(expand_braces(tables["named"]), shardshuffle=False))
    assert [r["__key__"] for r in ours.rows] == [s["__key__"] for s in theirs]
    for row, sample in zip(ours.rows, theirs, strict=True):
        assert row["image"].data == sample["image.png"]
        assert row["question"] == sample["question.txt"].decode()
    json_rows = read_table(tables["json"]).rows
    assert [(r["question"], r["answer"]) for r in json_rows] == \
        [(r["question"], r["answer"]) for r in tables["rows"]]
    assert json_rows[0]["png"].data == ours.rows[0]["image"].data


def test_evaluating_shards_equals_the_csv(served_run, tables, tmp_path):
    import mmfuse

    model = mmfuse.Model.load(served_run["run"])
    expected = model.evaluate(served_run["test"])["outputs"]["answer"]
    assert model.evaluate(tables["named"])["outputs"]["answer"] == expected


def test_a_truncated_shard_names_the_shard_and_the_sample(tables, tmp_path):
    shard = Path(expand_braces(tables["named"])[1])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    with pytest.raises(DataError, match=r"cut.tar: the shard is truncated or corrupt .* at "
                       r"sample 's\d+'"):
        read_table(str(cut))
    with pytest.raises(DataError, match=r"1 of 2 shards not found .* e.g. '.*train-000003.tar'"):
        read_table(str(shard.parent / "train-{000002..000003}.tar"))


class Server:
    """A real HTTP server over a folder, on a free loopback port, in a thread."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.requests = _QuietHandler.log

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    log: list[str] = []

    def log_message(self, format: str, *args) -> None:
        if self.command == "GET":  # a fetch (HEAD asks only for the size)
            _QuietHandler.log.append(self.path)


def hf_parquet(rows: list[dict], data: Path, path: Path) -> None:
    """A table in the Hugging Face layout: the Image feature's {bytes, path} struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"image": {"bytes": (data / r["image"]).read_bytes(),
                                             "path": Path(r["image"]).name},
                                   "question": r["question"], "answer": r["answer"]}
                                  for r in rows])
    features = {"image": {"_type": "Image"}, "question": {"dtype": "string", "_type": "Value"},
                "answer": {"dtype": "string", "_type": "Value"}}
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)


def test_train_from_shards_over_http_with_a_hugging_face_valid(served_run, tables, tmp_path,
                                                              monkeypatch):
    """The CLI trains on shards a local HTTP server serves, with --valid a Hugging Face-layout
    Parquet file; each shard is fetched once into the cache, and a second read works with the
    server gone."""
    import yaml

    from conftest import MINIMAL

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    with served_run["train"].open() as f:
        train = list(csv.DictReader(f))
    site = tmp_path / "site"
    pattern = write_shards(train, site / "shards", served_run["data"], "named")
    hf_parquet(tables["rows"], served_run["data"], site / "valid.parquet")
    datasets = pytest.importorskip("datasets")
    assert datasets.Dataset.from_parquet(str(site / "valid.parquet")).features["image"] \
        == datasets.Image()
    server = Server(site)
    try:
        url = server.url + "/" + Path(pattern).relative_to(site).as_posix()
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({**MINIMAL, "training": {**MINIMAL["training"],
                                                                  "epochs": 2}}))
        summary = json.loads(run("train", config, "--data", url, "--valid",
                                 server.url + "/valid.parquet", "--out", tmp_path / "run",
                                 "--json").stdout)
        assert summary["train_rows"] == len(train)
        fetched = [p for p in server.requests if p.endswith((".tar", ".parquet"))]
        assert sorted(fetched) == sorted({*fetched}), "each file fetched once"
        assert len(fetched) == 4
    finally:
        server.stop()
    cached = read_table(url)  # from the cache: the server is gone
    assert len(cached) == len(train)
    metrics = json.loads(run("evaluate", tmp_path / "run", "--json").stdout)
    assert 0 <= metrics["outputs"]["answer"]["accuracy"] <= 1


def test_urls_without_a_backend_or_a_file_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    server = Server(tmp_path)
    try:
        with pytest.raises(DataError, match="not found; check the URL"):
            read_table(server.url + "/nothing.parquet")
    finally:
        server.stop()
    with pytest.raises(DataError, match=r"cannot read nosuch:// URLs here .*install the fsspec "
                       "backend"):
        read_table("nosuch://bucket/table.parquet")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"cannot read s3:// URLs here .*pip install "
                           r"'mmfuse\[s3\]'"):
            read_table("s3://bucket/table.parquet")


def test_concurrent_fetches_keep_every_copy_whole(tmp_path, monkeypatch):
    """Many threads fetching many files, some the same one, leave exactly one whole copy of
    each and no partial files; a second round reads the copies with the server gone (a cache
    that loses an entry under concurrent writers fails the second round)."""
    from concurrent.futures import ThreadPoolExecutor

    from mmfuse.data.remote import local_copy, remote_cache

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    site = tmp_path / "site"
    site.mkdir()
    payloads = {f"f{i:03d}.bin": bytes([i]) * (1000 + 997 * i) for i in range(40)}
    for name, data in payloads.items():
        (site / name).write_bytes(data)
    server = Server(site)
    urls = [f"{server.url}/{name}" for name in payloads] * 3
    try:
        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(local_copy, urls))
    finally:
        server.stop()
    with ThreadPoolExecutor(8) as pool:
        second = list(pool.map(local_copy, urls))
    assert first == second
    assert [p.read_bytes() for p in first] == [payloads[u.rsplit("/", 1)[1]] for u in urls]
    files = [p for p in remote_cache().rglob("*") if p.is_file()]
    assert len(files) == len(payloads), "one copy per URL, no partial files left"


def test_file_cells_may_be_urls(served_run, tmp_path, monkeypatch):
    """A CSV whose image cells are http URLs evaluates as the CSV of paths; the images are
    fetched once, so a second evaluation works with the server gone; a missing one is named
    with its row."""
    import mmfuse

    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    with served_run["test"].open() as f:
        rows = list(csv.DictReader(f))
    server = Server(served_run["data"])
    table = tmp_path / "urls.csv"
    try:
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "image": f"{server.url}/{r['image']}"} for r in rows)
        model = mmfuse.Model.load(served_run["run"])
        expected = model.evaluate(served_run["test"])["outputs"]["answer"]
        assert model.evaluate(table)["outputs"]["answer"] == expected
        bad = tmp_path / "bad.csv"
        bad.write_text(f"image,question,answer\n{server.url}/img/none.png,q,a\n")
        with pytest.raises(DataError, match=r"row 1: '.*/img/none.png': not found"):
            model.evaluate(bad)
    finally:
        server.stop()
    for entry in (tmp_path / "cache").iterdir():  # drop the decoded arrays, keep remote/:
        if entry.name != "remote":  # the images decode again from their fetched copies
            entry.unlink()
    assert mmfuse.Model.load(served_run["run"]).evaluate(table)["outputs"]["answer"] == expected
