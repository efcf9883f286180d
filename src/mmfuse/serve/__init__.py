"""Serving a trained model over HTTP: ``mmfuse serve RUN_DIR``.

:func:`create_app` builds the FastAPI app (``app.py`` lists where each route lives; batching
in ``batcher.py``, request checks in ``inputs.py``, every default in ``settings.py``);
:func:`serve` runs it with uvicorn, in one process or in several that share the loaded model
(``processes.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MmfuseError, require
from .settings import DEFAULTS, HOST, PORT, RUNTIME, RUNTIMES

if TYPE_CHECKING:
    from .service import Service
    from .settings import Limits, ServeSettings


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default every buffer over a few MB (a batch's activations) is a fresh ``mmap`` whose
    pages fault in on first touch and are unmapped on free, on every forward pass; a server
    reuses the same sizes all day. Keeping them (thresholds of 1 GiB for ``mmap`` and for
    trimming) made batched forward passes of a mid-sized model about 1.4x faster here. Returns
    whether the setting applied (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)
                    and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def load_service(source: str | Path, runtime: str = RUNTIME, limits: Limits | None = None,
                 device: str = DEFAULTS.device) -> Service:
    """Load a run directory or bundle (``torch``, on ``device``) or an ONNX export (``onnx``,
    on the CPU) as a Service."""
    from ..api import Model

    if runtime == "torch":
        model = Model.load(source, device)
    elif runtime == "onnx":
        from ..export import load_exported

        model = load_exported(source)
    else:
        raise MmfuseError(f"unknown runtime {runtime!r}; use one of: {', '.join(RUNTIMES)}")
    from .service import Service

    return Service(model, limits or DEFAULTS.limits, runtime, str(source))


def create_app(*args, **kwargs):
    """See :func:`mmfuse.serve.app.create_app`."""
    require("fastapi", "serve", "serving a model over HTTP")
    from .app import create_app as build

    return build(*args, **kwargs)


def serve(source: str | Path, host: str = HOST, port: int = PORT, runtime: str = RUNTIME,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted; the model loads while the server already answers."""
    uvicorn = require("uvicorn", "serve", "serving a model over HTTP")
    settings = settings or DEFAULTS
    keep_freed_memory()

    def load() -> Service:
        return load_service(source, runtime, settings.limits, settings.device)

    if settings.processes > 1:
        from .processes import serve_processes

        serve_processes(load, host, port, settings, log_level)
        return
    app = create_app(load, settings)
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings, log_level))


def uvicorn_options(settings: ServeSettings, log_level: str) -> dict:
    """How every server process runs uvicorn: no access log, and connections beyond the
    queue's room get uvicorn's 503 before their bodies are read, which bounds the memory that
    request bodies can take."""
    return {"log_level": log_level, "access_log": False,
            "limit_concurrency": settings.max_queue + 64}
