"""Checkpoints and resume: SIGKILL at random moments (and inside a checkpoint write), then
``--resume``, ends with the same metrics and bit-identical weights as an uninterrupted run; the
run-folder rules (--resume, --overwrite) and their errors."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import mmfuse
from conftest import MINIMAL
from mmfuse.errors import ConfigError, DataError, MmfuseError
from mmfuse.training import checkpoint

TIME_KEYS = ("seconds", "epoch_seconds", "examples_per_second")  # all that may differ


def config(**training) -> dict:
    cfg = copy.deepcopy(MINIMAL)
    cfg["training"].update({"epochs": 30, "checkpoint_every_steps": 4, **training})
    return cfg


def command(cfg: Path, data: Path, run: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "mmfuse", "train", str(cfg), "--data", str(data),
            "--out", str(run), "--threads", "1", "--json", *flags]


def metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS} for line in lines]


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "model" / "model.safetensors"), \
        load_file(b / "model" / "model.safetensors")
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture(scope="module")
def reference(shapes_qa, tmp_path_factory) -> dict:
    """An uninterrupted 30-epoch run from the CLI (early stopping may end it sooner)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    cfg = folder / "config.yaml"
    cfg.write_text(yaml.safe_dump(config()))
    run = folder / "reference"
    done = subprocess.run(command(cfg, shapes_qa["en_train"], run), capture_output=True,
                          text=True, check=True)
    return {"config": cfg, "data": shapes_qa["en_train"], "run": run,
            "summary": json.loads(done.stdout)}


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(reference, tmp_path):
    rng = random.Random(15)
    run = tmp_path / "killed"
    train = command(reference["config"], reference["data"], run, "--resume")
    kills = []
    for _ in range(4):
        process = subprocess.Popen(train, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (run / "run.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.02)  # the interpreter and torch start; training is about to
        time.sleep(rng.uniform(0.0, 0.8 * reference["summary"]["seconds"]))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(len(checkpoint.checkpoints(run)))
    done = subprocess.run(train, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    assert summary["resumed"] and not summary["interrupted"]
    assert metrics(run) == metrics(reference["run"])
    assert same_weights(run, reference["run"])
    assert len(checkpoint.checkpoints(run)) <= 2  # keep_checkpoints
    assert not list((run / "checkpoints").glob("*.tmp"))  # a killed writer's half file is gone


KILL_IN_WRITE = """
import os, signal, sys
import torch
from mmfuse.training import checkpoint
from mmfuse.cli import main

writes = {"n": 0}
real_save = torch.save

def half_then_die(state, path):
    writes["n"] += 1
    if writes["n"] == int(os.environ["KILL_AT_WRITE"]):
        real_save(state, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)  # half of it is on disk
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(state, path)

checkpoint.torch.save = half_then_die
sys.argv = ["mmfuse", *sys.argv[1:]]
main()
"""


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_a_kill_inside_a_checkpoint_write_resumes_from_the_one_before(reference, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_IN_WRITE)
    run = tmp_path / "run"
    args = command(reference["config"], reference["data"], run, "--resume")[3:]
    killed = subprocess.run([sys.executable, str(driver), *args], capture_output=True,
                            env={**os.environ, "KILL_AT_WRITE": "7"})
    assert killed.returncode == -signal.SIGKILL
    assert list((run / "checkpoints").glob("*.tmp"))  # the half-written file
    assert len(checkpoint.checkpoints(run)) == 2  # the complete ones before it
    subprocess.run(command(reference["config"], reference["data"], run, "--resume"),
                   capture_output=True, check=True)
    assert metrics(run) == metrics(reference["run"])
    assert same_weights(run, reference["run"])


def test_ctrl_c_writes_a_checkpoint_and_resume_continues_from_it(reference, tmp_path,
                                                                  monkeypatch):
    cfg = yaml.safe_load(reference["config"].read_text())
    from mmfuse.pipeline import Pipeline

    real_batch, calls = Pipeline.batch, {"n": 0}

    def ctrl_c_at_50th_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50 and kwargs.get("train", args[2] if len(args) > 2 else False):
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C would
        return real_batch(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "batch", ctrl_c_at_50th_batch)
    run = tmp_path / "run"
    first = mmfuse.Model.from_config(cfg).fit(reference["data"], out=run, threads=1)
    assert first["interrupted"] and first["steps"] < reference["summary"]["steps"]
    assert (run / "model").is_dir() and checkpoint.checkpoints(run)
    monkeypatch.setattr(Pipeline, "batch", real_batch)
    second = mmfuse.Model.from_config(cfg).fit(reference["data"], out=run, threads=1,
                                               resume=True)
    assert second["resumed"] and second["steps"] == reference["summary"]["steps"]
    assert metrics(run) == metrics(reference["run"])
    assert same_weights(run, reference["run"])


def test_resuming_a_finished_run_trains_nothing_more(reference, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference["run"], run)
    summary = mmfuse.Model.from_config(yaml.safe_load(reference["config"].read_text())).fit(
        reference["data"], out=run, threads=1, resume=True)
    assert summary["steps"] == reference["summary"]["steps"] and not summary["interrupted"]
    assert metrics(run) == metrics(reference["run"]) and same_weights(run, reference["run"])


def test_resume_from_an_epoch_end_cuts_metrics_back_to_what_it_covers(shapes_qa, tmp_path):
    """Epoch-end checkpoints only: the resumed epoch draws the batch order the lost one drew."""
    cfg, run = config(epochs=3, checkpoint_every_steps=None), tmp_path / "run"
    mmfuse.Model.from_config(cfg).fit(shapes_qa["en_train"], out=run, threads=1)
    reference = metrics(run)
    weights = (run / "model" / "model.safetensors").read_bytes()
    kept = checkpoint.checkpoints(run)
    kept[-1].unlink()  # as if killed after epoch 3's line but before its checkpoint
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "train_lo')  # and half a line from a killed append
    summary = mmfuse.Model.from_config(cfg).fit(shapes_qa["en_train"], out=run, threads=1,
                                                resume=True)
    assert summary["resumed"] and metrics(run) == reference
    assert (run / "model" / "model.safetensors").read_bytes() == weights


def test_a_rerun_into_a_run_folder_is_refused_unless_overwrite(shapes_qa, tmp_path):
    cfg, run = config(epochs=1), tmp_path / "run"
    mmfuse.Model.from_config(cfg).fit(shapes_qa["en_train"], out=run, threads=1)
    bundle = (run / "model" / "model.safetensors").read_bytes()
    with pytest.raises(MmfuseError, match="already holds a run.*--resume.*--overwrite"):
        mmfuse.Model.from_config(cfg).fit(shapes_qa["en_train"], out=run, threads=1)
    assert (run / "model" / "model.safetensors").read_bytes() == bundle  # untouched
    with pytest.raises(MmfuseError):  # --overwrite with a table that cannot be read ...
        mmfuse.Model.from_config(cfg).fit(tmp_path / "missing.csv", out=run, overwrite=True)
    assert (run / "model" / "model.safetensors").read_bytes() == bundle  # ... keeps the old run
    with pytest.raises(MmfuseError, match="pass one of them"):
        mmfuse.Model.from_config(cfg).fit(shapes_qa["en_train"], out=run, resume=True,
                                          overwrite=True)
    summary = mmfuse.Model.from_config(config(epochs=2)).fit(
        shapes_qa["en_train"], out=run, threads=1, overwrite=True)
    assert summary["epochs"] == 2 and len(metrics(run)) == 2 and not summary["resumed"]


def test_resume_with_another_config_or_other_data_names_the_difference(shapes_qa, tmp_path):
    run = tmp_path / "run"
    mmfuse.Model.from_config(config(epochs=1)).fit(shapes_qa["en_train"], out=run, threads=1)
    with pytest.raises(ConfigError, match=r"training\.learning_rate: 0\.003 -> 0\.01"):
        mmfuse.Model.from_config(config(epochs=1, learning_rate=0.01)).fit(
            shapes_qa["en_train"], out=run, resume=True)
    with pytest.raises(DataError, match="other train data"):
        mmfuse.Model.from_config(config(epochs=1)).fit(shapes_qa["zh_train"], out=run,
                                                       resume=True)
    # the device and checkpoint settings may change between runs
    mmfuse.Model.from_config(config(epochs=1, checkpoint_every_steps=7)).fit(
        shapes_qa["en_train"], out=run, threads=1, resume=True, device="cpu")


def test_resume_into_an_empty_folder_starts_from_the_beginning(shapes_qa, tmp_path):
    summary = mmfuse.Model.from_config(config(epochs=1)).fit(
        shapes_qa["en_train"], out=tmp_path / "new", threads=1, resume=True)
    assert not summary["resumed"] and summary["epochs"] == 1


def test_cli_rerun_without_flags_is_a_clear_error(reference, tmp_path):
    done = subprocess.run(command(reference["config"], reference["data"], reference["run"])[:-1],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "already holds a run" in done.stderr and "--overwrite" in done.stderr


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_sigterm_writes_a_checkpoint_then_ends_the_process(reference, tmp_path):
    run = tmp_path / "run"
    train = command(reference["config"], reference["data"], run, "--resume")
    process = subprocess.Popen(train, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run / "metrics.jsonl").is_file() and process.poll() is None:
        time.sleep(0.02)  # an epoch is done; the run is under way
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM  # it still ends as asked ...
    assert checkpoint.checkpoints(run)  # ... after writing where it was
    subprocess.run(train, capture_output=True, check=True)
    assert metrics(run) == metrics(reference["run"]) and same_weights(run, reference["run"])
