"""The training recipe behind :meth:`mmfuse.Model.fit`, one named stage after another:

prepare the run -> read the data -> preprocess -> cache features -> open the run folder
-> train epochs -> after-training fits -> save

Each stage is a short function over :class:`Run`, what the stages hand on. Every check of the
config and of the run folder is in :func:`prepare_run`, before any data is read; the old run
is only replaced once the new one is ready to train. The epoch loop itself is ``loop.py``.
Under torchrun every process runs the recipe; only rank 0 writes files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..atomic import write_text
from ..config import Config, TrainingConfig
from ..data.features import cache_frozen_features, check_cache_settings
from ..data.media import cell_key, cell_media
from ..data.remote import is_url
from ..data.shards import is_shards
from ..data.stream import (
    Source,
    estimate_rows,
    fit_table,
    hold_out_pieces,
    known_counts,
    open_source,
    read_pieces,
    streams,
    table_source,
)
from ..data.table import Table, as_table
from ..device import resolve_device, resolve_precision
from ..errors import DataError
from ..modalities.kind import modality
from ..pipeline import EncodedTable, Pipeline
from ..threads import available_cpus, configure_threads
from . import checkpoint, distributed
from .after import check_predictor_targets, finish
from .distributed import Ranks
from .loop import train
from .streamed import Stream, make_stream, readable_rows

if TYPE_CHECKING:
    from ..api import Model


@dataclass(frozen=True)
class FitRequest:
    """The arguments of :meth:`mmfuse.Model.fit`, which documents them."""

    train: Any  # a table path, rows or a Table
    valid: Any = None
    out: Path | None = None
    data_root: str | Path | None = None
    threads: int | None = None
    progress: bool = False
    on_epoch: Callable[[dict], None] | None = None
    device: str | None = None
    resume: bool = False
    overwrite: bool = False


@dataclass
class Run:
    """What the stages hand on: where and how the run trains, then its data as it is read."""

    request: FitRequest
    cfg: TrainingConfig  # with the precision resolved for the device
    device: torch.device
    ranks: Ranks
    threads: int
    table: Table | None = None
    valid_table: Table | None = None
    held_out: list[int] = field(default_factory=list)  # rows of ``table`` kept for validation
    fingerprint: dict = field(default_factory=dict)  # the config and data a resume must match
    saved: dict | None = None  # the checkpoint a resumed run continues from
    train_data: EncodedTable | None = None
    valid_data: EncodedTable | None = None
    train_cached: EncodedTable | None = None  # the encoded tables with frozen features cached:
    valid_cached: EncodedTable | None = None  # what the epochs read
    source: Source | None = None  # a streamed source; ``table`` is then its first fit_rows
    held_out_shards: list[str] = field(default_factory=list)  # held out of a streamed source
    stream_rows: int = 0  # a streamed epoch's rows, estimated until every piece is counted
    stream: Stream | None = None

    @property
    def folder(self) -> Path | None:
        return self.request.out


def fit(model: Model, request: FitRequest) -> dict:
    """Train ``model`` as ``request`` asks; returns the training summary."""
    run = prepare_run(model, request)
    read_data(model, run)
    preprocess(model, run)
    cache_features(model, run)
    open_run_folder(run)
    summary = train_epochs(model, run)
    summary.update(after_training(model, run))
    save(model, run)
    train_rows = run.stream.rows if run.stream is not None else len(run.table)
    summary.update(threads=run.threads, train_rows=train_rows, processes=run.ranks.world,
                   streamed=run.stream is not None,
                   device=str(run.device), resumed=run.saved is not None,
                   valid_rows=len(run.valid_table) if run.valid_table is not None else 0)
    return summary


def prepare_run(model: Model, request: FitRequest) -> Run:
    """The device, precision, processes and threads; every config and run-folder check.

    Reads no data: a bad config or a run folder in the way fails at once.
    """
    if request.device is not None:
        model.config.training = model.config.training.model_copy(
            update={"device": request.device})
    if model.fitted:  # a second fit starts again from unfitted preprocessors
        model.pipeline = Pipeline.from_config(model.config)
    device = resolve_device(model.config.training.device)
    precision = resolve_precision(model.config.training.precision, device)
    cfg = model.config.training.model_copy(update={"precision": precision})
    check_cache_settings(model.pipeline)
    ranks = distributed.setup(device)
    threads = configure_threads(
        request.threads or max(1, available_cpus() // ranks.local_world))
    if request.out is not None:
        checkpoint.check_run_folder(request.out, request.resume, request.overwrite)
    return Run(request, cfg, device, ranks, threads)


def read_data(model: Model, run: Run) -> None:
    """Read the tables (without a validation table, hold out ``valid_fraction`` of the
    training files), and check that a resumed run sees the config and data it started with."""
    request = run.request
    if streams(request.train, model.config.data.streaming):
        read_streamed(model, run)
    else:
        run.table = as_table(request.train, request.data_root)
        if request.valid is not None:
            run.valid_table = as_table(request.valid, request.data_root)
        elif run.cfg.valid_fraction > 0:
            run.table, run.valid_table, run.held_out = hold_out(run.table, model.config)
    train_digest = checkpoint.table_digest(run.table.rows)
    if run.source is not None:  # the pieces it streams and the rows it was fitted on
        train_digest = checkpoint.table_digest([{"pieces": "\n".join(run.source.names),
                                                 "fit": train_digest}])
    run.fingerprint = {"config": model.config.model_dump(mode="json"), "data": {
        "train": train_digest,
        "valid": checkpoint.table_digest(run.valid_table.rows) if run.valid_table else None}}
    if run.folder is not None and request.resume:
        if (run.folder / "run.json").is_file():
            checkpoint.check_same_run(json.loads((run.folder / "run.json").read_text()),
                                      run.fingerprint, run.folder)
        run.saved = checkpoint.load_latest(run.folder)


def read_streamed(model: Model, run: Run) -> None:
    """A streamed source (``data/stream.py``): its pieces, the validation table (``--valid``;
    else the rows a table holds out as a cached one would, or a source of shards' last
    shards), and the first ``data.fit_rows`` rows, which fit the preprocessing."""
    request, fraction = run.request, run.cfg.valid_fraction
    source = open_source(request.train, request.data_root)
    if request.valid is not None:
        run.valid_table = as_table(request.valid, request.data_root)
    elif fraction > 0 and source.table is not None:
        table, run.valid_table, run.held_out = hold_out(source.table, model.config)
        source = table_source(table)
    elif fraction > 0:
        train_source, held = hold_out_pieces(source, fraction)
        run.valid_table = read_pieces(source, held)
        run.held_out_shards = [source.names[i] for i in held]
        source = train_source
    counts = known_counts(source)
    table, fitted = fit_table(source, model.config.data.fit_rows)
    run.table = readable_rows(model.pipeline, source, table, model.config.data.max_bad_rows)
    run.source, run.stream_rows = source, estimate_rows(source, {**fitted, **counts})


def hold_out(table: Table, config: Config) -> tuple[Table, Table, list[int]]:
    """Split off ``valid_fraction`` of the rows; rows that share a file stay together."""
    fraction, seed = config.training.valid_fraction, config.training.seed
    file_columns = [i.column for i in config.inputs if modality(i.type).value == "file"]
    keys = [_file_key(row.get(file_columns[0])) if file_columns and row.get(file_columns[0])
            else f"\0{i}" for i, row in enumerate(table.rows)]
    unique = sorted(set(keys))
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(fraction * len(unique)))
    if n_valid >= len(unique):
        raise DataError(f"{table.source}: too few rows to hold out {fraction:.0%} for "
                        "validation; pass --valid or set training.valid_fraction: 0")
    chosen = {unique[i] for i in rng.choice(len(unique), n_valid, replace=False)}
    valid_rows = [i for i, k in enumerate(keys) if k in chosen]
    train_rows = [i for i, k in enumerate(keys) if k not in chosen]
    return table.subset(train_rows), table.subset(valid_rows), valid_rows


def _file_key(value: Any) -> str:
    """A file cell as the split groups it: its path, or an embedded file's content hash."""
    try:
        return str(cell_key(cell_media(value)))
    except ValueError:
        return str(value)  # reported, with its row, when the column is read


def preprocess(model: Model, run: Run) -> None:
    """Fit the preprocessors on the training rows, build the model, encode both tables, and
    move the model to its device."""
    pipeline = model.pipeline
    torch.manual_seed(run.cfg.seed)  # the initial weights are part of what the seed fixes
    with distributed.main_first(run.ranks):  # rank 0 fills the decode cache, the rest read it
        run.train_data = pipeline.fit(run.table)
        run.valid_data = pipeline.encode(run.valid_table) if run.valid_table is not None \
            else None
    check_predictor_targets(pipeline, run.train_data)
    pipeline.to(run.device)
    if run.source is not None:
        run.stream = make_stream(pipeline, run.source, run.stream_rows, model.config,
                                 max(1, run.cfg.batch_size // run.ranks.world), run.ranks)
        if run.request.threads is None and run.stream.workers:
            # the workers decode on their own CPUs: more training threads than the CPUs left
            # would make both wait (2 CPUs: 1 thread + 1 worker trained at 913 examples/s,
            # 2 threads + 1 worker at 775; benchmarks/results/streaming.md)
            run.threads = configure_threads(max(
                1, available_cpus() // run.ranks.local_world - run.stream.workers))


def cache_features(model: Model, run: Run) -> None:
    """Frozen pretrained encoders run once per unique item here, not in every epoch (a
    streamed source's rows go through them in every step instead)."""
    if run.stream is not None:
        run.train_cached, run.valid_cached = run.train_data, run.valid_data
        return
    with distributed.main_first(run.ranks):  # built once, by rank 0
        run.train_cached, run.valid_cached = cache_frozen_features(
            model.pipeline, [run.train_data, run.valid_data],
            run.request.progress and run.ranks.main)


def open_run_folder(run: Run) -> None:
    """The data is read: replace the old run now (``overwrite``), and write ``run.json``, what
    this run trains on and where."""
    folder, request = run.folder, run.request
    if folder is None or not run.ranks.main:
        return
    if request.overwrite:
        checkpoint.clear_run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if run.saved is None:
        (folder / "metrics.jsonl").unlink(missing_ok=True)
    write_text(folder / "run.json", json.dumps({
        "train": _path_of(request.train), "valid": _path_of(request.valid),
        "held_out_rows": run.held_out, "held_out_shards": run.held_out_shards,
        "data_root": str(request.data_root) if request.data_root else None,
        "threads": run.threads, "processes": run.ranks.world, "device": str(run.device),
        **run.fingerprint}, indent=1))


def _path_of(table: Any) -> str | None:
    """The absolute path of a table given as a path, a URL or a shard pattern as given
    (None for rows)."""
    if not isinstance(table, str | Path):
        return None
    if isinstance(table, str) and (is_url(table) or is_shards(table)):
        return table
    return str(Path(table).resolve())


def train_epochs(model: Model, run: Run) -> dict:
    """The epoch loop (``loop.train``); the bundle is saved on each improvement."""
    folder = run.folder
    return train(model.pipeline, run.train_cached, run.valid_cached, run.cfg,
                 metrics_path=folder / "metrics.jsonl" if folder else None,
                 on_best=(lambda epoch: model.save(folder / "model")) if folder else None,
                 progress=run.request.progress, on_epoch=run.request.on_epoch, run=folder,
                 resume=run.saved, ranks=run.ranks, stream=run.stream)


def after_training(model: Model, run: Run) -> dict:
    """On the best weights: the classic predictors, then calibration (``after.py``), on the
    live encoded tables."""
    cfg = run.cfg
    return finish(model.pipeline, run.train_data, run.valid_data,
                  cfg.eval_batch_size or cfg.batch_size, cfg.seed)


def save(model: Model, run: Run) -> None:
    """The final bundle: the best weights with what was fitted after training."""
    if run.folder is not None and run.ranks.main:
        model.save(run.folder / "model")
    distributed.barrier(run.ranks)
