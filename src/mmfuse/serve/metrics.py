"""Prometheus metrics of one server: requests by status, latency, queue wait, batch sizes.

Each app has its own registry, so two servers in one process (tests) keep separate counts.
Under ``mmfuse serve --processes N`` (``processes.py``) every process writes its values to
files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and ``/metrics``
sums them all.
"""

from __future__ import annotations

import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)
ROUTES = ("/", "/health", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch",
          "/v1/chat/completions", "/v1/models")


class Metrics:
    """The counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # the *_created series only repeat the start time
        # several server processes: the folder where prometheus_client keeps their values
        self.shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        self.requests = Counter("mmfuse_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("mmfuse_request_seconds", "time from request to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("mmfuse_queue_wait_seconds",
                                    "time a decoded request waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("mmfuse_batch_rows", "rows per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.forward = Histogram("mmfuse_forward_seconds",
                                 "time of one batched forward pass (encode, model, postprocess)",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.generated = Counter("mmfuse_chat_generated_tokens", "tokens written for chat "
                                 "answers", registry=self.registry)
        self.abandoned = Counter("mmfuse_chat_streams_abandoned", "streamed chat answers whose "
                                 "client left before the end", registry=self.registry)
        self.decode = Histogram("mmfuse_decode_seconds", "time to check and decode a request",
                                buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_batch(self, rows: int, waits: list[float], seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.forward.observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self.shared is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.shared)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by route and final status and times it (pure ASGI, so it sees
    the status of every response, errors included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
