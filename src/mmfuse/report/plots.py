"""The report's plots, drawn with matplotlib's Agg canvas and returned as PNG data URIs.

Figures are made with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg``, never
through ``pyplot``: no GUI backend is ever chosen, nothing is added to pyplot's global list of
open figures, and each figure is cleared as soon as its PNG is written, so drawing many reports
in one process does not grow its memory.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from ..errors import require

DPI = 80
TRAIN, VALID, PERMUTE = "#1f77b4", "#ff7f0e", "#2ca02c"


def new_figure(width: float, height: float, panels: int = 1):
    """A figure on an Agg canvas and its ``panels`` axes side by side."""
    require("matplotlib", "report", "drawing the report's plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    return fig, axes


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only (epochs, token counts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def to_uri(fig) -> str:
    """The figure as a ``data:image/png;base64`` URI; the figure is cleared afterwards."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def learning_curves(records: list[dict], metrics: Sequence[str]) -> str:
    """One panel per metric (``loss``, ``accuracy``): train and validation per epoch."""
    fig, axes = new_figure(4.2 * len(metrics), 3.2, len(metrics))
    epochs = [r["epoch"] for r in records]
    for ax, metric in zip(axes, metrics, strict=True):
        for split, colour in (("train", TRAIN), ("valid", VALID)):
            key = f"{split}_{metric}"
            points = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, color=colour, label=split)
        ax.set_xlabel("epoch")
        integer_ticks(ax.xaxis)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return to_uri(fig)


def confusion(matrix: np.ndarray, labels: list[str]) -> str:
    """A confusion matrix: true label down, predicted label across, counts written in small
    matrices."""
    size = min(10.0, 2.5 + 0.38 * len(labels))
    fig, (ax,) = new_figure(size + 1.0, size)
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, [_short(x) for x in labels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [_short(x) for x in labels], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 12:
        top = matrix.max(initial=1)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > top / 2 else "black")
    return to_uri(fig)


def bars(groups: list[str], series: dict[str, Sequence[float]], ylabel: str,
         title: str = "") -> str:
    """Grouped vertical bars: one group per name in ``groups``, one bar per series."""
    fig, (ax,) = new_figure(min(11.0, 2.5 + 0.45 * len(groups) * len(series)), 3.2)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    colours = (TRAIN, VALID, PERMUTE)
    for k, (name, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(values), width,
               label=name, color=colours[k % len(colours)])
    ax.set_xticks(x, [_short(g) for g in groups], rotation=30 if len(groups) > 6 else 0,
                  ha="right" if len(groups) > 6 else "center", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:  # beside the axes, where it hides no bar
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return to_uri(fig)


def reliability(confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray,
                edges: np.ndarray, ece: float) -> str:
    """A reliability diagram: accuracy per confidence bin against the diagonal, and how many
    rows fall in each bin."""
    fig, (ax, hist) = new_figure(8.4, 3.4, 2)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = counts > 0
    ax.bar(centres[filled], accuracy[filled], width * 0.9, color=TRAIN, label="accuracy")
    ax.plot(confidence[filled], confidence[filled], "o", color=VALID, ms=4,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)",
           ylabel="accuracy", title=f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, counts, width * 0.9, color="grey")
    hist.set(xlim=(0, 1), xlabel="confidence", ylabel="rows", title="rows per bin")
    return to_uri(fig)


def histogram(values: Sequence[float], xlabel: str) -> str:
    """A histogram with integer-wide bins (text lengths)."""
    fig, (ax,) = new_figure(5.0, 2.8)
    top = int(max(values, default=1))
    ax.hist(values, bins=np.arange(0, top + 2) - 0.5, color=TRAIN)
    ax.set(xlabel=xlabel, ylabel="rows")
    integer_ticks(ax.xaxis)
    ax.grid(axis="y", alpha=0.3)
    return to_uri(fig)


def _short(label: str, most: int = 18) -> str:
    """A tick label cut to ``most`` characters."""
    return label if len(label) <= most else label[: most - 1] + "…"
