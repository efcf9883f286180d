"""``mmfuse demo``: the built-in Sort-of-CLEVR task from data to a results table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from .errors import MmfuseError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_demo(data_dir: Path, out_dir: Path, config: Path | None, console: Console,
             minutes: float | None = None) -> dict:
    """Generate the data if missing, train, evaluate on the test split and print the table.

    ``minutes`` replaces the config's ``training.max_minutes`` (``make demo`` trains the best
    configuration for 10 minutes so that the whole demo fits in 15 on a 2-core machine).
    """
    from .api import Model
    from .config import load_config
    from .datasets.sort_of_clevr import generate_sort_of_clevr

    config = config or EXAMPLES / "sort_of_clevr_best.yaml"
    if not config.is_file():
        raise MmfuseError(f"demo config {config} not found; pass --config PATH")
    resolved = load_config(config)
    if minutes is not None:
        if minutes <= 0:
            raise MmfuseError(f"--minutes must be positive, got {minutes}")
        resolved.training = resolved.training.model_copy(update={"max_minutes": minutes})
    model = Model(resolved)
    if not (data_dir / "train.csv").is_file() or not (data_dir / "test.csv").is_file():
        console.print(f"generating Sort-of-CLEVR into {data_dir} ...")
        generate_sort_of_clevr(data_dir)
    console.print(f"training {config} on {data_dir / 'train.csv'} ...")
    summary = model.fit(data_dir / "train.csv", out=out_dir, progress=True, overwrite=True)
    console.print(f"trained {summary['epochs']} epochs in {summary['seconds']:.0f}s "
                  f"(best epoch {summary['best_epoch']}); bundle in {out_dir / 'model'}")
    by_type = model.evaluate(data_dir / "test.csv", by="qtype")
    by_family = model.evaluate(data_dir / "test.csv", by="family")
    print_demo_table(by_type, by_family, console)
    return {"train": summary, "qtype": by_type, "family": by_family}


def print_demo_table(by_type: dict, by_family: dict, console: Console) -> None:
    """Accuracy beside the majority-answer baseline for every question type and family."""
    table = RichTable(title=f"Sort-of-CLEVR test split ({by_type['n']} questions)")
    for col in ("group", "n", "accuracy", "majority baseline", "beats baseline"):
        table.add_column(col, justify="left" if col == "group" else "right")
    overall = by_type["outputs"]["answer"]
    rows = [("all", by_type["n"], overall)]
    for result in (by_type, by_family):
        rows += [(g, v["n"], v["outputs"]["answer"]) for g, v in result["groups"].items()]
    for group, n, m in rows:
        beats = "yes" if m["accuracy"] > m["majority_baseline"] else "NO"
        table.add_row(group, str(n), f"{m['accuracy']:.1%}", f"{m['majority_baseline']:.1%}",
                      beats)
    console.print(table)
