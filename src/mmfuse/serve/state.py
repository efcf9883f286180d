"""What every route of one server shares: :class:`ServerState`.

It holds the settings, the model once loaded (:class:`Service`), the batcher, the threads that
decode requests and the metrics. It loads the model in the background when given a function
that loads one, and runs a request from its rows to its outputs (:meth:`ServerState.infer`).
The routes find it on ``request.app.state.server`` (:func:`server_of`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request

from .batcher import DynamicBatcher, TimedOut
from .inputs import Prepared, RequestError
from .metrics import Metrics
from .service import Service
from .settings import ServeSettings

log = logging.getLogger("mmfuse.serve")
Rows = list[dict] | Callable[[Service], list[dict]]  # request rows, or how to read them


class ServerState:
    """The model, batcher, decoding threads, metrics and settings of one server.

    Args:
        load: a loaded service, or a function that loads one (run on a forward thread once the
            server starts, so ``/health`` answers 503 until it is ready).
        settings: batching, queue, timeout, limits and API key.
    """

    def __init__(self, load: Service | Callable[[], Service], settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.loaded: Service | None = load if isinstance(load, Service) else None
        self.error: str | None = None  # why loading failed, for /health
        self._load = load
        self._loader: asyncio.Task | None = None
        self.batcher = DynamicBatcher(self._run, settings.max_batch_size, settings.max_wait_ms,
                                      settings.max_queue, self.metrics.observe_batch,
                                      settings.workers, share_cores)
        # a few decoding threads, not a thread per request: more would only fight over the
        # cores and the GIL with the event loop and the forward pass
        self.decoders = ThreadPoolExecutor(settings.decode_threads,
                                           thread_name_prefix="mmfuse-decode") \
            if settings.decode_threads else self.batcher.forward_executor

    def _run(self, jobs: list[Prepared]) -> list[list[dict]]:
        results = self.service().run(jobs)
        steered = [job.steering for job in jobs if job.steering is not None]
        written = sum(c for s in steered for _, c in s.usage)
        if written and self.service().model.pipeline.model.heads[
                steered[0].output].traits.generates:
            self.metrics.generated.inc(written)
        return results

    async def start(self) -> None:
        """Start the batcher, and load the model in the background if it is not loaded."""
        await self.batcher.start()
        if self.loaded is None:
            self._loader = asyncio.create_task(self._load_in_background())

    async def stop(self) -> None:
        """Stop loading, answer or refuse what is queued, and drop the decoding threads."""
        if self._loader is not None:
            self._loader.cancel()
        await self.batcher.stop()
        self.decoders.shutdown(wait=False, cancel_futures=True)

    async def _load_in_background(self) -> None:
        try:
            self.loaded = await self.batcher.in_forward_thread(self._load)
        except Exception as exc:  # reported by /health, so the operator sees why
            log.exception("loading the model failed")
            self.error = str(exc)

    def service(self) -> Service:
        """The loaded model, or a 503 that says it is loading or why loading failed."""
        if self.loaded is None:
            why = f"loading the model failed: {self.error}" if self.error \
                else "the model is still loading; retry shortly"
            raise RequestError(503, None, why)
        return self.loaded

    def authorise(self, request: Request) -> None:
        """Refuse (401) a request without the API key, when the server has one."""
        api_key = self.settings.api_key
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), api_key.encode()):
            raise RequestError(401, "Authorization", "missing or wrong API key; send the header "
                               "'Authorization: Bearer KEY'")

    async def decode(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on a decoding thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.decoders, function, *args)

    async def infer(self, rows: Rows, prefix: str = "", steering: Any = None) -> list[dict]:
        """The outputs of request rows: decoded on a decoding thread, then batched; the whole
        takes at most ``timeout_s`` (else :class:`TimedOut`)."""
        started = time.perf_counter()
        prepared = await self.prepare(rows, prefix, steering)
        return await self.submit(prepared, started)

    async def prepare(self, rows: Rows, prefix: str = "", steering: Any = None) -> Prepared:
        """Check and decode request rows on a decoding thread (a 4xx names what is wrong).

        ``rows`` may be a function that reads them from the body (given the service), so
        parsing and decoding take one trip to the decoding thread."""
        svc, timeout = self.service(), self.settings.timeout_s

        def work() -> Prepared:
            return svc.prepare(rows(svc) if callable(rows) else rows, prefix)

        with self.batcher.admit():
            try:
                prepared = await asyncio.wait_for(self.decode(work), timeout)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                raise TimedOut(f"decoding took over {timeout:g} s") from None
        self.metrics.decode.observe(prepared.seconds)
        prepared.steering = steering
        return prepared

    async def submit(self, prepared: Prepared, started: float) -> list[dict]:
        """Queue decoded rows for a batch; what is left of ``timeout_s`` since ``started``
        bounds the wait."""
        timeout = self.settings.timeout_s
        remaining = timeout - (time.perf_counter() - started)
        if remaining <= 0:
            raise TimedOut(f"decoding took over {timeout:g} s; send smaller files")
        return await self.batcher.submit(prepared, remaining)


def server_of(request: Request) -> ServerState:
    """The state of the server answering ``request``."""
    return request.app.state.server


def authorised(request: Request) -> ServerState:
    """The state of the server answering ``request``, once its API key is checked (401)."""
    server = server_of(request)
    server.authorise(request)
    return server


def share_cores(running: int) -> None:
    """Give this forward thread its share of torch's intra-op threads while ``running`` passes
    run at once (OpenMP's thread count is per calling thread): all of them to a lone pass."""
    import torch

    from ..threads import available_cpus

    threads = max(1, available_cpus() // running)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
