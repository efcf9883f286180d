"""What the ``mmfuse`` command's modules share: the consoles, the ``--json`` and ``--device``
options, and printing one JSON object."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object")]
DeviceOption = Annotated[str | None, typer.Option(
    "--device", help="auto (CUDA when available), cpu, cuda or cuda:N")]


def print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
