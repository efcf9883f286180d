"""A rich progress bar per epoch: loss, accuracy and examples per second as it trains."""

from __future__ import annotations

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
