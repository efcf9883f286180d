"""What a run shows and records as it trains: a rich progress bar per epoch (loss, accuracy and
examples per second), the epoch's line of ``metrics.jsonl``, and the share of step time spent
preparing batches."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochProgress:
    """Shows one bar per epoch and a one-line summary when the epoch ends (no-op if disabled)."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def start(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                console=self.console, transient=True)
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=batches, epoch=f"{epoch}/{epochs}",
                                           stats="")

    def advance(self, means: dict, examples_per_second: float) -> None:
        if not self.enabled:
            return
        stats = (f"loss {means['loss']:.4f}  acc {means['accuracy']:.3f}  "
                 f"{examples_per_second:,.0f} ex/s")
        self.progress.update(self.task, advance=1, stats=stats)

    def finish(self, record: dict) -> None:
        if not self.enabled:
            return
        line = (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.3f}")
        if "valid_loss" in record:
            line += f" | valid loss {record['valid_loss']:.4f} acc {record['valid_accuracy']:.3f}"
        line += f" | {record['examples_per_second']:,.0f} ex/s, {record['seconds']:.0f}s"
        self.progress.console.print(line)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def append_record(path: Path | None, record: dict) -> None:
    """Append the epoch's record to ``metrics.jsonl`` (floats to 6 decimals); no-op without one."""
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v
                            for k, v in record.items()}) + "\n")


class StepTimer:
    """Time spent preparing batches against the whole step's (the summary's ``data_share``)."""

    def __init__(self) -> None:
        self.prepare_seconds = 0.0
        self.step_seconds = 1e-9

    def prepared(self, began: float) -> None:
        """A batch prepared since ``began`` (a ``time.perf_counter()`` reading)."""
        self.prepare_seconds += time.perf_counter() - began

    def stepped(self, began: float) -> None:
        """A step taken since ``began``."""
        self.step_seconds += time.perf_counter() - began

    def data_share(self) -> float:
        return round(self.prepare_seconds / self.step_seconds, 4)
