"""Run a study: open or resume ``DIR/study.db``, run the missing trials, write the outputs.

The study is Optuna's, stored in SQLite under a fixed name, so rerunning the command resumes
it: ``--trials N`` is the study's total (finished, pruned and failed alike), a trial an
interrupted run left RUNNING is marked failed, and a study of another config is refused.
Trials run here (``--jobs 1``) or in spawned worker processes that each run their share
against the same storage, with the CPUs split between them. Each trial trains into
``DIR/trials/NNNN/`` through :meth:`mmfuse.Model.fit`, reporting every epoch's validation metric
to Optuna's pruner; a trial a user error stops (a bad combination of values, say) is recorded as
failed with that error and the study goes on.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import Config, load_config
from ..data.remote import is_url
from ..data.shards import is_shards
from ..errors import ConfigError, DataError, MmfuseError, require
from ..threads import available_cpus
from .outputs import TrialTable, write_outputs
from .shared import STUDY_NAME, SharedStudy, worker_id
from .space import TuneConfig
from .trial import Search, run_share

EXAMPLE = """tune:
  metric: valid_accuracy        # or valid_loss (the default)
  parameters:
    training.learning_rate: {space: loguniform, low: 1.0e-4, high: 1.0e-2}
    fusion.type: {space: choice, values: [concat, gated]}
    inputs.0.encoder.dim: {space: int, low: 32, high: 128, step: 32}"""


def run_tune(config: str | Path | dict, data: str | Path, out_dir: str | Path, trials: int, *,
             valid: str | Path | None = None, minutes: float | None = None, jobs: int = 1,
             data_root: str | Path | None = None, live: bool = True,
             shared: SharedStudy | None = None) -> dict:
    """Run (or resume) the study of ``config``'s ``tune:`` section until it has ``trials``.

    Args:
        config: a config path or dict with a ``tune:`` section.
        data, valid: training and validation tables (without ``valid``, each trial holds out
            ``training.valid_fraction`` of the training table).
        out_dir: the study folder: ``study.db``, ``trials.csv``, ``best.yaml``, ``best/``.
        trials: the study's total number of trials, counting those of earlier runs.
        minutes: time budget of this run; a trial running at the deadline stops there too.
        jobs: worker processes; each trains with ``usable CPUs // jobs`` threads.
        data_root: folder that relative file paths in the tables start from.
        live: show a live table of the trials.
        shared: the database of a study shared by workers on several machines
            (``shared.py``); ``trials`` is then the study's total over all of them.

    Returns:
        The summary ``mmfuse tune --json`` prints (see outputs.py ``write_outputs``).
    """
    optuna = require("optuna", "tune", "mmfuse tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the table and trials.csv report trials
    started = time.time()
    raw, config = read_config(config)
    tune = config.tune
    check_inputs(config, data, valid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, done = resume_study(optuna, tune, raw, out, shared)
    remaining = trials_left(tune, trials, done)
    workers = min(jobs, remaining)
    search = Search(raw={k: v for k, v in raw.items() if k != "tune"},
                    resolved=config.model_dump(mode="json", exclude={"tune"}), tune=tune,
                    train=data, valid=valid,
                    data_root=Path(data_root) if data_root else None, out=out,
                    deadline=started + 60 * minutes if minutes else math.inf,
                    threads=max(1, available_cpus() // max(1, workers)), done=done,
                    shared=shared, total=trials)
    return run_trials(study, search, remaining, workers, started, live)


def resume_study(optuna: Any, tune: TuneConfig, raw: dict, out: Path,
                 shared: SharedStudy | None = None) -> tuple[Any, int]:
    """Open (or create) the study in ``out/study.db`` (or the shared database) for this
    config, mark the trials an interrupted run left RUNNING as failed (in a shared study the
    heartbeats find those), and seed the sampler so a resume draws anew.

    Returns:
        The study and the number of trials it already holds.

    Raises:
        ConfigError: the study there searches another config.
    """
    storage = shared.storage(optuna) if shared else open_storage(optuna, out)
    worker = worker_id() if shared else 0
    study = open_study(optuna, storage, tune, worker,
                       name=shared.name if shared else STUDY_NAME)
    check_same_search(study, raw, f"study {shared.name!r} in --storage" if shared
                      else str(out / "study.db"))
    if shared is None:
        fail_interrupted(optuna, storage, study)
    done = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(optuna, tune, worker, done)
    return study, done


def trials_left(tune: TuneConfig, trials: int, done: int) -> int:
    """How many trials this run adds to a study of ``done`` to reach ``trials``; a grid stops
    at its number of points, as its extra trials would only repeat them."""
    target = min(trials, math.prod(len(v) for v in tune.grid().values())) \
        if tune.sampler == "grid" else trials
    return max(0, target - done)


def run_trials(study: Any, search: Search, remaining: int, workers: int, started: float,
               live: bool) -> dict:
    """Run ``remaining`` trials here or in ``workers`` processes, then write the outputs.

    On Ctrl-C, or when a worker crashed, the outputs of the trials that ended are still
    written before the error is raised.

    Raises:
        RuntimeError: a worker process crashed (a bug, not a user error).
    """
    crashed: list[str] = []
    try:
        with TrialTable(study, search.tune, enabled=live) as table:
            if workers == 1:
                run_share(study, search, remaining, worker=0, on_trial=table.refresh)
            elif workers > 1:
                crashed = run_workers(search, shares(remaining, workers), table)
    except KeyboardInterrupt:  # the workers' trials ended failed: still write what ended
        with contextlib.suppress(MmfuseError):
            write_outputs(study, search.raw, search.resolved, search.tune, search.out, started,
                          search.shared)
        raise
    if crashed:  # a bug, not a user error: report it even when no trial completed
        with contextlib.suppress(MmfuseError):
            write_outputs(study, search.raw, search.resolved, search.tune, search.out, started,
                          search.shared)
        raise RuntimeError(f"{', '.join(crashed)}; its traceback is above (trials.csv lists "
                           "the trials that ended)")
    return write_outputs(study, search.raw, search.resolved, search.tune, search.out, started,
                         search.shared)


def read_config(source: str | Path | dict) -> tuple[dict, Config]:
    """The config as written and validated; one without ``tune:`` is an error showing one."""
    config = load_config(source)
    if config.tune is None:
        raise ConfigError(f"{source if not isinstance(source, dict) else 'the config'} has no "
                          f"tune: section; mmfuse tune searches the space it declares, e.g.\n"
                          f"{EXAMPLE}")
    raw = source if isinstance(source, dict) else yaml.safe_load(
        Path(source).read_text(encoding="utf-8"))
    return raw, config


def check_inputs(config: Config, data: str | Path, valid: str | Path | None) -> None:
    """Fail before any trial when no trial could run: a missing table, no validation split."""
    for name, table in (("--data", data), ("--valid", valid)):
        local = table is not None and not is_url(str(table)) and not is_shards(str(table))
        if local and not Path(table).exists():
            raise DataError(f"{name} {str(table)!r}: no such file")
    tunes_fraction = "training.valid_fraction" in config.tune.parameters
    if valid is None and config.training.valid_fraction == 0 and not tunes_fraction:
        raise ConfigError("mmfuse tune scores each trial on validation data: pass --valid "
                          "TABLE or set training.valid_fraction above 0")


def open_storage(optuna: Any, out: Path) -> Any:
    """The SQLite storage ``out/study.db``; writers wait up to a minute for each other."""
    return optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def open_study(optuna: Any, storage: Any, tune: TuneConfig, worker: int, done: int = 0,
               name: str = STUDY_NAME) -> Any:
    """The study in ``storage`` (created on first use) with this worker's sampler."""
    return optuna.create_study(
        storage=storage, study_name=name, direction=tune.direction,
        sampler=make_sampler(optuna, tune, worker, done), pruner=make_pruner(optuna, tune),
        load_if_exists=True)


def make_sampler(optuna: Any, tune: TuneConfig, worker: int, done: int = 0) -> Any:
    """TPE, random or grid. The seed of TPE and random mixes in the worker and the number of
    trials the study already has, so neither parallel workers nor a resumed run draw the
    values drawn before; the grid keeps one seed, as its order maps trial numbers to points."""
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(tune.grid(), seed=tune.seed)
    seed = int(np.random.SeedSequence([tune.seed, done, worker]).generate_state(1)[0])
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(optuna: Any, tune: TuneConfig) -> Any:
    """The pruner of ``tune.pruner``. Steps are epochs, counted from 1, so a trial trains
    ``warmup_epochs`` epochs before the first step it can be pruned at."""
    cfg = tune.pruner
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                           n_warmup_steps=cfg.warmup_epochs + 1)
    if cfg.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.warmup_epochs + 1)
    return optuna.pruners.NopPruner()


def check_same_search(study: Any, raw: dict, where: str) -> None:
    """Record the config a new study searches; refuse to resume a study of another one.

    The sampler, its seed and the pruner may change between runs (they do not change what a
    finished trial measured); anything else would mix trials of different searches.
    """
    tune = {k: v for k, v in (raw.get("tune") or {}).items()
            if k not in ("sampler", "seed", "pruner")}
    fingerprint = json.loads(json.dumps({**raw, "tune": tune}, sort_keys=True, default=str))
    recorded = study.user_attrs.get("config")
    if recorded is None:
        study.set_user_attr("config", fingerprint)
        return
    changed = [f"tune.{k}" for k in sorted({*recorded.get("tune", {}), *tune})
               if recorded.get("tune", {}).get(k) != fingerprint["tune"].get(k)]
    changed += [k for k in sorted({*recorded, *fingerprint} - {"tune"})
                if recorded.get(k) != fingerprint.get(k)]
    if changed:
        raise ConfigError(f"{where} holds a study of another config (changed: "
                          f"{', '.join(changed)}); rerun with the config it started with, or "
                          "tune into a new --out folder (or --study name)")


def fail_interrupted(optuna: Any, storage: Any, study: Any) -> None:
    """Mark the trials an interrupted run left RUNNING as failed, saying why."""
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", "interrupted: the study stopped while "
                                    "this trial was running")
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


def shares(total: int, workers: int) -> list[int]:
    """``total`` trials split as evenly as possible between ``workers``."""
    return [total // workers + (1 if k < total % workers else 0) for k in range(workers)]


def run_workers(search: Search, counts: list[int], table: TrialTable) -> list[str]:
    """Run each share in a spawned process; returns a line per worker that crashed."""
    context = multiprocessing.get_context("spawn")  # no forked torch or SQLite state
    processes = [context.Process(target=worker_main, args=(search, count, k),
                                 name=f"mmfuse-tune-{k}") for k, count in enumerate(counts)]
    for process in processes:
        process.start()
    try:
        while alive := [p.sentinel for p in processes if p.is_alive()]:
            multiprocessing.connection.wait(alive, timeout=1.0)  # a worker ended, or 1 s
            table.refresh()
    finally:
        for process in processes:  # on Ctrl-C the workers got it too; let them finish
            process.join()
    return [f"tuning worker {k} exited with code {p.exitcode}"
            for k, p in enumerate(processes) if p.exitcode != 0]


def worker_main(search: Search, count: int, worker: int) -> None:
    """A worker process: open the study with its own sampler and run ``count`` trials."""
    optuna = require("optuna", "tune", "mmfuse tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    shared = search.shared
    storage = shared.storage(optuna) if shared else open_storage(optuna, search.out)
    study = open_study(optuna, storage, search.tune, worker_id() if shared else worker,
                       search.done, name=shared.name if shared else STUDY_NAME)
    run_share(study, search, count, worker)
