"""``mmfuse tune --storage URL``: two workers, separate processes, one study in a real
PostgreSQL server (Debian's postgresql, started and stopped here): no trial runs twice, and a
SIGKILLed worker's trial is failed by its heartbeat and run again by the other worker."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from serving import free_port

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg")
BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
if not BIN:
    pytest.skip("PostgreSQL is not installed (Debian's postgresql package)",
                allow_module_level=True)


def as_postgres(*command: str) -> list[str]:
    """The command as the postgres user when we are root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@contextlib.contextmanager
def postgres_server():
    """A fresh cluster on a free loopback port; yields its SQLAlchemy URL."""
    folder = Path(tempfile.mkdtemp(prefix="mmfuse-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(as_postgres(f"{BIN[-1]}/initdb", "-D", str(data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8"), check=True, capture_output=True)
    subprocess.run(as_postgres(f"{BIN[-1]}/pg_ctl", "-D", str(data), "-w", "-l",
                               str(folder / "log"), "-o",
                               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"),
                   check=True, capture_output=True)
    try:
        subprocess.run(as_postgres(f"{BIN[-1]}/createdb", "-h", "127.0.0.1", "-p", str(port),
                                   "-U", "postgres", "mmfuse"), check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mmfuse"
    finally:
        subprocess.run(as_postgres(f"{BIN[-1]}/pg_ctl", "-D", str(data), "-m", "immediate",
                                   "stop"), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def worker(config: Path, table: Path, out: Path, url: str, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mmfuse.cli", "tune", str(config), "--data", str(table),
         "--out", str(out), "--trials", str(trials), "--storage", url, "--heartbeat", "2",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_a_postgres_study_and_retry_a_killed_ones_trial(
        shapes_qa, minimal_config, tmp_path):
    config = {**minimal_config, "training": {**minimal_config["training"], "epochs": 2},
              "tune": {"metric": "valid_accuracy", "sampler": "random", "parameters": {
                  "training.learning_rate": {"space": "loguniform", "low": 1e-3, "high": 1e-2}}}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    trials = 6
    with postgres_server() as url:
        first = worker(path, shapes_qa["en_train"], tmp_path / "a", url, trials)
        second = worker(path, shapes_qa["en_train"], tmp_path / "b", url, trials)
        storage = optuna.storages.RDBStorage(url)
        mine = str((tmp_path / "a").resolve())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill worker a while a trial of its runs
            with contextlib.suppress(KeyError):
                study = optuna.load_study(study_name="mmfuse-tune", storage=storage)
                if [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                        if t.user_attrs.get("out") == mine]:
                    break
            time.sleep(0.1)
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait()
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, err
        summary = json.loads(out)
        study = optuna.load_study(study_name="mmfuse-tune", storage=storage)
        finished, best = study.get_trials(), study.best_trial
    numbers = [t.number for t in finished]
    assert len(numbers) == len(set(numbers)), "no trial number twice"
    assert all(t.state.is_finished() for t in finished), [t.state for t in finished]
    killed = [t for t in finished if t.user_attrs.get("out") == mine
              and t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1
    retried = [t for t in finished
               if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t)
               == killed[0].number]
    assert len(retried) == 1 and retried[0].state in (optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED)
    assert retried[0].params == killed[0].params, "the retry runs the same values"
    assert retried[0].user_attrs["out"] == str((tmp_path / "b").resolve())
    assert len(finished) == trials + 1 == summary["trials"], "the retry adds one"
    assert summary["best_trial"] == best.number
    where = Path(best.user_attrs["out"])  # the worker that ran it made it best/ there
    assert summary["best_run"] == (str(where / "best") if where == (tmp_path / "b").resolve()
                                   else f"{best.user_attrs['host']}:{where / 'best'}")
    assert json.loads((where / "best" / "trial.json").read_text())["trial"] == best.number
    assert not list((tmp_path / "b" / "trials").glob("*")), "only the best run is kept"


def test_an_unreachable_storage_is_a_clear_error(shapes_qa, minimal_config, tmp_path):
    from test_cli import run

    config = {**minimal_config, "tune": {"parameters": {
        "training.learning_rate": {"space": "loguniform", "low": 1e-3, "high": 1e-2}}}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run("tune", path, "--data", shapes_qa["en_train"], "--out", tmp_path / "out",
                 "--trials", "2", "--storage",
                 f"postgresql+psycopg://me:secret@127.0.0.1:{free_port()}/none", check=False)
    assert result.returncode != 0
    assert "cannot open the study database" in result.stderr and "me:***@" in result.stderr
    assert "secret" not in result.stderr
