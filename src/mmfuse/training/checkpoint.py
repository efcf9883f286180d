"""Checkpoints that survive a kill, and the run folder rules around them.

A checkpoint is one file, ``RUN/checkpoints/step-000001234.pt``, written to a temporary name and
renamed, so a process killed at any moment leaves the previous checkpoint whole. It holds the
model, optimizer, scheduler and gradient-scaler states, every random state (torch's CPU and CUDA
generators, the augmentation generator, the batch-order generator at the start of the epoch, per
rank), the position in the epoch's batch order, the running sums of the epoch, the best weights
and score so far, the early-stopping counter and how many lines of ``metrics.jsonl`` it covers.
It is read with ``torch.load(weights_only=True)``: tensors and plain data only, no pickle code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from ..atomic import orphaned, temp_name, write_text
from ..device import map_tensors
from ..errors import ConfigError, DataError, MmfuseError
from . import distributed
from .distributed import Ranks

FOLDER = "checkpoints"
RUN_FILES = ("run.json", "metrics.jsonl", "model", FOLDER)  # what makes a folder hold a run
SAME_ON_RESUME_EXCEPT = ("training.device", "training.checkpoint_every_steps",
                         "training.keep_checkpoints")  # these may change between runs
_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoints(run: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (temporary files are not listed)."""
    folder = run / FOLDER
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save(run: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep``."""
    folder = run / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.pt"
    tmp = temp_name(path)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    for leftover in folder.glob("*.tmp"):  # a killed writer's half file
        if orphaned(leftover):
            leftover.unlink(missing_ok=True)
    return path


def snapshot(value):
    """``value`` with every tensor copied to the CPU, so training can go on changing the
    originals while a copy is written."""
    return map_tensors(lambda t: t.detach().to("cpu", copy=True), value)


class Writer:
    """Writes checkpoints in a background thread: the state is copied at the checkpoint's step
    (so it is exactly that step's), and the copy is serialised and written while training goes
    on. One write at a time: the next checkpoint, and the end of training, wait for the last."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, run: Path, step: int, state: dict, keep: int) -> None:
        copy = snapshot(state)
        self.wait()

        def write() -> None:
            try:
                save(run, step, copy, keep)
            except BaseException as exc:  # raised in the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="mmfuse-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the last write is on disk; re-raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise MmfuseError(f"writing a checkpoint failed: {error}") from error


class Checkpointer:
    """Everything a resumed run needs beside the loop's own state: the states of ``modules``
    (the model, optimizer, scheduler and gradient scaler, by name) and every rank's random
    states. Every rank takes part in :meth:`save` (the random states are gathered); rank 0
    writes, in the background (:class:`Writer`), and only when there is a run folder."""

    def __init__(self, run: Path | None, keep: int, ranks: Ranks, modules: dict,
                 generator: torch.Generator, device: torch.device) -> None:
        self.run, self.keep, self.ranks = run, keep, ranks
        self.modules = modules
        self.generator, self.device = generator, device
        self.writer = Writer()

    def save(self, state: dict) -> None:
        """Checkpoint the loop ``state`` (its ``step`` names the file) with the modules."""
        rngs = distributed.gather(random_states(self.generator, self.device), self.ranks)
        if self.run is not None and self.ranks.main:
            self.writer.save(self.run, state["step"], {
                **state, "world": self.ranks.world, "rngs": rngs,
                **{name: module.state_dict() for name, module in self.modules.items()}},
                self.keep)

    def restore(self, saved: dict) -> None:
        """Load a checkpoint's module states and this rank's random states."""
        for name, module in self.modules.items():
            module.load_state_dict(saved[name])
        rng = saved["rngs"][self.ranks.rank]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["augment"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())

    def wait(self) -> None:
        """Block until the last checkpoint is on disk."""
        self.writer.wait()


def random_states(generator: torch.Generator, device: torch.device) -> dict:
    """This process's random states: torch's CPU (and CUDA) generators and the augmentation
    generator. The batch order's generator is in the loop state, as of the epoch's start."""
    return {"torch": torch.get_rng_state(), "augment": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def load_latest(run: Path) -> dict | None:
    """The newest checkpoint of the run, or None when it has none yet."""
    found = checkpoints(run)
    if not found:
        return None
    try:
        return torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # renamed only once written, so this is outside damage
        raise MmfuseError(f"{found[-1]}: unreadable checkpoint ({exc}); delete it to resume "
                          "from the one before, or train again with --overwrite") from exc


def check_run_folder(run: Path, resume: bool, overwrite: bool) -> None:
    """Check the run folder against ``--resume`` and ``--overwrite`` before any data is read
    (the old run is only removed by :func:`clear_run`, once the new one is ready to train).

    Raises:
        MmfuseError: the folder holds a run and neither flag was given, or both were.
    """
    if resume and overwrite:
        raise MmfuseError("--resume continues the run in the folder and --overwrite replaces "
                          "it; pass one of them")
    found = [name for name in RUN_FILES if (run / name).exists()]
    if found and not resume and not overwrite:
        raise MmfuseError(
            f"{run} already holds a run ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to replace it, or another --out (Model.fit: resume=True or "
            "overwrite=True)")


def clear_run(run: Path) -> None:
    """Remove the run ``--overwrite`` replaces (only its files; the folder stays)."""
    for name in RUN_FILES:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _cell_text(value: Any) -> str:
    """A cell JSON cannot write: a file's bytes by their hash, anything else as text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return hashlib.sha256(value).hexdigest()
    return str(value)


def table_digest(rows: list[dict]) -> str:
    """A digest of a table's rows (the data a resumed run must see again)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=_cell_text).encode("utf-8"))
    return digest.hexdigest()[:16]


def check_same_run(recorded: dict, current: dict, run: Path) -> None:
    """Refuse to resume with another config or other data, naming the difference.

    Args:
        recorded: ``run.json`` of the run being resumed (``config`` and ``data`` fingerprints).
        current: the same for this invocation.

    Raises:
        ConfigError: a config key differs (other than the device and checkpoint settings).
        DataError: the training or validation rows differ.
    """
    old, new = _flatten(recorded.get("config", {})), _flatten(current["config"])
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted({*old, *new})
               if old.get(k) != new.get(k) and k not in SAME_ON_RESUME_EXCEPT]
    if changed:
        raise ConfigError(f"cannot resume {run} with another config; changed: "
                          f"{'; '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}. "
                          "Use the config it started with, or --overwrite to start again")
    for split in ("train", "valid"):
        was, now = recorded.get("data", {}).get(split), current["data"].get(split)
        if was != now:
            raise DataError(f"cannot resume {run} with other {split} data (its rows differ from "
                            "the ones it started with); pass the same --data/--valid, or "
                            "--overwrite to start again")


def _flatten(value, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists by index), for naming changed keys."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat: dict = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat or {prefix: value}


def cut_metrics(path: Path, lines: int) -> None:
    """Keep the first ``lines`` complete lines of ``metrics.jsonl``: what the resumed
    checkpoint covers (a line written after it, or half written, is dropped)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.endswith("\n")][:lines]
    write_text(path, "".join(kept))
