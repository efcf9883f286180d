"""The server loads no training code, and every serving default is written once
(``serve/settings.py``)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from mmfuse.serve.batcher import DynamicBatcher
from mmfuse.serve.settings import DEFAULTS

# what only training needs: the epoch loop and its collaborators
TRAINING_LOOP = ["mmfuse.training.loop", "mmfuse.training.recipe", "mmfuse.training.checkpoint",
                 "mmfuse.training.distributed", "mmfuse.training.control",
                 "mmfuse.training.progress", "mmfuse.training.after", "mmfuse.training.metrics"]


def modules_after(code: str) -> list[str]:
    """The ``mmfuse.*`` modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(f"""
        import json, sys
        {code}
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("mmfuse"))))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_server_loads_no_training_loop():
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    loaded = modules_after("import mmfuse.serve.app")
    assert "mmfuse.serve.app" in loaded  # the check itself: the import did happen
    assert [m for m in TRAINING_LOOP if m in loaded] == []
    assert [m for m in loaded if m.startswith("mmfuse.training")] == []


def test_the_cli_reads_its_serve_defaults_from_the_settings():
    from typer.main import get_command

    from mmfuse.cli import app

    options = {p.name: p.default for p in get_command(app).commands["serve"].params}
    limits = DEFAULTS.limits
    assert options["max_batch_size"] == DEFAULTS.max_batch_size
    assert options["max_wait_ms"] == DEFAULTS.max_wait_ms
    assert options["max_queue"] == DEFAULTS.max_queue
    assert options["timeout"] == DEFAULTS.timeout_s
    assert options["decode_threads"] == DEFAULTS.decode_threads
    assert options["workers"] == DEFAULTS.workers
    assert (options["max_body_mb"], options["max_image_pixels"], options["max_media_seconds"],
            options["max_text_chars"], options["max_batch_rows"]) == (
        limits.max_body_mb, limits.max_image_pixels, limits.max_media_seconds,
        limits.max_text_chars, limits.max_batch_rows)


def test_the_batcher_reads_its_defaults_from_the_settings():
    defaults = {name: p.default for name, p in
                inspect.signature(DynamicBatcher.__init__).parameters.items()}
    assert (defaults["max_batch_size"], defaults["max_wait_ms"], defaults["max_queue"],
            defaults["workers"]) == (DEFAULTS.max_batch_size, DEFAULTS.max_wait_ms,
                                     DEFAULTS.max_queue, DEFAULTS.workers)
