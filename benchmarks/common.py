"""Helpers shared by the benchmark scripts: machine description and Markdown tables."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line describing the CPU, core count and library versions."""
    import torch

    from mmfuse.threads import available_cpus

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; {available_cpus()} usable CPU(s) of {os.cpu_count()}; "
            f"Python {platform.python_version()}; torch {torch.__version__}")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command() -> str:
    """The command line that produced the results."""
    return "python " + " ".join([str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]])
