"""The ``mmfuse`` command: train, evaluate, predict, serve, export, datasets, list, tune, report,
explain, demo.

Every verb prints human-readable output; ``--json`` prints one JSON object instead. Errors a user
can fix (bad config, bad table, altered bundle) print one clear message and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from .cli_common import DeviceOption, JsonFlag, err, out, print_json
from .cli_serve import export, serve
from .errors import MmfuseError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Build, train, evaluate and deploy multimodal models.")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="model config (YAML)")],
    data: Annotated[str, typer.Option("--data", help="training table (CSV, JSONL, Parquet, "
                                      "a folder of shards, WebDataset shards, a URL)")],
    out_dir: Annotated[Path, typer.Option("--out", help="run directory to write")],
    valid: Annotated[str | None, typer.Option("--valid", help="validation table")] = None,
    data_root: Annotated[Path | None, typer.Option(help="folder file paths start from")] = None,
    threads: Annotated[int | None, typer.Option(
        help="torch threads per process (default: usable CPUs / processes)")] = None,
    device: DeviceOption = None,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="train in N processes (torch.distributed.run)")] = 1,
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue the run in --out from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="replace the run --out already holds")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Train a model from CONFIG on a table; writes RUN_DIR with the best bundle."""
    from .api import Model
    from .config import load_config
    from .training import distributed

    resolved = load_config(config)  # validated once, before any data is read or process starts
    if nproc > 1:  # the same command in N processes, started by torch.distributed.run
        options = {"--valid": valid, "--data-root": data_root, "--threads": threads,
                   "--device": device}
        argv = ["train", str(config), "--data", str(data), "--out", str(out_dir)]
        argv += [x for k, v in options.items() if v is not None for x in (k, str(v))]
        argv += [flag for flag, on in (("--resume", resume), ("--overwrite", overwrite),
                                       ("--json", as_json)) if on]
        code = distributed.launch(nproc, argv)
        if code:
            raise MmfuseError(f"training in {nproc} processes failed (exit status {code}); "
                              "the first error is printed above")
        return
    model = Model(resolved)
    ranks = distributed.from_env()
    try:
        summary = model.fit(data, valid, out=out_dir, data_root=data_root, threads=threads,
                            progress=not as_json, device=device, resume=resume,
                            overwrite=overwrite)
    finally:
        distributed.shutdown()
    if not ranks.main:
        return
    if as_json:
        print_json({"run_dir": str(out_dir), **summary})
        return
    best = summary["best"]
    out.print(f"trained {summary['epochs']} epoch(s) in {summary['seconds']:.1f}s "
              f"on {summary['train_rows']} rows with {summary['processes']} process(es) x "
              f"{summary['threads']} thread(s) on {summary['device']}; "
              f"best epoch {summary['best_epoch']}"
              + (f": valid accuracy {best['valid_accuracy']:.4f}" if "valid_accuracy" in best
                 else ""))
    if summary["interrupted"]:
        out.print("[yellow]interrupted: kept the best model so far and wrote a checkpoint; "
                  "--resume continues[/yellow]")
    out.print(f"model bundle: {out_dir / 'model'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="what 'mmfuse train --out' wrote")],
    data: Annotated[str | None, typer.Option("--data", help="labelled table")] = None,
    by: Annotated[str | None, typer.Option("--by", help="also report per value of COLUMN")] = None,
    data_root: Annotated[Path | None, typer.Option(help="folder file paths start from")] = None,
    drop: Annotated[list[str] | None, typer.Option(
        "--drop", help="remove input NAME from every row (repeatable)")] = None,
    device: DeviceOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Metrics of a trained model on a table (default: its validation data)."""
    from .api import Model

    model = Model.load(run_dir, device or "auto")
    table = data if data is not None else _validation_table(run_dir)
    result = model.evaluate(table, by=by, data_root=data_root, drop=drop)
    if as_json:
        print_json(result)
    else:
        print_evaluation(result, by)


def _validation_table(run_dir: Path):
    from .data.table import read_table

    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise MmfuseError(f"{run_dir} has no run.json; pass --data TABLE")
    info = json.loads(info_path.read_text())
    if info.get("valid"):
        return read_table(info["valid"], info.get("data_root"))
    if info.get("train") and info.get("held_out_rows"):
        return read_table(info["train"], info.get("data_root")).subset(info["held_out_rows"])
    raise MmfuseError(f"{run_dir} was trained without validation data; pass --data TABLE")


def print_evaluation(result: dict, by: str | None) -> None:
    """A table per output, overall, its baseline (when it has one) and per group; then the
    heads that classic predictors replace and the predictors not served."""
    notes = {"outputs": "", "heads": " (the head its predictor replaces)",
             "predictors": " (a predictor fitted, not served)"}
    for section, note in notes.items():
        for name, metrics in result.get(section, {}).items():
            columns = [k for k, v in metrics.items() if not isinstance(v, dict)]
            table = RichTable(title=f"{name}{note}: {result['n']} rows")
            table.add_column(by or "")
            table.add_column("n", justify="right")
            for key in columns:
                table.add_column(key.replace("_", " "), justify="right")
            rows = [("all", result["n"], metrics)]
            if isinstance(metrics.get("baseline"), dict):
                rows.append(("baseline", result["n"], metrics["baseline"]))
            rows += [(g, v["n"], v[section][name]) for g, v in result.get("groups", {}).items()]
            for group, n, m in rows:
                table.add_row(str(group), str(n), *(f"{m[key]:.4f}" if key in m else "-"
                                                    for key in columns))
            out.print(table)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="what 'mmfuse train --out' wrote")],
    values: Annotated[list[str], typer.Option(
        "--set", help="NAME=VALUE per input; an input left out counts as missing")],
    device: DeviceOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Predict the outputs for one example given as --set NAME=VALUE pairs."""
    from .api import Model

    model = Model.load(run_dir, device or "auto")
    row = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise MmfuseError(f"--set {item!r}: expected NAME=VALUE, e.g. --set question='...'")
        row[name] = value
    known = [i.name for i in model.config.inputs]
    unknown = [n for n in row if n not in known]
    if unknown:  # an input left out is missing in this row (the fusion masks it out)
        raise MmfuseError(f"--set names must be the model's inputs: {', '.join(known)}; "
                          f"unknown: {', '.join(unknown)}")
    outputs = model.predict([row])[0]
    if as_json:
        print_json({"outputs": outputs})
        return
    for name, result in outputs.items():
        out.print(f"[bold]{name}[/bold]: {result['prediction']}")
        for label, p in result.get("probabilities", {}).items():
            out.print(f"  {label:>20} {p:7.4f} {'█' * round(p * 40)}")
        for hypothesis in result.get("hypotheses", []):
            out.print(f"  {hypothesis['score']:9.4f}  {hypothesis['text']}")


app.command()(serve)
app.command()(export)


@app.command()
def datasets(
    name: Annotated[str, typer.Argument(
        help="sort-of-clevr, av-digits, moving-shapes, spoken-numbers, photo-views or "
        "products")],
    out_dir: Annotated[Path, typer.Argument(help="folder to write")],
    train_size: Annotated[int | None, typer.Option(
        "--train", help="training images (sort-of-clevr, default 9800; photo-views 800), rows "
        "(av-digits, default 3000; products 2000) or clips (moving-shapes 24000, "
        "spoken-numbers 4000)")] = None,
    test_size: Annotated[int | None, typer.Option(
        "--test", help="test images (default 200; photo-views 400), rows (1000; products 500) "
        "or clips (300, 500)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    missing: Annotated[float | None, typer.Option(
        "--missing", metavar="FRACTION",
        help="av-digits only: share of rows missing the image or the audio (default 0.1)")]
    = None,
    form: Annotated[str, typer.Option(
        "--format", help="csv (tables of paths beside the files), parquet (the files inside, "
        "Hugging Face layout) or webdataset (tar shards)")] = "csv",
    shard_size: Annotated[int, typer.Option(min=1, help="samples per WebDataset shard")] = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Generate a built-in dataset: sort-of-clevr, av-digits, moving-shapes, spoken-numbers,
    photo-views or products."""
    from .datasets import DATASETS, generate_dataset
    from .datasets.formats import FORMATS, convert

    if name not in DATASETS:
        raise MmfuseError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if missing is not None and name != "av-digits":
        raise MmfuseError(f"--missing applies only to av-digits, not {name}; drop --missing")
    if form not in FORMATS:
        raise MmfuseError(f"--format {form!r}: use one of {', '.join(FORMATS)}")
    try:
        summary, line = generate_dataset(name, out_dir, train_size, test_size, seed, missing)
    except ValueError as exc:
        raise MmfuseError(str(exc)) from None
    summary["tables"] = convert(Path(out_dir), form, shard_size)
    line += f"; tables: {', '.join(summary['tables'])}"
    if as_json:
        print_json(summary)
    else:
        out.print(line)


@app.command("list")
def list_components(
    kind: Annotated[str, typer.Argument(help="fusions, encoders, heads, modalities or "
                                        "outputs")],
    as_json: JsonFlag = False,
) -> None:
    """List the registered fusions, encoders, heads, modalities (input types, with their
    preprocess options) or outputs (output types, with theirs)."""
    from .registry import ENCODERS, FUSIONS, HEADS, MODALITIES, OUTPUTS

    registries = {"fusions": FUSIONS, "encoders": ENCODERS, "heads": HEADS,
                  "modalities": MODALITIES, "outputs": OUTPUTS}
    if kind not in registries:
        raise MmfuseError(f"unknown kind {kind!r}; choose one of: {', '.join(registries)}")
    from .config import encoder_modalities

    entries = registries[kind].entries()

    def inputs(entry) -> list[str]:  # the input types an encoder reads
        return list(encoder_modalities(entry.builder)) if kind == "encoders" else []

    if as_json:
        print_json({kind: [{"name": e.name, "summary": e.summary,
                             **({"inputs": inputs(e)} if kind == "encoders" else {}),
                             "options": e.options.model_json_schema().get("properties", {})}
                            for e in entries]})
        return
    table = RichTable(title=kind)
    table.add_column("name")
    if kind == "encoders":
        table.add_column("inputs")
    table.add_column("summary")
    table.add_column("options")
    for e in entries:
        row = [e.name, *([", ".join(inputs(e))] if kind == "encoders" else []), e.summary]
        table.add_row(*row, ", ".join(e.options.model_fields))
    out.print(table)


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="model config (YAML) with a tune: section")],
    data: Annotated[str, typer.Option("--data", help="training table")],
    out_dir: Annotated[Path, typer.Option("--out", help="study folder (rerun to resume)")],
    trials: Annotated[int, typer.Option(
        "--trials", min=1, help="the study's total trials, finished, pruned and failed alike")],
    valid: Annotated[str | None, typer.Option("--valid", help="validation table")] = None,
    minutes: Annotated[float | None, typer.Option(
        "--minutes", min=0.01, help="time budget of the whole study")] = None,
    jobs: Annotated[int, typer.Option(
        "--jobs", min=1, help="trials in parallel, splitting the cores between them")] = 1,
    data_root: Annotated[Path | None, typer.Option(help="folder file paths start from")] = None,
    storage: Annotated[str | None, typer.Option(
        help="database URL of a study shared by workers on several machines (SQLAlchemy, "
        "e.g. postgresql+psycopg://user:pw@host/db)")] = None,
    study: Annotated[str, typer.Option(help="the study's name in --storage")] = "mmfuse-tune",
    heartbeat: Annotated[int, typer.Option(
        min=1, help="seconds between a trial's heartbeats in --storage (a trial silent for "
        "twice that is failed and retried)")] = 60,
    as_json: JsonFlag = False,
) -> None:
    """Search the config's tune: space with Optuna; writes trials.csv, best.yaml and best/."""
    from .tuning import run_tune
    from .tuning.shared import SharedStudy

    shared = SharedStudy(storage, study, heartbeat) if storage else None
    summary = run_tune(config, data, out_dir, trials, valid=valid, minutes=minutes, jobs=jobs,
                       data_root=data_root, live=not as_json, shared=shared)
    if as_json:
        print_json(summary)
        return
    out.print(f"{summary['trials']} trial(s) in {out_dir}: best {summary['metric']} "
              f"{summary['best_value']:.4f} (trial {summary['best_trial']}); "
              f"config: {out_dir / 'best.yaml'}, run: {summary['best_run']}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="what 'mmfuse train --out' wrote")],
    out_path: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    data: Annotated[str | None, typer.Option(
        "--data", help="labelled table (default: the run's validation data)")] = None,
    by: Annotated[str | None, typer.Option("--by", help="also report per value of COLUMN")] = None,
    data_root: Annotated[Path | None, typer.Option(help="folder file paths start from")] = None,
    as_json: JsonFlag = False,
) -> None:
    """One self-contained HTML report of a run: curves, metrics, plots, a gallery."""
    from .report import write_report

    table = data if data is not None else _validation_table(run_dir)
    summary = write_report(run_dir, out_path, table, by=by, data_root=data_root)
    if as_json:
        print_json(summary)
        return
    out.print(f"wrote {out_path} ({summary['bytes'] / 1e6:.2f} MB, "
              f"{len(summary['sections'])} sections)")


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="what 'mmfuse train --out' wrote")],
    data: Annotated[str, typer.Option("--data", help="labelled table")],
    rows: Annotated[str | None, typer.Option(
        "--rows", help="rows to attribute, e.g. 0,5,9 (default: the first 5)")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="folder for the heat-map PNGs")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="auto (default: the fusion's attention where it has one, integrated "
        "gradients elsewhere), integrated_gradients or attention")] = None,
    importance: Annotated[bool, typer.Option(
        "--importance/--no-importance", help="measure modality importance over the whole "
        "table (needs its labels)")] = True,
    data_root: Annotated[Path | None, typer.Option(help="folder file paths start from")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Which input, and which of its tokens, drove the predictions."""
    from .api import Model
    from .explain.run import explain_run, print_explanation, row_numbers

    model = Model.load(run_dir)
    result = explain_run(model, data, row_numbers(rows), out_dir, data_root=data_root,
                         method=method, importance=importance)
    if as_json:
        print_json(result)
    else:
        print_explanation(result, out)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the dataset is (generated if missing)")]
    = Path("data/sort-of-clevr"),
    out_dir: Annotated[Path, typer.Option("--out", help="run directory")] = Path("runs/demo"),
    config: Annotated[Path | None, typer.Option(
        help="config to train (default: examples/sort_of_clevr_best.yaml)")] = None,
    minutes: Annotated[float | None, typer.Option(
        help="training time budget; replaces the config's training.max_minutes")] = 10.0,
) -> None:
    """Generate Sort-of-CLEVR if missing, train the best example config, print test accuracy."""
    from .demo import run_demo

    run_demo(data_dir, out_dir, config, out, minutes)


def main() -> None:
    """Entry point: run the app, turning user errors into one clear message and exit code 2."""
    from rich.text import Text

    from .cli_errors import click_exception_types, usage_message

    usage_errors, click_errors, aborts = click_exception_types()
    try:
        app(standalone_mode=False, prog_name="mmfuse")
    except MmfuseError as exc:
        err.print(Text("error: ", style="bold red") + Text(str(exc)))
        sys.exit(2)
    except (KeyboardInterrupt, *aborts):
        err.print("interrupted")
        sys.exit(130)
    except usage_errors as exc:  # a misspelt command or option, a missing argument
        sys.stderr.write(usage_message(exc) + "\n")
        sys.exit(2)
    except click_errors as exc:  # other click errors: their own message and code
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
