"""Streamed training (training/streamed.py, data/stream.py): shards written by the real
webdataset library, decoded by DataLoader workers; every row once per epoch (with workers,
after a SIGKILL and resume, and over 2 processes x 2 workers), bad rows skipped and counted,
the held-out shard rule, and a CSV table streamed on request."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mmfuse
from conftest import MINIMAL, make_shapes_qa
from mmfuse.data.stream import (
    assigned,
    hold_out_pieces,
    open_source,
    streams,
)
from mmfuse.errors import DataError
from mmfuse.training import checkpoint
from mmfuse.training.streamed import Progress, Report

wds = pytest.importorskip("webdataset")

SIZES = [40, 25, 30, 35, 20, 30, 30, 30]  # rows per shard: uneven, as real shards are


def write_shards(rows: list[dict], folder: Path, data: Path, sizes: list[int]) -> str:
    """``rows`` as shards of the given sizes, written by webdataset's TarWriter."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for n, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"part-{n:03d}.tar")) as sink:
            for i in range(start, start + size):
                row = rows[i]
                sink.write({"__key__": f"s{i:05d}", "image.png": (data / row["image"]).read_bytes(),
                            "question.txt": row["question"], "answer.txt": row["answer"]})
        start += size
    return str(folder / f"part-{{000..{len(sizes) - 1:03d}}}.tar")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("stream")
    table = make_shapes_qa(folder / "data", sum(SIZES) // 2, "en", seed=3)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    return {"rows": rows, "table": table, "data": folder / "data",
            "pattern": write_shards(rows, folder / "shards", folder / "data", SIZES)}


def config(**training) -> dict:
    cfg = copy.deepcopy(MINIMAL)
    cfg["training"].update({"epochs": 2, "batch_size": 16, "valid_fraction": 0.25,
                            "early_stopping_patience": None, **training})
    return cfg


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pieces_are_dealt_so_every_slot_reads_each_piece_once():
    for pieces, slots in ((8, 4), (7, 4), (3, 8), (10, 1)):
        for epoch in (1, 2):
            dealt = [p for slot in range(slots) for p in assigned(pieces, epoch, 0, slot, slots)]
            assert sorted(dealt) == list(range(pieces))
    assert assigned(8, 1, 0, 0, 1) != assigned(8, 2, 0, 0, 1)  # a new order every epoch


def test_progress_collapses_finished_pieces_and_merges_ranks():
    a, b = Progress(), Progress()
    a.add(Report(rows=[(0, 0), (0, 2)], sizes={0: 3}))
    a.add(Report(rows=[(0, 1)], bad=[(1, 0, "x", "broken")]))
    b.add(Report(rows=[(2, 0)]))
    assert a.skip() == {0: 3, 1: frozenset({0})} and a.bad == 1 and a.trained == 3
    merged = Progress(Progress.merged([a.state(), b.state()]))
    assert merged.skip() == {0: 3, 1: frozenset({0}), 2: frozenset({0})}
    assert (merged.trained, merged.bad) == (4, 1)
    assert Progress(json.loads(json.dumps(merged.state()))).skip() == merged.skip()


def test_what_is_streamed_and_which_shards_are_held_out(shards, tmp_path):
    assert streams("shards/a-{000..009}.tar", None) and streams("https://x/t.parquet", None)
    assert not streams("train.csv", None) and streams("train.csv", True)
    assert not streams("shards/a-{000..009}.tar", False) and not streams([{"a": 1}], True)
    source = open_source(shards["pattern"], None)
    train, held = hold_out_pieces(source, 0.25)
    assert held == [6, 7] and train.names == source.names[:6]
    with pytest.raises(DataError, match="too few to hold out .* pass --valid"):
        hold_out_pieces(source.subset([0]), 0.25)
    with pytest.raises(DataError, match="shards not found"):
        open_source(str(tmp_path / "none-{0..3}.tar"), None)


def test_streamed_training_reads_every_row_once_per_epoch_with_two_workers(shards, tmp_path):
    model = mmfuse.Model.from_config({**config(workers=2)})
    summary = model.fit(shards["pattern"], out=tmp_path / "run", threads=1)
    trained = sum(SIZES[:6])  # the last two shards are held out for validation
    assert summary["streamed"] and summary["valid_rows"] == sum(SIZES[6:])
    assert summary["train_rows"] == trained  # counted by the first epoch
    assert [(r["train_rows"], r["bad_rows"]) for r in records(tmp_path / "run")] == \
        [(trained, 0)] * 2
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["held_out_shards"] == open_source(shards["pattern"], None).names[6:]
    scores = mmfuse.Model.load(tmp_path / "run").evaluate(shards["table"])
    assert 0 <= scores["outputs"]["answer"]["accuracy"] <= 1


def test_bad_rows_are_skipped_and_counted_until_max_bad_rows(shards, tmp_path):
    """Two corrupt images and a truncated shard: three bad rows, each logged with its shard and
    key; with data.max_bad_rows 2 the third is an error that names them."""
    folder = tmp_path / "bad"
    rows, data = shards["rows"][:120], shards["data"]
    pattern = write_shards(rows, folder, data, [30, 30, 30, 30])
    corrupt = folder / "part-001.tar"  # rewritten with two images that are not images
    with wds.TarWriter(str(corrupt)) as sink:
        for i in range(30, 60):
            image = b"not a png" if i in (33, 47) else (data / rows[i]["image"]).read_bytes()
            sink.write({"__key__": f"s{i:05d}", "image.png": image,
                        "question.txt": rows[i]["question"], "answer.txt": rows[i]["answer"]})
    truncated = folder / "part-002.tar"
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    cfg = config(workers=0, valid_fraction=0.0, epochs=1)
    done = subprocess.run(train_command(tmp_path, cfg, pattern, tmp_path / "run"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = records(tmp_path / "run")[0]
    assert record["bad_rows"] == 3
    assert "part-001.tar, sample 's00033'" in done.stderr and "s00047" in done.stderr
    assert "part-002.tar: the shard is truncated or corrupt" in done.stderr
    good_of_truncated = record["train_rows"] - 30 - 28 - 30
    assert 0 < good_of_truncated < 30
    cfg["data"] = {"max_bad_rows": 2}
    done = subprocess.run(train_command(tmp_path, cfg, pattern, tmp_path / "run2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "3 bad rows this epoch, more than data.max_bad_rows (2)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_csv_table_streams_on_request(shards, tmp_path):
    cfg = {**config(workers=1), "data": {"streaming": True, "fit_rows": 50}}
    summary = mmfuse.Model.from_config(cfg).fit(shards["table"], out=tmp_path / "run",
                                                 threads=1)
    assert summary["streamed"]
    assert summary["train_rows"] + summary["valid_rows"] == len(shards["rows"])
    assert [r["train_rows"] for r in records(tmp_path / "run")] == [summary["train_rows"]] * 2


def train_command(tmp_path: Path, cfg: dict, data: str, run: Path, *flags: str) -> list[str]:
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "mmfuse", "train", str(path), "--data", data, "--out",
            str(run), "--threads", "1", "--json", *flags]


KILL_AT_STEP = """
import atexit, json, os, signal, sys
from mmfuse.training import streamed
from mmfuse.cli import main

real_add, steps = streamed.Progress.add, {"n": 0, "rows": 0}

def add_then_die(self, report):
    real_add(self, report)
    if report.rows:
        steps["n"] += 1
        steps["rows"] += len(report.rows)
        if steps["n"] == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

atexit.register(lambda: open(os.environ["ROWS_FILE"], "w").write(json.dumps(steps)))
streamed.Progress.add = add_then_die
sys.argv = ["mmfuse", *sys.argv[1:]]
main()
"""


def test_sigkill_mid_epoch_then_resume_reads_every_row_once(shards, tmp_path):
    """SIGKILL at step 17 of a run that checkpoints every 5 steps (so mid-epoch 2, 3 steps
    after the last checkpoint), with 2 workers; the resumed run trains each epoch's rows
    exactly once, counting what the killed run trained before its checkpoint."""
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_AT_STEP)
    cfg = config(workers=2, epochs=3, checkpoint_every_steps=5)
    args = train_command(tmp_path, cfg, shards["pattern"], tmp_path / "run", "--resume")[3:]
    rows_file = tmp_path / "rows.json"
    env = {**os.environ, "ROWS_FILE": str(rows_file)}
    killed = subprocess.run([sys.executable, str(driver), *args], capture_output=True,
                            env={**env, "KILL_AT_STEP": "17"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert len(records(tmp_path / "run")) == 1  # epoch 1 finished, epoch 2 was cut
    saved = checkpoint.load_latest(tmp_path / "run")
    assert saved["epoch"] == 2 and saved["position"] > 0  # the checkpoint is mid-epoch 2
    before = saved["stream"]["trained"]
    assert 0 < before < sum(SIZES[:6])
    done = subprocess.run([sys.executable, str(driver), *args], capture_output=True,
                          text=True, env={**env, "KILL_AT_STEP": "0"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["resumed"] and not summary["interrupted"]
    assert [r["train_rows"] for r in records(tmp_path / "run")] == [sum(SIZES[:6])] * 3
    # the resumed run trained the rest of epoch 2 and epoch 3, nothing twice
    assert json.loads(rows_file.read_text())["rows"] == 2 * sum(SIZES[:6]) - before


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_two_processes_with_two_workers_each_read_every_row_once(shards, tmp_path):
    """8 uneven shards (6 trained on) over 2 ranks x 2 workers: ranks run out of rows at
    different steps and must not hang; each epoch trains on every row once."""
    cfg = config(workers=2, epochs=2)
    done = subprocess.run(train_command(tmp_path, cfg, shards["pattern"], tmp_path / "run",
                                        "--nproc", "2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["processes"] == 2 and summary["streamed"]
    assert [r["train_rows"] for r in records(tmp_path / "run")] == [sum(SIZES[:6])] * 2


def test_a_source_with_fewer_shards_than_processes_is_refused(shards):
    from mmfuse.training.distributed import Ranks
    from mmfuse.training.streamed import make_stream

    source = open_source(shards["pattern"], None)
    model = mmfuse.Model.from_config(config())
    with pytest.raises(DataError, match="give at least one shard per process"):
        make_stream(model.pipeline, source.subset([0]), 10, model.config, 8,
                    Ranks(rank=0, world=2, local_rank=0, local_world=2))


def test_rows_are_decoded_and_parsed_as_a_tables_cells_are(shards):
    """A streamed row's file decodes, a number parses, and a cell that does not parse is an
    error the batch turns into a bad row (as a corrupt file is)."""
    from mmfuse.data.media import Embedded
    from mmfuse.training.streamed import decode_row

    cfg = {"inputs": [{"name": "image", "type": "image", "preprocess": {"size": 16}},
                      {"name": "weight", "type": "number"}],
           "outputs": [{"name": "answer", "type": "category"}]}
    model = mmfuse.Model.from_config(cfg)
    source = open_source(shards["pattern"], None)
    png = (shards["data"] / shards["rows"][0]["image"]).read_bytes()
    memo: dict = {}
    first = decode_row(model.pipeline, source, {"image": Embedded.of(png, "a.png"),
                                                "weight": "2.5"}, memo)
    again = decode_row(model.pipeline, source, {"image": Embedded.of(png, "b.png"),
                                                "weight": ""}, memo)
    assert first["image"].shape == (16, 16, 3) and first["weight"] == 2.5
    assert again["image"] is first["image"] and again["weight"] is None  # decoded once
    with pytest.raises(ValueError):
        decode_row(model.pipeline, source, {"image": None, "weight": "heavy"})
