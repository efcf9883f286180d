"""Streamed training: the epoch loop over a source read piece by piece (``data/stream.py``)
instead of over a table decoded into the cache first.

- **Who reads what:** every epoch deals the pieces, in an order drawn from the seed and the
  epoch, round-robin to the ``world x training.workers`` slots (torchrun rank x DataLoader
  worker), so each piece is read once per epoch and each row trained on once.
- **Decoding:** each worker reads its pieces front to back, shuffles their rows through a
  buffer of ``data.shuffle_buffer`` rows, decodes each batch's files as the server decodes a
  request's (the preprocessors' ``decode_source``, then :meth:`Pipeline.encode_values`) and
  hands the training process CPU tensors (:meth:`Pipeline.host_batch`, augmentation included).
- **Bad rows:** a row whose file does not decode (or the rest of a truncated shard) is skipped
  and logged; the epoch's count is ``bad_rows`` in ``metrics.jsonl``; more than
  ``data.max_bad_rows`` in an epoch is an error that names the shard and the key.
- **Resume:** a checkpoint holds, per piece, the offsets already trained on (a piece trained to
  its end collapses to its row count), gathered from every rank. A resumed epoch deals the
  pieces as before and each slot skips those offsets, so no row is lost or repeated, whatever
  the number of workers (the shuffle of the rest differs from the interrupted run's).
- **Ranks:** pieces rarely hold equal rows, so ranks run out at different steps. Each step the
  ranks agree whether any still has a batch; one that has run out steps on its last batch with
  zero loss weight (DistributedDataParallel needs every rank in every gradient reduction), so
  no rank stops while another trains.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import Config
from ..data.media import cell_key, cell_media
from ..data.remote import is_url
from ..data.stream import BadRow, Source, assigned, record_counts
from ..data.table import Table, resolve_file
from ..device import to_device
from ..errors import DataError, MmfuseError
from ..modalities import MISSING, Column
from ..modalities.files import FilePreprocessor, UnreadableFile
from ..modalities.tabular import TabularPreprocessor, missing_cell
from ..pipeline import EncodedTable, Pipeline
from ..threads import available_cpus
from . import distributed
from .distributed import Ranks
from .metrics import RunningMean

log = logging.getLogger("mmfuse.training")
PREFETCH = 2  # batches each worker keeps ready (each holds a decoded batch in shared memory)


def resolve_workers(setting: int | str, processes: int = 1) -> int:
    """``training.workers``: ``auto`` is half of each process's CPUs, at least 1 and at most
    8 (the training process keeps the other half: ``recipe.preprocess``)."""
    if setting == "auto":
        return max(1, min(8, available_cpus() // processes // 2))
    return int(setting)


@dataclass
class Stream:
    """What the streamed epochs read: the source, its rows per epoch (estimated until every
    piece has been counted) and the dataset the DataLoader iterates."""

    source: Source
    rows: int
    workers: int
    dataset: Rows


class Rows(IterableDataset):
    """One epoch of batches for this slot (see the module's docstring); set :attr:`epoch` and
    :attr:`skip` before iterating."""

    def __init__(self, pipeline: Pipeline, source: Source, config: Config, batch_size: int,
                 ranks: Ranks) -> None:
        self.pipeline, self.source, self.ranks = pipeline, source, ranks
        self.batch_size = batch_size
        self.buffer = config.data.shuffle_buffer
        self.seed = config.training.seed
        self.epoch = 1
        self.skip: dict[int, Any] = {}  # piece -> offsets trained, or its size when all were
        self.resumes = 0  # how often this epoch was resumed: a resumed shuffle is drawn anew
        files = [p.column for p in pipeline.inputs.values() if isinstance(p, FilePreprocessor)]
        grouping = config.training.group_rows_by_file is not False
        self.group_by = files[0] if files and grouping else None

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = self.ranks.rank * workers + worker, self.ranks.world * workers
        rng = np.random.default_rng([self.seed, self.epoch, slot, self.resumes])
        generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        buffer: list[list[tuple[int, int, dict]]] = []  # groups of rows that share a file
        buffered, group, key = 0, [], None
        batch: list[tuple[int, int, dict]] = []
        report = Report()

        def take(chosen: list) -> Iterator[Report]:
            nonlocal batch, report
            batch.extend(chosen)
            while len(batch) >= self.batch_size:
                yield self.assemble(batch[:self.batch_size], report, generator)
                batch, report = batch[self.batch_size:], Report()

        for piece in assigned(len(self.source), self.epoch, self.seed, slot, slots):
            skip = self.skip.get(piece, ())
            if isinstance(skip, int):
                continue  # trained to its end before the resume
            size = 0
            for offset, row in self.source.read(piece):
                size = offset + 1
                if offset in skip:
                    continue
                if isinstance(row, BadRow):
                    report.bad.append((piece, offset, row.where, row.why))
                    continue
                row_key = self._group_key(row)
                if group and (row_key is None or row_key != key):
                    buffer.append(group)
                    group = []
                group.append((piece, offset, row))
                key, buffered = row_key, buffered + 1
                while buffered - len(group) >= self.buffer and buffer:
                    chosen = buffer.pop(int(rng.integers(len(buffer))))
                    buffered -= len(chosen)
                    yield from take(chosen)
            report.sizes[piece] = size
        if group:
            buffer.append(group)
        rng.shuffle(buffer)
        for chosen in buffer:
            yield from take(chosen)
        if batch or report.bad or report.sizes:
            yield self.assemble(batch, report, generator)

    def _group_key(self, row: dict) -> Any:
        """The file a row shares with its neighbours (``training.group_rows_by_file``), or
        None: consecutive rows with one file go into a batch together, as a cached table's
        rows of one file do, so the file is decoded and encoded once for all of them."""
        if self.group_by is None:
            return None
        try:
            return cell_key(cell_media(row.get(self.group_by)))
        except ValueError:
            return None  # reported when the row is decoded

    def assemble(self, batch: list[tuple[int, int, dict]], report: Report,
                 generator: torch.Generator) -> Report:
        """Decode the batch's rows into CPU tensors; rows whose files do not decode, or whose
        cells or targets do not parse, are reported as bad instead."""
        pipeline, decoded = self.pipeline, []
        memo: dict = {}  # a file that several rows share is decoded and encoded once
        for piece, offset, row in batch:
            try:
                decoded.append((piece, offset, row, decode_row(pipeline, self.source, row, memo)))
            except UNREADABLE as exc:
                report.bad.append((piece, offset, where(row, self.source, offset),
                                   str(exc).split("\n")[0]))
        table, targets = self._targets(decoded, report)
        report.rows = [(piece, offset) for piece, offset, _, _ in decoded]
        if decoded:
            columns = {}
            for name, prep in pipeline.inputs.items():
                values = [v[name] for _, _, _, v in decoded]
                columns[name] = shared_column(prep, values) \
                    if isinstance(prep, FilePreprocessor) else prep.column_of(values)
            report.inputs, report.targets = pipeline.host_batch(
                EncodedTable(table, columns, targets), np.arange(len(decoded)), True, generator)
        return report

    def _targets(self, decoded: list, report: Report) -> tuple[Table, dict[str, np.ndarray]]:
        """The batch's table and targets. A target that does not parse fails the batch's
        targets; only then is each row's tried alone, and the rows that fail are reported
        as bad (removed from ``decoded``)."""
        def targets_of(rows: list[dict]) -> tuple[Table, dict[str, np.ndarray]]:
            table = Table(rows, self.source.root, self.source.description, restrict=False)
            return table, {n: p.targets(table) for n, p in self.pipeline.outputs.items()}

        try:
            return targets_of([row for _, _, row, _ in decoded])
        except UNREADABLE:
            pass
        for item in list(decoded):
            piece, offset, row, _ = item
            try:
                targets_of([row])
            except UNREADABLE as exc:
                decoded.remove(item)
                report.bad.append((piece, offset, where(row, self.source, offset),
                                   str(exc).split("\n")[0]))
        return targets_of([row for _, _, row, _ in decoded])

UNREADABLE = (UnreadableFile, DataError, ValueError)


def decode_row(pipeline: Pipeline, source: Source, row: dict, memo: dict | None = None
               ) -> dict[str, Any]:
    """A row's value of each input: a file input's decoded file (None when the cell is
    empty), a tabular input's parsed cell, a text input's cell as it is. ``memo`` keeps
    decoded files by input and file, so rows that share one get the same array.

    Raises:
        UnreadableFile, DataError, ValueError: a file does not decode or a cell does not
            parse (:data:`UNREADABLE`).
    """
    values = {}
    for name, prep in pipeline.inputs.items():
        value = row.get(prep.column)
        if isinstance(prep, FilePreprocessor):
            value = cell_media(value)
            key = (name, cell_key(value))
            if memo is not None and key in memo:
                value = memo[key]
            elif value is not None:
                if isinstance(value, str) and not is_url(value):
                    table = Table([row], source.root, source.description, restrict=False)
                    value = resolve_file(value, table, 0, prep.column)
                value = prep.decode_source(value)
                if memo is not None:
                    memo[key] = value
        elif isinstance(prep, TabularPreprocessor):  # parsed as a table's cells are
            value = None if missing_cell(value) else prep.parse(value)
        values[name] = value
    return values


def shared_column(prep: FilePreprocessor, values: list) -> Column:
    """The column of a batch's decoded files, each distinct file once (rows that share a file
    hold the same array: :func:`decode_row`'s ``memo``), so its encoder runs once per file,
    as it does for a cached table's batch."""
    position: dict[int, int] = {}
    unique, index = [], np.full(len(values), MISSING, dtype=np.int64)
    for row, value in enumerate(values):
        if value is None:
            continue
        if id(value) not in position:
            position[id(value)] = len(unique)
            unique.append(value)
        index[row] = position[id(value)]
    items = prep.unpack(prep.stack(unique)) if unique else None
    return Column(items, index, is_file=True)


def where(row: dict, source: Source, offset: int) -> str:
    """How a bad row is named: its shard and key."""
    return f"{row.get('__shard__', source.description)}, sample {row.get('__key__', offset)!r}"


def readable_rows(pipeline: Pipeline, source: Source, table: Table, max_bad: int) -> Table:
    """``table`` (the rows the preprocessing is fitted on) without its rows whose files do not
    decode, each logged; more than ``max_bad`` is an error."""
    kept, bad = [], 0
    for i, row in enumerate(table.rows):
        try:
            decode_row(pipeline, source, row)
        except UNREADABLE as exc:
            bad += 1
            log.warning("skipped a bad row: %s: %s", where(row, source, i),
                        str(exc).split("\n")[0])
            if bad > max_bad:
                raise DataError(f"{where(row, source, i)}: {exc}\n{bad} bad rows among the "
                                f"first data.fit_rows, more than data.max_bad_rows ({max_bad}); "
                                "fix or remove them, or raise data.max_bad_rows") from None
            continue
        kept.append(row)
    if not kept:
        raise DataError(f"{source.description}: no readable rows to fit the preprocessing on")
    return Table(kept, table.root, table.source, restrict=False)


@dataclass
class Report:
    """What a worker hands on with a batch: its tensors (none when every row was bad), which
    rows they are, the rows it skipped as bad, and the sizes of pieces it finished."""

    inputs: dict | None = None
    targets: dict | None = None
    rows: list[tuple[int, int]] = field(default_factory=list)
    bad: list[tuple[int, int, str, str]] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)


class Progress:
    """The epoch's rows done so far (trained on, or skipped as bad), per piece, and the bad
    rows' count; a checkpoint holds :meth:`state`."""

    def __init__(self, saved: dict | None = None) -> None:
        saved = saved or {}
        self.seen: dict[int, set[int]] = {int(p): set(o) for p, o in saved.get("seen", {}).items()}
        self.sizes: dict[int, int] = {int(p): n for p, n in saved.get("sizes", {}).items()}
        self.done: set[int] = {int(p) for p in saved.get("done", [])}
        self.bad = int(saved.get("bad", 0))
        self.trained = int(saved.get("trained", 0))

    def add(self, report: Report) -> None:
        for piece, offset in report.rows:
            self.seen.setdefault(piece, set()).add(offset)
        self.trained += len(report.rows)
        for piece, offset, _, _ in report.bad:
            self.seen.setdefault(piece, set()).add(offset)
        self.bad += len(report.bad)
        self.sizes.update(report.sizes)
        touched = {p for p, _ in report.rows} | {p for p, _, _, _ in report.bad} | \
            set(report.sizes)
        for piece in touched:
            if piece in self.sizes and len(self.seen.get(piece, ())) == self.sizes[piece]:
                self.seen.pop(piece, None)
                self.done.add(piece)

    def state(self) -> dict:
        return {"seen": {p: sorted(o) for p, o in self.seen.items()}, "sizes": self.sizes,
                "done": sorted(self.done), "bad": self.bad, "trained": self.trained}

    def skip(self) -> dict[int, Any]:
        """Per piece, what a resumed epoch leaves out: its size when all of it is done."""
        return {**{p: frozenset(o) for p, o in self.seen.items()},
                **{p: self.sizes[p] for p in self.done}}

    @staticmethod
    def merged(states: list[dict]) -> dict:
        """The progress of every rank as one (ranks read disjoint pieces)."""
        merged = Progress()
        for state in states:
            other = Progress(state)
            merged.seen.update(other.seen)
            merged.sizes.update(other.sizes)
            merged.done |= other.done
            merged.bad += other.bad
            merged.trained += other.trained
        return merged.state()


def make_stream(pipeline: Pipeline, source: Source, rows: int, config: Config,
                batch_size: int, ranks: Ranks) -> Stream:
    """The stream of a run; a source with fewer pieces than processes is refused."""
    if len(source) < ranks.world:
        raise DataError(f"{source.description}: {len(source)} shard(s) for {ranks.world} "
                        "processes; each process reads whole shards, so give at least one "
                        "shard per process")
    workers = resolve_workers(config.training.workers, ranks.local_world)
    return Stream(source, rows, workers, Rows(pipeline, source, config, batch_size, ranks))


def stream_epoch(t, epoch: int, bar) -> tuple[RunningMean, float, bool]:
    """``loop.train_epoch`` for a streamed source: the same steps, checkpoints and limits, over
    the batches the workers decode (see the module's docstring)."""
    from .loop import mean_accuracy, save_checkpoint, step

    state, ranks = t.state, t.ranks
    progress, running, loader = open_epoch(t, epoch, bar)
    max_bad = t.pipeline.config.data.max_bad_rows
    batches, last, position = start_workers(loader), None, state["position"]
    started = time.perf_counter()

    def checkpoint() -> None:
        state["stream"] = Progress.merged(distributed.gather(progress.state(), ranks))
        save_checkpoint(t, epoch, position, running)

    try:
        while True:
            began = time.perf_counter()
            report = _next_batch(batches, progress, max_bad)
            if not distributed.any_rank(report is not None, ranks):
                break  # every rank has read all its pieces
            if report is not None:
                last = to_device((report.inputs, report.targets), t.pipeline.device)
            elif last is None:
                raise MmfuseError(f"rank {ranks.rank} read no usable row of its shards")
            t.timer.prepared(began)
            logits, loss = step(t, *last, weight=1.0 if report is not None else 0.0)
            t.limits.agree()
            t.scheduler.step()
            state["step"] += 1
            position += 1
            if report is not None:
                progress.add(report)
                running.update(len(report.rows), loss=loss.item(),
                               accuracy=mean_accuracy(t.pipeline, logits, last[1]))
            t.timer.stepped(began)
            bar.advance(running.means(), running.examples_per_second())
            if t.limits.stopping:
                checkpoint()
                raise KeyboardInterrupt
            if t.cfg.checkpoint_every_steps and state["step"] % t.cfg.checkpoint_every_steps == 0:
                checkpoint()
            if t.limits.out_of_time:
                break
    finally:
        del batches  # shuts the workers down
    close_epoch(t, progress, epoch)
    return running, started, t.limits.out_of_time


def open_epoch(t, epoch: int, bar) -> tuple[Progress, RunningMean, DataLoader]:
    """The epoch's progress (a resumed epoch's from its checkpoint), running means and
    DataLoader."""
    stream, state, ranks = t.stream, t.state, t.ranks
    t.model.train()
    resumed = bool(state["position"]) and state.get("stream") is not None
    progress = Progress(state["stream"] if resumed else None)
    if not ranks.main:  # the checkpoint's counts are every rank's: summed again at the end
        progress.trained = progress.bad = 0
    stream.dataset.epoch, stream.dataset.skip = epoch, progress.skip()
    stream.dataset.resumes = state["position"] if resumed else 0
    running = RunningMean()
    if resumed and state["running"]:
        running.load_state(state["running"])
    bar.start(epoch, t.epochs, math.ceil(stream.rows / t.batch_size / ranks.world))
    loader = DataLoader(stream.dataset, batch_size=None, num_workers=stream.workers,
                        prefetch_factor=PREFETCH if stream.workers else None,
                        multiprocessing_context="fork" if stream.workers else None,
                        pin_memory=t.pipeline.device.type == "cuda")
    return progress, running, loader


def start_workers(loader: DataLoader) -> Iterator[Report]:
    """The epoch's batches: the workers are forked here with the parent's objects frozen, so
    their garbage collector leaves those objects' pages alone (fewer copied pages: a worker's
    memory stays flat; benchmarks/results/streaming.md). The parent's are unfrozen at once."""
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def close_epoch(t, progress: Progress, epoch: int) -> None:
    """Every rank's progress as one: the pieces' row counts kept for later runs, the epoch's
    ``train_rows`` and ``bad_rows`` for its record, the loop state reset for the next."""
    stream, state, ranks = t.stream, t.state, t.ranks
    final = Progress(Progress.merged(distributed.gather(progress.state(), ranks)))
    if ranks.main:
        record_counts(stream.source, final.sizes)
    if len(final.sizes) == len(stream.source):  # every piece counted: the exact epoch length
        stream.rows = sum(final.sizes.values())
    t.extra = {"train_rows": final.trained, "bad_rows": final.bad}
    state["position"], state["running"], state["stream"] = 0, None, None
    state["epochs_run"] = epoch


def _next_batch(batches, progress: Progress, max_bad: int) -> Report | None:
    """The next report with rows to train on (None at the end); reports that hold only bad
    rows or finished pieces are taken into ``progress`` on the way."""
    for report in batches:
        for _, _, where, why in report.bad:
            log.warning("skipped a bad row: %s: %s", where, why)
        if progress.bad + len(report.bad) > max_bad:
            _, _, where, why = report.bad[-1]
            raise DataError(f"{where}: {why}\n{progress.bad + len(report.bad)} bad rows this "
                            f"epoch, more than data.max_bad_rows ({max_bad}); fix or remove "
                            "them, or raise data.max_bad_rows")
        if report.rows:
            return report
        progress.add(report)
    return None
