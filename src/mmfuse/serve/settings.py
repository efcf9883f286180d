"""Every serving default, written once.

``mmfuse serve``'s options, :func:`~mmfuse.serve.serve`, :func:`~mmfuse.serve.app.create_app`
and the :class:`~mmfuse.serve.batcher.DynamicBatcher` all read their defaults from here
(:data:`DEFAULTS`), so changing one means changing one line. This module imports nothing heavy:
the CLI reads it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIMES = ("torch", "onnx")  # what runs the model: PyTorch, or onnxruntime on an export
RUNTIME = "torch"
HOST = "127.0.0.1"  # loopback only; 0.0.0.0 exposes the server
PORT = 8000


@dataclass(frozen=True)
class Limits:
    """What one request may hold; every cap answers 413 when exceeded."""

    max_body_mb: float = 20.0  # a whole request body (all uploads together)
    max_image_pixels: int = 40_000_000  # width x height, checked before the pixels are decoded
    max_media_seconds: float = 60.0  # audio and video, read from the container header
    max_text_chars: int = 2000
    max_batch_rows: int = 64  # rows of one POST /v1/predict/batch

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, queues, times out and authenticates."""

    max_batch_size: int = 32  # rows per forward pass
    max_wait_ms: float = 5.0  # longest a batch waits for more requests
    max_queue: int = 256  # requests admitted (decoding or queued) before 429
    timeout_s: float = 30.0  # per request, from arrival to answer, else 503
    decode_threads: int = 2  # threads that check and decode requests; 0: the forward thread
    # forward passes at once, splitting the cores between them: on few cores two one-thread
    # passes beat one two-thread pass, and neither stalls when the other's core is borrowed
    workers: int = 2
    # server processes forked after the model loads, each on its share of the CPUs: for small
    # models, whose speed HTTP and JSON decide (benchmarks/results/serve_small.md)
    processes: int = 1
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    device: str = "cpu"  # where the torch runtime's model runs (auto, cpu, cuda, cuda:N)
    data_root: str | None = None  # chat requests may read file: URLs under it (else none)


DEFAULTS = ServeSettings()
