"""What a study leaves behind: ``trials.csv``, ``best.yaml``, ``best/``, a live table, a summary.

``DIR/best/`` is the best trial's own run folder (moved from ``DIR/trials/NNNN/``), so
``mmfuse evaluate DIR/best`` scores exactly the model the trial's value measured. The other trial
folders are deleted when the study ends; a resumed study whose best is still an earlier trial
keeps the ``best/`` it has (``best/trial.json`` says which trial it holds).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..atomic import replace_folder, write_text
from ..config import load_config
from ..errors import MmfuseError
from .space import ChoiceSpace, TuneConfig, apply_params

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}
LIVE_ROWS = 20  # the live table shows the latest trials; trials.csv has them all


def trial_rows(study: Any, tune: TuneConfig) -> list[dict]:
    """One row per trial: number, each parameter, the metric, state, seconds, error (of a
    failed trial), note (a trial the --minutes deadline cut short)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        rows.append({"number": trial.number,
                     **{name: trial.params.get(name) for name in tune.parameters},
                     tune.metric: trial.value, "state": STATES.get(trial.state.name,
                                                                   trial.state.name.lower()),
                     "seconds": None if seconds is None else round(seconds, 2),
                     "error": trial.user_attrs.get("error", ""),
                     "note": trial.user_attrs.get("note", "")})
    return rows


def best_row(rows: list[dict], tune: TuneConfig) -> dict | None:
    """The complete trial with the best value (the earliest of equals), if any."""
    complete = [r for r in rows if r["state"] == "complete" and r[tune.metric] is not None]
    if not complete:
        return None
    sign = 1 if tune.direction == "minimize" else -1
    return min(complete, key=lambda r: (sign * r[tune.metric], r["number"]))


def write_outputs(study: Any, raw: dict, resolved: dict, tune: TuneConfig, out: Path,
                  started: float, shared: Any = None) -> dict:
    """Write ``trials.csv``, then ``best/`` and ``best.yaml``; return the summary.

    The summary (what ``mmfuse tune --json`` prints) is ``{"trials", "complete", "pruned",
    "failed", "metric", "direction", "best_trial", "best_value", "best_params",
    "best_config", "best_run", "seconds"}``.

    Raises:
        MmfuseError: no trial completed (with the first trials' errors).
    """
    rows = trial_rows(study, tune)
    write_csv(out / "trials.csv", rows, ["number", *tune.parameters, tune.metric, "state",
                                         "seconds", "error", "note"])
    counts = {state: sum(r["state"] == state for r in rows)
              for state in ("complete", "pruned", "failed")}
    best = best_row(rows, tune)
    if best is None:
        raise MmfuseError(no_best_message(rows, out))
    params = {name: decode(tune, name, best[name]) for name in tune.parameters}
    if shared is None:
        best_run = str(keep_best_run(out, best["number"], params))
    else:  # the worker that ran the best trial keeps its run (shared.keep_if_best)
        here = best_trial_number(out / "best") == best["number"]
        best_run = str(out / "best") if here else best_location(study, best["number"])
    write_best_config(out / "best.yaml", apply_params(raw, params, resolved))
    return {"trials": len(rows), **counts, "metric": tune.metric, "direction": tune.direction,
            "best_trial": best["number"], "best_value": best[tune.metric], "best_params": params,
            "best_config": str(out / "best.yaml"), "best_run": best_run,
            "seconds": round(time.time() - started, 2)}


def no_best_message(rows: list[dict], out: Path) -> str:
    """Why there is no best trial: none ran, or each failed or was pruned (first errors)."""
    if not rows:
        return "no trial ran (was --minutes too short?); nothing to choose from"
    errors = [f"trial {r['number']}: {r['error']}" for r in rows if r["error"]][:3]
    return (f"no trial completed: {len(rows)} trial(s) failed or were pruned (see "
            f"{out / 'trials.csv'}); the first errors:\n  " + "\n  ".join(errors or ["none"]))


def decode(tune: TuneConfig, name: str, label: Any) -> Any:
    """The config value of a parameter as Optuna stored it (a choice may be JSON text)."""
    space = tune.parameters[name]
    return space.value(label) if isinstance(space, ChoiceSpace) else label


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` atomically (a half-written table never replaces a whole one)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
    write_text(path, text.getvalue())


def write_best_config(path: Path, config: dict) -> None:
    """Write the chosen config as YAML, checked to load, atomically."""
    load_config(config)  # the best trial trained on it, but a config that fails must not land
    write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def keep_best_run(out: Path, number: int, params: dict) -> Path:
    """Make ``out/best`` the run folder of trial ``number`` and delete the other trials'.

    Raises:
        MmfuseError: neither ``trials/NNNN`` nor ``best/`` holds that trial's run.
    """
    best, source = out / "best", out / "trials" / f"{number:04d}"
    if source.is_dir():
        make_best(out, number, params)
    elif best_trial_number(best) != number:
        raise MmfuseError(f"the run of the best trial ({number}) is missing: neither "
                          f"{source} nor {best} holds it; tune into a new --out folder")
    shutil.rmtree(out / "trials", ignore_errors=True)
    return best


def make_best(out: Path, number: int, params: dict) -> None:
    """Move trial ``number``'s run folder to ``out/best``, with ``trial.json`` saying which
    trial it holds (a crash before the move leaves ``trials/NNNN`` for the next run)."""
    source = out / "trials" / f"{number:04d}"
    (source / "trial.json").write_text(json.dumps({"trial": number, "params": params},
                                                  indent=1, default=str))
    replace_folder(source, out / "best")


def best_location(study: Any, number: int) -> str:
    """Where the run of trial ``number`` of a shared study is: ``host:folder/best``."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    host, out = trial.user_attrs.get("host"), trial.user_attrs.get("out")
    return f"{host}:{Path(out) / 'best'}" if host and out else "unknown"


def best_trial_number(best: Path) -> int | None:
    """The trial whose run ``best/`` holds, from its ``trial.json``."""
    try:
        return json.loads((best / "trial.json").read_text())["trial"]
    except (OSError, ValueError, KeyError):
        return None


class TrialTable:
    """A rich live table of the study's trials, refreshed as they finish (no-op if off)."""

    def __init__(self, study: Any, tune: TuneConfig, enabled: bool) -> None:
        self.study, self.tune = study, tune
        self.live = Live(self.render(), console=Console(stderr=True),
                         refresh_per_second=2) if enabled else None

    def __enter__(self) -> TrialTable:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.refresh()
            self.live.stop()

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.render())

    def render(self) -> Table:
        rows = trial_rows(self.study, self.tune)
        metric, best = self.tune.metric, best_row(rows, self.tune)
        table = Table(title=f"mmfuse tune: {len(rows)} trial(s), {self.tune.direction} {metric}",
                      caption=f"best: trial {best['number']}, {metric} {best[metric]:.4f}"
                      if best else None)
        for column in ("trial", *self.tune.parameters, metric, "state", "seconds"):
            table.add_column(column, justify="left" if column == "state" else "right")
        style = {"complete": "", "pruned": "yellow", "failed": "red", "running": "cyan"}
        for row in rows[-LIVE_ROWS:]:
            value = row[metric]
            table.add_row(str(row["number"]), *(_short(row[p]) for p in self.tune.parameters),
                          "" if value is None else f"{value:.4f}", row["state"],
                          "" if row["seconds"] is None else f"{row['seconds']:.1f}",
                          style="bold green" if row is best else style.get(row["state"], ""))
        return table


def _short(value: Any) -> str:
    """A parameter value for the live table: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
