"""The HTTP app: FastAPI routes over a :class:`ServerState` (the model, batcher and metrics).

Where each part lives:

- ``routes_predict.py``: ``POST /v1/predict`` (a multipart form, one field per input) and
  ``POST /v1/predict/batch`` (JSON rows, files base64-encoded; bodies read by
  ``request_bodies.py``);
- ``routes_model.py``: ``GET /health`` (200 once the model is loaded, 503 before),
  ``GET /v1/model``, ``GET /openapi.json`` (``openapi.py``) and ``GET /metrics`` (Prometheus);
- ``routes_chat.py``: OpenAI's ``POST /v1/chat/completions`` (plain or streamed) and
  ``GET /v1/models``, on any model (requests mapped to its inputs by ``chat.py``);
- ``page.py``: ``GET /``, the web page;
- ``state.py``: what the routes share, and the API key check;
- ``error_handlers.py`` and ``body_limit.py``: every refusal is JSON
  ``{"error": {"status", "field", "message"}}`` with a 4xx status (OpenAI's error shape on
  the OpenAI routes);
- ``settings.py``: every default.

The model is loaded in the background so ``/health`` can say when it is ready.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from . import page, routes_chat, routes_model, routes_predict
from .body_limit import BodyLimit
from .error_handlers import add_error_handlers
from .metrics import MetricsMiddleware
from .service import Service
from .settings import ServeSettings
from .state import ServerState

__all__ = ["ServeSettings", "create_app"]


def create_app(load: Service | Callable[[], Service],
               settings: ServeSettings | None = None) -> FastAPI:
    """The app for a loaded service, or for a function that loads one.

    Given a function, the app starts answering at once and loads the model in a worker thread;
    ``/health`` answers 503 until it is ready (and names the error if loading failed).
    """
    server = ServerState(load, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="mmfuse", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=server.settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)  # outermost: sees every status
    add_error_handlers(app)
    app.router.routes.extend(routes_predict.ROUTES)
    for routes in (routes_model, routes_chat, page):
        app.include_router(routes.router)
    return app
