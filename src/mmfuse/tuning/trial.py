"""One trial of a study: sample its values, train them into ``DIR/trials/NNNN/``, score it.

Every epoch's validation metric is reported to Optuna, whose pruner may stop the trial there
(``optuna.TrialPruned`` propagates out of training). The trial's value is the metric at the
epoch whose weights the run keeps (train() keeps the lowest validation loss), so it measures
the model saved in the trial's folder. Errors are recorded on the trial (user attribute
``error``) before Optuna marks it failed; only user errors (MmfuseError) let the study go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import MmfuseError
from .outputs import decode
from .shared import SharedStudy, keep_if_best, settle, where
from .space import ChoiceSpace, IntSpace, LogUniformSpace, TuneConfig, apply_params


@dataclass(frozen=True)
class Search:
    """What every trial of a study needs; picklable, so a spawned worker gets it whole."""

    raw: dict  # the config as written, without tune:
    resolved: dict  # the same config validated, every option filled in
    tune: TuneConfig
    train: str | Path  # a table path, URL or shard pattern
    valid: str | Path | None
    data_root: Path | None
    out: Path
    deadline: float  # time.time() by which the study ends; inf without --minutes
    threads: int
    done: int  # trials the study had when this run started (seeds the samplers)
    shared: SharedStudy | None = None  # a study in a database shared with other machines
    total: int = 0  # --trials: a shared study's total over all its workers


def run_share(study: Any, search: Search, count: int, worker: int,
              on_trial: Callable[[], None] | None = None) -> None:
    """Run up to ``count`` trials in this process, starting none after the deadline; each
    trial records the ``worker`` that ran it (a user attribute)."""
    timeout = None if math.isinf(search.deadline) else search.deadline - time.time()
    if count <= 0 or (timeout is not None and timeout <= 0):
        return
    import torch

    callbacks = [lambda _study, _trial: on_trial()] if on_trial else []
    if search.shared:  # keep the best's run, delete the others'
        callbacks.append(lambda study, trial: keep_if_best(study, trial, search.out,
                                                           params_of(search.tune, trial)))

    def run(n: int, stop_at_total: bool) -> None:
        import optuna

        # a shared study ends at its total over every worker; a failed trial does not count
        # (a retried one is counted once, as its retry, whether a worker fails it while the
        # others still run trials or only when they settle)
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                   optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        total = [optuna.study.MaxTrialsCallback(search.total, states=counted)] \
            if stop_at_total else []
        # a user error or a combination too large for memory fails its trial, not the study
        study.optimize(lambda trial: objective(trial, search, worker), n_trials=n,
                       timeout=timeout, catch=(MmfuseError, torch.OutOfMemoryError, MemoryError),
                       callbacks=callbacks + total)

    run(count, stop_at_total=search.shared is not None)
    if search.shared:  # trials still running elsewhere end, or are run again here
        settle(study, search.shared.heartbeat, lambda n: run(n, stop_at_total=False))


def params_of(tune: TuneConfig, trial: Any) -> dict[str, Any]:
    """A trial's values as the config takes them (a choice may be stored as JSON text)."""
    return {name: decode(tune, name, trial.params[name])
            for name in tune.parameters if name in trial.params}


def objective(trial: Any, search: Search, worker: int) -> float:
    """One trial: sample the values, train, return the metric of the kept epoch. Any error
    is recorded on the trial first; Optuna then marks it failed (and re-raises a non-user
    error, which stops the study)."""
    import optuna

    trial.set_user_attr("worker", worker)
    if search.shared:  # where its run lands, for the other workers' summaries
        for key, value in where(search.out).items():
            trial.set_user_attr(key, value)
    params = {name: suggest(trial, name, space) for name, space in search.tune.parameters.items()}
    try:
        return train_trial(trial, search, params)
    except optuna.TrialPruned:
        raise
    except MmfuseError as exc:
        trial.set_user_attr("error", " ".join(str(exc).split()))  # one line, for the table
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted")
        raise
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise


def suggest(trial: Any, name: str, space: Any) -> Any:
    """Ask Optuna for one parameter's value in its space."""
    if isinstance(space, ChoiceSpace):
        return space.value(trial.suggest_categorical(name, space.labels()))
    if isinstance(space, IntSpace):
        return trial.suggest_int(name, space.low, space.high, step=space.step)
    return trial.suggest_float(name, space.low, space.high,
                               log=isinstance(space, LogUniformSpace))


def train_trial(trial: Any, search: Search, params: dict[str, Any]) -> float:
    """Train the config with ``params`` applied into ``out/trials/NNNN`` and score it."""
    import optuna

    from ..api import Model

    config = load_config(apply_params(search.raw, params, search.resolved))
    minutes_left = (search.deadline - time.time()) / 60
    capped = math.isfinite(minutes_left) and minutes_left < (config.training.max_minutes
                                                             or math.inf)
    if capped:  # so a trial running at the deadline ends there too
        config.training.max_minutes = max(minutes_left, 0.001)
    metric = search.tune.metric

    def report(record: dict) -> None:
        value = record.get(metric)
        if value is None:
            raise MmfuseError(f"the epoch record has no {metric}: mmfuse tune needs "
                              "validation data; pass --valid or set training.valid_fraction")
        if _finite(value):
            trial.report(value, record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")

    run = search.out / "trials" / f"{trial.number:04d}"
    summary = Model(config).fit(search.train, search.valid, out=run, data_root=search.data_root,
                                threads=search.threads, on_epoch=report, overwrite=True)
    if summary["interrupted"]:  # Ctrl-C: this trial is failed (not scored), start no other
        trial.study.stop()
        raise MmfuseError(f"interrupted (Ctrl-C) after {summary['epochs']} epoch(s)")
    if capped and time.time() >= search.deadline:  # scored, but flagged: it ran short
        trial.set_user_attr("note", f"stopped at the --minutes deadline after "
                                    f"{summary['epochs']} epoch(s)")
    value = summary["best"].get(metric)
    trial.set_user_attr("best_epoch", summary["best_epoch"])
    if not _finite(value):
        raise MmfuseError(f"the run ended with {metric} = {value} (did it diverge?)")
    return value


def _finite(value: float | None) -> bool:
    """Whether a metric value can be told to Optuna (a diverged run gives NaN or inf)."""
    return value is not None and math.isfinite(value)
