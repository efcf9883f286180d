"""One study searched by workers on several machines: ``mmfuse tune ... --storage URL``.

Without ``--storage`` the study lives in ``DIR/study.db`` (SQLite), which only one machine can
reach. With it, the study lives in any database Optuna's RDB storage accepts (a SQLAlchemy URL:
``postgresql+psycopg://user:password@host/db``, ``mysql+pymysql://...``; the driver is the
user's to install). Each worker runs ``mmfuse tune CONFIG --data ... --out ITS_DIR --storage
URL`` with the same config and ``--trials N``, which is then the study's total over all
workers: a worker stops once the study holds N trials. Trials get their numbers from the
database, so no two workers run the same one.

A worker that dies leaves its trial RUNNING; every trial sends a heartbeat (``--heartbeat``
seconds apart, 60 by default), and a trial silent for twice that is failed by the next worker
to start a trial, which also queues a copy of it with the same values (Optuna's
``RetryFailedTrialCallback``, at most ``MAX_RETRY`` times) and runs it. A worker that has run
its share waits, before it ends, for the trials still running elsewhere (:func:`settle`): each
ends, or falls silent and is run again here. So a study with a dead worker still finishes, as
long as one worker runs to the end; each trial run again adds one to the study's count.

Each worker trains its trials into its own ``--out``. When a trial completes as the study's best
so far, the worker that ran it makes it ``best/`` in its own ``--out`` at once (and deletes the
run folder of any other trial it finishes), so ``best/`` is on the machine that ran the best
trial; every worker's summary names that machine and folder, and each worker writes
``best.yaml`` and ``trials.csv`` (of the whole study) into its own ``--out``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MmfuseError
from .outputs import make_best

MAX_RETRY = 2  # copies of a dead worker's trial queued before it counts as failed for good
STUDY_NAME = "mmfuse-tune"


@dataclass(frozen=True)
class SharedStudy:
    """Where a shared study lives and how its workers watch each other."""

    url: str
    name: str = STUDY_NAME
    heartbeat: int = 60  # seconds between a running trial's heartbeats

    def storage(self, optuna: Any) -> Any:
        """Optuna's RDB storage at ``url``, with heartbeats and retries of dead trials."""
        with warnings.catch_warnings():  # heartbeats and retries are "experimental" since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)
        try:
            return optuna.storages.RDBStorage(self.url, heartbeat_interval=self.heartbeat,
                                              grace_period=2 * self.heartbeat,
                                              failed_trial_callback=retry)
        except ModuleNotFoundError as exc:
            raise MmfuseError(f"--storage {masked(self.url)}: its database driver is not "
                              f"installed ({exc}); e.g. pip install 'psycopg[binary]' for "
                              "postgresql+psycopg://") from None
        except Exception as exc:  # SQLAlchemy's and the drivers' many errors
            raise MmfuseError(f"--storage {masked(self.url)}: cannot open the study database "
                              f"({type(exc).__name__}: {first_line(exc)}); check the URL, "
                              "that the server runs and that the database exists") from None


def settle(study: Any, heartbeat: int, run_queued: Any) -> None:
    """Wait until no trial of the study runs: fail those whose worker fell silent (which
    queues their retries) and run the queued ones with ``run_queued(count)``."""
    import optuna

    while True:
        optuna.storages.fail_stale_trials(study)
        queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if queued:
            run_queued(len(queued))
            continue
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            return
        time.sleep(heartbeat)


def masked(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


def worker_id() -> int:
    """A number for this machine and process (mixed into the sampler's seed)."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())


def where(out: Path) -> dict[str, str]:
    """The machine and folder a trial's run lands in (user attributes of the trial)."""
    return {"host": socket.gethostname(), "out": str(out.resolve())}


def keep_if_best(study: Any, trial: Any, out: Path, params: dict) -> None:
    """After a trial of this worker ends: make its run ``out/best`` if it is the study's best
    so far, else delete its run folder."""
    import optuna

    run = out / "trials" / f"{trial.number:04d}"
    if not run.is_dir():
        return
    try:
        best = study.best_trial.number
    except ValueError:  # no complete trial yet
        best = None
    if trial.state == optuna.trial.TrialState.COMPLETE and best == trial.number:
        make_best(out, trial.number, params)
    else:
        shutil.rmtree(run, ignore_errors=True)
