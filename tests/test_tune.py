"""``mmfuse tune``: the tune: config section, the study (resume, failures, pruning, workers,
time budget) and its outputs (trials.csv, best.yaml, best/), on a tiny shapes table."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import MINIMAL, make_shapes_qa
from mmfuse.config import load_config
from mmfuse.errors import ConfigError, MmfuseError
from mmfuse.threads import available_cpus
from mmfuse.tuning import outputs, run_tune
from mmfuse.tuning.space import apply_params
from mmfuse.tuning.study import STUDY_NAME
from test_cli import run

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed")

LR = {"training.learning_rate": {"space": "loguniform", "low": 1e-3, "high": 1e-2}}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """40 images, 80 question rows: each trial trains in well under a second."""
    return make_shapes_qa(tmp_path_factory.mktemp("tune_data"), 40, seed=3)


def config_with(tune: dict | None, epochs: int = 2, **training) -> dict:
    config = copy.deepcopy(MINIMAL)
    config["training"].update(epochs=epochs, **training)
    if tune is not None:
        config["tune"] = tune
    return config


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_trials(out: Path) -> list[dict]:
    with (out / "trials.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def stored_trials(out: Path) -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    return optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials()


# --- end to end through the command


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_tune_command_writes_trials_best_config_and_best_run(tmp_path, table):
    tune = {"parameters": {**LR, "fusion.type": {"space": "choice",
                                                 "values": ["concat", "gated"]}}}
    config = write_config(tmp_path, config_with(tune))
    out = tmp_path / "study"
    result = run("tune", config, "--data", table, "--trials", "3", "--out", out, "--json")
    summary = json.loads(result.stdout)
    assert set(summary) == {"trials", "complete", "pruned", "failed", "metric", "direction",
                            "best_trial", "best_value", "best_params", "best_config",
                            "best_run", "seconds"}
    assert (summary["trials"], summary["complete"]) == (3, 3)
    assert (summary["metric"], summary["direction"]) == ("valid_loss", "minimize")
    assert set(summary["best_params"]) == {"training.learning_rate", "fusion.type"}

    rows = read_trials(out)
    assert list(rows[0]) == ["number", "training.learning_rate", "fusion.type", "valid_loss",
                             "state", "seconds", "error", "note"]
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"}
    assert min(float(r["valid_loss"]) for r in rows) == pytest.approx(summary["best_value"])

    best = load_config(out / "best.yaml")
    assert best.tune is None
    assert best.training.learning_rate == pytest.approx(
        summary["best_params"]["training.learning_rate"])
    assert best.fusion["type"] == summary["best_params"]["fusion.type"]
    assert "tune" not in yaml.safe_load((out / "best.yaml").read_text())

    # best/ is the best trial's own run: its model scores the trial's value on the same split
    assert json.loads((out / "best" / "trial.json").read_text())["trial"] == summary[
        "best_trial"]
    assert not (out / "trials").exists()  # the other trials' folders are gone
    evaluated = json.loads(run("evaluate", out / "best", "--json").stdout)
    assert evaluated["outputs"]["answer"]["loss"] == pytest.approx(summary["best_value"],
                                                                   rel=1e-3)
    trained = run("train", out / "best.yaml", "--data", table, "--out", tmp_path / "again",
                  "--json")
    assert json.loads(trained.stdout)["epochs"] == 2


def test_resume_adds_the_missing_trials_only(tmp_path, table):
    config = write_config(tmp_path, config_with({"parameters": LR}))
    out = tmp_path / "study"
    assert run_tune(config, table, out, 2, live=False)["trials"] == 2
    assert run_tune(config, table, out, 4, live=False)["trials"] == 4
    rows = read_trials(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    # a resumed run's sampler does not replay the values the first run drew
    rates = [r["training.learning_rate"] for r in rows]
    assert len(set(rates)) == 4

    (out / "trials.csv").unlink()
    (out / "best.yaml").unlink()
    again = run("tune", config, "--data", table, "--trials", "4", "--out", out)
    assert "4 trial(s)" in again.stdout
    assert "state" in again.stderr and "valid_loss" in again.stderr  # the live table
    assert [r["training.learning_rate"] for r in read_trials(out)] == rates  # nothing new ran
    assert load_config(out / "best.yaml").tune is None


def test_running_trial_of_an_interrupted_run_is_failed_on_resume(tmp_path, table):
    config = write_config(tmp_path, config_with({"parameters": LR}))
    out = tmp_path / "study"
    run_tune(config, table, out, 1, live=False)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    optuna.load_study(study_name=STUDY_NAME, storage=storage).ask()  # as a killed run leaves it
    assert [t.state.name for t in stored_trials(out)] == ["COMPLETE", "RUNNING"]

    summary = run_tune(config, table, out, 3, live=False)
    assert (summary["trials"], summary["complete"], summary["failed"]) == (3, 2, 1)
    trials = stored_trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "interrupted" in trials[1].user_attrs["error"]
    assert read_trials(out)[1]["state"] == "failed"


def test_resuming_with_another_search_is_refused(tmp_path, table):
    out = tmp_path / "study"
    first = write_config(tmp_path / "a", config_with({"parameters": LR}))
    run_tune(first, table, out, 1, live=False)
    wider = {"training.learning_rate": {"space": "loguniform", "low": 1e-4, "high": 1e-1}}
    other = write_config(tmp_path / "b", config_with({"parameters": wider}))
    with pytest.raises(ConfigError, match=r"another config \(changed: tune.parameters\)"):
        run_tune(other, table, out, 2, live=False)
    # the sampler, its seed and the pruner may change: they do not change what trials measured
    reseeded = write_config(tmp_path / "c", config_with(
        {"parameters": LR, "seed": 7, "sampler": "random", "pruner": "none"}))
    assert run_tune(reseeded, table, out, 2, live=False)["trials"] == 2


# --- failures


def test_failing_combination_is_recorded_and_the_study_goes_on(tmp_path, table):
    # MINIMAL's fusion has `hidden`, which the relation fusion does not take
    tune = {"sampler": "grid",
            "parameters": {"fusion.type": {"space": "choice", "values": ["relation", "concat"]}}}
    config = write_config(tmp_path, config_with(tune))
    summary = run_tune(config, table, tmp_path / "study", 5, live=False)
    assert (summary["trials"], summary["complete"], summary["failed"]) == (2, 1, 1)  # the grid
    assert summary["best_params"] == {"fusion.type": "concat"}
    failed = [r for r in read_trials(tmp_path / "study") if r["state"] == "failed"]
    assert failed[0]["fusion.type"] == "relation"
    assert "relation" in failed[0]["error"] and "hidden" in failed[0]["error"]


def test_every_trial_failing_is_one_clear_error(tmp_path, table):
    tune = {"parameters": {"fusion.type": {"space": "choice", "values": ["relation"]}}}
    config = write_config(tmp_path, config_with(tune))
    with pytest.raises(MmfuseError, match=r"no trial completed(.|\n)*trial 0: .*relation"):
        run_tune(config, table, tmp_path / "study", 2, live=False)
    assert [r["state"] for r in read_trials(tmp_path / "study")] == ["failed", "failed"]


def test_a_real_bug_stops_the_study_after_recording_it(tmp_path, table, monkeypatch):
    import mmfuse.api

    def broken_fit(self, *args, **kwargs):
        raise ZeroDivisionError("a bug in training")

    monkeypatch.setattr(mmfuse.api.Model, "fit", broken_fit)
    config = write_config(tmp_path, config_with({"parameters": LR}))
    with pytest.raises(ZeroDivisionError):
        run_tune(config, table, tmp_path / "study", 3, live=False)
    trials = stored_trials(tmp_path / "study")
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["error"] == "ZeroDivisionError: a bug in training"


def test_without_a_tune_section_the_error_shows_one(tmp_path, table):
    config = write_config(tmp_path, config_with(None))
    with pytest.raises(ConfigError, match=r"no tune: section(.|\n)*parameters:(.|\n)*space:"):
        run_tune(config, table, tmp_path / "study", 2, live=False)
    assert not (tmp_path / "study").exists()


# --- pruning, workers, time budget


def test_a_clearly_worse_trial_is_pruned_and_stops_training(tmp_path, table, monkeypatch):
    # the grid's seed-1 order runs the learning rate 0.01 first; the frozen one (1e-9) then
    # stays far above its validation loss and is pruned at epoch 3 (after 2 warm-up epochs)
    tune = {"sampler": "grid", "seed": 1,
            "pruner": {"type": "median", "startup_trials": 1, "warmup_epochs": 2},
            "parameters": {"training.learning_rate": {"space": "choice",
                                                      "values": [0.01, 1e-9]}}}
    config = write_config(tmp_path, config_with(tune, epochs=6, early_stopping_patience=None))
    kept = tmp_path / "kept"
    keep_best_run = outputs.keep_best_run

    def spy(out, number, params):  # copy the trial folders before the study deletes them
        shutil.copytree(out / "trials", kept)
        return keep_best_run(out, number, params)

    monkeypatch.setattr(outputs, "keep_best_run", spy)
    summary = run_tune(config, table, tmp_path / "study", 2, live=False)
    rows = read_trials(tmp_path / "study")
    assert float(rows[0]["training.learning_rate"]) == 0.01, "the grid order changed"
    assert [r["state"] for r in rows] == ["complete", "pruned"]
    assert (summary["pruned"], summary["best_trial"]) == (1, 0)
    epochs = [len((kept / f"{n:04d}" / "metrics.jsonl").read_text().splitlines())
              for n in (0, 1)]
    assert epochs == [6, 3]


def test_on_epoch_sees_each_written_record_and_its_exception_stops_fit(tmp_path, table):
    from mmfuse.api import Model

    class Stop(Exception):
        pass

    seen = []

    def on_epoch(record):
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        seen.append((record["epoch"], len(lines), "valid_loss" in record))
        if record["epoch"] == 2:
            raise Stop

    model = Model.from_config(config_with(None, epochs=5, early_stopping_patience=None))
    with pytest.raises(Stop):
        model.fit(table, out=tmp_path / "run", progress=True, on_epoch=on_epoch)
    assert seen == [(1, 1, True), (2, 2, True)]  # called after the line is written


@pytest.mark.slow  # make test-slow (CI runs it too)
def test_two_workers_share_the_trials(tmp_path, table):
    # no pruner: with the default median pruner the fourth trial may be pruned, depending on
    # which learning rates the two workers drew and which trials finished first
    config = write_config(tmp_path, config_with({"parameters": LR, "pruner": "none"}))
    out = tmp_path / "study"
    result = run("tune", config, "--data", table, "--trials", "4", "--jobs", "2", "--out", out,
                 "--json")
    summary = json.loads(result.stdout)
    assert (summary["trials"], summary["complete"]) == (4, 4)
    trials = stored_trials(out)
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 0, 1, 1]
    assert len({t.params["training.learning_rate"] for t in trials}) == 4  # seeded apart
    # the CPUs are split between the workers
    run_info = json.loads((out / "best" / "run.json").read_text())
    assert run_info["threads"] == max(1, available_cpus() // 2)


def test_minutes_bound_the_whole_study(tmp_path, table):
    # each trial would run 500 epochs; the budget stops the running trial and starts no more
    config = write_config(tmp_path, config_with({"parameters": LR}, epochs=500,
                                                early_stopping_patience=None))
    summary = run_tune(config, table, tmp_path / "study", 50, minutes=0.05, live=False)
    assert 1 <= summary["trials"] < 50
    assert summary["complete"] >= 1
    epochs = len((tmp_path / "study" / "best" / "metrics.jsonl").read_text().splitlines())
    assert epochs < 500
    rows = list(csv.DictReader((tmp_path / "study" / "trials.csv").open()))
    assert rows[-1]["note"].startswith("stopped at the --minutes deadline"), rows[-1]


def test_a_trial_stopped_by_ctrl_c_is_failed_not_scored(tmp_path, table, monkeypatch):
    # train() turns Ctrl-C into an early return; the half-trained trial must not be scored
    import mmfuse.training.loop as loop

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "validation_metrics", interrupt)
    config = write_config(tmp_path, config_with({"parameters": LR}))
    with pytest.raises(MmfuseError, match="interrupted"):
        run_tune(config, table, tmp_path / "study", 3, live=False)
    rows = list(csv.DictReader((tmp_path / "study" / "trials.csv").open()))
    assert [(r["state"], r["error"]) for r in rows] == [
        ("failed", "interrupted (Ctrl-C) after 1 epoch(s)")], "the study stops after it"


def test_ctrl_c_with_workers_still_writes_what_ended(tmp_path, table, monkeypatch):
    # Ctrl-C reaches the parent while workers run: trials that ended are still written out
    from mmfuse.tuning import study as study_module
    from mmfuse.tuning.trial import run_share

    def one_trial_then_ctrl_c(search, counts, table_view):
        import optuna

        shared = optuna.load_study(study_name=study_module.STUDY_NAME,
                                   storage=study_module.open_storage(optuna, search.out))
        run_share(shared, search, 1, worker=0)
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "run_workers", one_trial_then_ctrl_c)
    config = write_config(tmp_path, config_with({"parameters": LR}))
    with pytest.raises(KeyboardInterrupt):
        run_tune(config, table, tmp_path / "study", 4, jobs=2, live=False)
    rows = read_trials(tmp_path / "study")
    assert [r["state"] for r in rows] == ["complete"]
    assert (tmp_path / "study" / "best.yaml").is_file()
    assert (tmp_path / "study" / "best" / "model").is_dir()


# --- the tune: section


def test_tune_section_defaults_and_metric_names():
    tune = load_config(config_with({"parameters": LR})).tune
    assert (tune.metric, tune.direction, tune.sampler, tune.seed) == (
        "valid_loss", "minimize", "tpe", 0)
    assert (tune.pruner.type, tune.pruner.startup_trials, tune.pruner.warmup_epochs) == (
        "median", 3, 1)
    accuracy = load_config(config_with({"parameters": LR, "metric": "accuracy",
                                        "pruner": "hyperband"})).tune
    assert (accuracy.metric, accuracy.direction, accuracy.pruner.type) == (
        "valid_accuracy", "maximize", "hyperband")


@pytest.mark.parametrize("tune, message", [
    ({"paramaters": LR}, r"tune.paramaters: unknown key \(did you mean 'parameters'\?\)"),
    ({"parameters": LR, "metric": "valid_acuracy"},
     r"unknown metric 'valid_acuracy' \(did you mean 'valid_accuracy'\?\)"),
    ({"parameters": {"training.learnin_rate": LR["training.learning_rate"]}},
     r"training.learnin_rate: no key 'learnin_rate' at training \(did you mean "
     r"'learning_rate'\?\); keys there: epochs, batch_size"),
    ({"parameters": {"inputs.2.encoder.dim": {"space": "int", "low": 8, "high": 16}}},
     r"inputs.2.encoder.dim: inputs is a list of 2; use an index from 0 to 1"),
    ({"parameters": {"training.epochs.x": {"space": "int", "low": 8, "high": 16}}},
     r"training.epochs is a value \(2\), not a section"),
    ({"parameters": {"training.epochs": {"space": "lognormal", "low": 1, "high": 2}}},
     r"unknown space 'lognormal' \(did you mean 'loguniform'\?\)"),
    ({"parameters": {"training.epochs": {"space": "int", "low": 5, "hihg": 9}}},
     r"training.epochs: hihg: unknown key \(did you mean 'high'\?\)"),
    ({"parameters": {"training.learning_rate": {"space": "float", "low": 0.1, "high": 0.01}}},
     r"low \(0.1\) must be below high \(0.01\)"),
    ({"parameters": {"training.learning_rate": {"space": "loguniform", "low": 0, "high": 1}}},
     r"low: Input should be greater than 0"),
    ({"parameters": LR, "sampler": "grid"},
     r"sampler: grid .* parameter 'training.learning_rate' is a loguniform range"),
    ({"parameters": LR, "pruner": "medain"}, r"pruner.type: Input should be 'median'"),
])
def test_bad_tune_sections_fail_at_load_with_the_reason(tune, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(tune))


def test_paths_into_defaults_and_component_shorthands_apply_to_the_config_as_written():
    raw = config_with(None)
    del raw["fusion"]  # the image + text default is film
    raw["inputs"][1]["encoder"] = "gru"
    params = {"fusion.hidden": [32], "inputs.1.encoder.hidden_size": 24,
              "training.weight_decay": 0.01}
    tuned = {**raw, "tune": {"parameters": {p: {"space": "choice", "values": [v]}
                                            for p, v in params.items()}}}
    resolved = load_config(tuned)  # every path names a key of the resolved config
    applied = apply_params(raw, params, resolved.model_dump(mode="json", exclude={"tune"}))
    assert applied["fusion"] == {"type": "film", "hidden": [32]}
    assert applied["inputs"][1]["encoder"] == {"type": "gru", "hidden_size": 24}
    assert applied["training"]["weight_decay"] == 0.01
    assert raw["inputs"][1]["encoder"] == "gru"  # the original is left alone
    assert load_config(applied).fusion["hidden"] == [32]
