"""The HTTP app: FastAPI routes over a :class:`Service` and a :class:`DynamicBatcher`.

Routes: ``GET /health`` (200 once the model is loaded, 503 before), ``GET /v1/model``,
``GET /openapi.json`` (the OpenAPI schema of this model's fields: ``openapi.py``),
``POST /v1/predict`` (a multipart form, one field per input), ``POST /v1/predict/batch`` (JSON
rows, files base64-encoded), ``GET /metrics`` (Prometheus) and ``GET /`` (the web page).
Every refusal is JSON ``{"error": {"status", "field", "message"}}`` with a 4xx status; the
model is loaded in the background so ``/health`` can say when it is ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..modalities.kind import modality
from .batcher import DynamicBatcher, Overloaded, TimedOut
from .inputs import Limits, RequestError
from .metrics import Metrics, MetricsMiddleware
from .service import Service

log = logging.getLogger("mmfuse.serve")


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, queues, times out and authenticates."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256  # requests admitted (decoding or queued) before 429
    timeout_s: float = 30.0  # per request, from arrival to answer, else 503
    decode_threads: int = 2  # threads that check and decode requests
    # forward passes at once, splitting the cores between them: on few cores two one-thread
    # passes beat one two-thread pass, and neither stalls when the other's core is borrowed
    workers: int = 2
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    device: str = "cpu"  # where the torch runtime's model runs (auto, cpu, cuda, cuda:N)


def create_app(load: Service | Callable[[], Service],
               settings: ServeSettings | None = None) -> FastAPI:
    """The app for a loaded service, or for a function that loads one.

    Given a function, the app starts answering at once and loads the model in a worker thread;
    ``/health`` answers 503 until it is ready (and names the error if loading failed).
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    state: dict = {"service": load if isinstance(load, Service) else None, "error": None}

    def run(jobs):
        return state["service"].run(jobs)

    batcher = DynamicBatcher(run, settings.max_batch_size, settings.max_wait_ms,
                             settings.max_queue, metrics.observe_batch, settings.workers,
                             share_cores)
    # a few decoding threads, not a thread per request: more would only fight over the cores
    # and the GIL with the event loop and the forward pass
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="mmfuse-decode")

    async def load_in_background() -> None:
        try:
            state["service"] = await batcher.in_forward_thread(load)
        except Exception as exc:  # reported by /health, so the operator sees why
            log.exception("loading the model failed")
            state["error"] = str(exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        loader = None if state["service"] is not None else \
            asyncio.create_task(load_in_background())
        yield
        if loader is not None:
            loader.cancel()
        await batcher.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="mmfuse", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every status

    def service() -> Service:
        if state["service"] is None:
            why = f"loading the model failed: {state['error']}" if state["error"] \
                else "the model is still loading; retry shortly"
            raise RequestError(503, None, why)
        return state["service"]

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), settings.api_key.encode()):
            raise RequestError(401, "Authorization", "missing or wrong API key; send the header "
                               "'Authorization: Bearer KEY'")

    async def infer(rows: list[dict], prefix: str = "") -> list[dict]:
        svc = service()
        started = time.perf_counter()
        with batcher.admit():
            try:
                prepared = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                    decoders, svc.prepare, rows, prefix), settings.timeout_s)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                raise TimedOut(f"decoding took over {settings.timeout_s:g} s") from None
        metrics.decode.observe(prepared.seconds)
        remaining = settings.timeout_s - (time.perf_counter() - started)
        if remaining <= 0:
            raise TimedOut(f"decoding took over {settings.timeout_s:g} s; send smaller files")
        return await batcher.submit(prepared, remaining)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(RequestError(429, None, str(exc)).body(), status_code=429,
                            headers={"Retry-After": "1"})

    @app.exception_handler(TimedOut)
    async def timed_out(request: Request, exc: TimedOut) -> JSONResponse:
        return JSONResponse(RequestError(503, None, str(exc)).body(), status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        body = RequestError(500, None, "internal error; the server log has the details").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}; see GET / or GET /v1/model",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        body = RequestError(exc.status_code, None,
                            message.get(exc.status_code, str(exc.detail))).body()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not batcher.alive:
            return JSONResponse({"status": "failed", "error": "the batching loop stopped"},
                                status_code=503)
        if state["service"] is not None:
            svc = state["service"]
            return JSONResponse({"status": "ok", "runtime": svc.runtime, "source": svc.source})
        status = "failed" if state["error"] else "loading"
        return JSONResponse({"status": status, "error": state["error"]}, status_code=503)

    @app.get("/v1/model")
    async def model_info(request: Request) -> dict:
        authorised(request)
        info = service().describe()
        info["batching"] = {"max_batch_size": settings.max_batch_size,
                            "max_wait_ms": settings.max_wait_ms,
                            "max_queue": settings.max_queue, "timeout_s": settings.timeout_s}
        return info

    @app.get("/openapi.json")
    async def openapi(request: Request) -> JSONResponse:
        authorised(request)
        return JSONResponse(service().openapi(settings.api_key is not None))

    # the predict routes answer with a ready JSONResponse, which skips FastAPI's generic (and
    # per-request costly) response validation and encoding
    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        authorised(request)
        row = await read_form(request, settings.limits)
        return JSONResponse({"outputs": (await infer([row]))[0]})

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        authorised(request)
        svc = service()
        body = await request.body()  # JSON parsing and base64 decoding run off the event loop
        rows = await asyncio.get_running_loop().run_in_executor(
            decoders, parse_batch, body, svc, settings.limits)
        outputs = await infer(rows, "rows[{r}].")
        return JSONResponse({"rows": [{"outputs": o} for o in outputs]})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorised(request)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    html = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(html)

    return app


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so, else as
    soon as the streamed body passes the limit (a client may send no length, or lie)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = RequestError(413, None, f"the request body is over the limit of "
                               f"{self.max_bytes} bytes; send smaller files or raise "
                               "--max-body-mb")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse(refusal.body(), status_code=413)(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await JSONResponse(refusal.body(), status_code=413)(scope, receive, send)


def share_cores(running: int) -> None:
    """Give this forward thread its share of torch's intra-op threads while ``running`` passes
    run at once (OpenMP's thread count is per calling thread): all of them to a lone pass."""
    import torch

    from ..threads import available_cpus

    threads = max(1, available_cpus() // running)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


async def read_form(request: Request, limits: Limits) -> dict:
    """The fields of a multipart (or url-encoded) form: bytes for files, str for text."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise RequestError(415, None, f"expected a multipart/form-data form with one field per "
                           f"input, got content type {content_type or 'none'!r}; for JSON use "
                           "POST /v1/predict/batch")
    try:
        form = await request.form(max_files=64, max_fields=256,
                                  max_part_size=limits.max_body_bytes)
    except (StarletteHTTPException, _BodyTooLarge):
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise RequestError(400, None, f"malformed form data: {exc}") from None
    row: dict = {}
    try:
        for name, value in form.multi_items():
            if name in row:
                raise RequestError(422, name, f"field {name!r} is given more than once")
            row[name] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return row


def parse_batch(body: bytes, service: Service, limits: Limits) -> list[dict]:
    """Rows of a ``{"rows": [...]}`` request with base64 file values decoded to bytes."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, and
        # the ValueError of an integer with more digits than Python converts
        raise RequestError(400, None, f"the body is not valid JSON ({exc}); send "
                           '{"rows": [{"input": value, ...}, ...]}') from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise RequestError(422, "rows", 'expected a JSON object {"rows": [...]} with a list of '
                           "row objects")
    extra = sorted(set(data) - {"rows"})
    if extra:
        raise RequestError(422, extra[0], f"unknown key {extra[0]!r}; only 'rows' is allowed")
    rows = data["rows"]
    if not rows:
        raise RequestError(422, "rows", "no rows given")
    if len(rows) > limits.max_batch_rows:
        raise RequestError(413, "rows", f"{len(rows)} rows is over the limit of "
                           f"{limits.max_batch_rows}; split the request")
    files = {name for name, kind in service.checker.types.items()
             if modality(kind).value == "file"}
    decoded = []
    for r, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{r}]", "each row must be a JSON object of "
                               "{input name: value}")
        out = dict(row)
        for name, value in row.items():
            if name in files and value is not None:
                out[name] = _base64(value, f"rows[{r}].{name}")
        decoded.append(out)
    return decoded


def _base64(value: object, field_name: str) -> bytes:
    """Decode a base64 file value (a ``data:...;base64,`` prefix is allowed)."""
    if not isinstance(value, str):
        raise RequestError(422, field_name, f"expected the file as a base64 string, got "
                           f"{type(value).__name__}")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, field_name, "not valid base64; encode the file's bytes with "
                           "base64 (RFC 4648)") from None
