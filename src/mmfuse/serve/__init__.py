"""Serving a trained model over HTTP: ``mmfuse serve RUN_DIR``.

:func:`create_app` builds the FastAPI app (routes in ``app.py``, batching in ``batcher.py``,
request checks in ``inputs.py``); :func:`serve` runs it with uvicorn.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MmfuseError, require


def load_service(source: str | Path, runtime: str = "torch", limits=None):
    """Load a run directory or bundle (``torch``) or an ONNX export (``onnx``) as a Service."""
    from ..api import Model
    from .inputs import Limits
    from .service import Service

    if runtime == "torch":
        model = Model.load(source)
    elif runtime == "onnx":
        from ..export import load_exported

        model = load_exported(source)
    else:
        raise MmfuseError(f"unknown runtime {runtime!r}; use torch or onnx")
    return Service(model, limits or Limits(), runtime, str(source))


def create_app(*args, **kwargs):
    """See :func:`mmfuse.serve.app.create_app`."""
    require("fastapi", "serve", "serving a model over HTTP")
    from .app import create_app as build

    return build(*args, **kwargs)


def serve(source: str | Path, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          settings=None, log_level: str = "info") -> None:
    """Run the server until interrupted; the model loads while the server already answers."""
    uvicorn = require("uvicorn", "serve", "serving a model over HTTP")
    from .app import ServeSettings

    settings = settings or ServeSettings()
    app = create_app(lambda: load_service(source, runtime, settings.limits), settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
