"""Dynamic batching: requests that arrive close together share one forward pass.

Each request is checked and decoded on its own (in a worker thread), then queued as a *job* of
one or more rows. A single batching task takes the oldest job and keeps adding queued jobs until
the batch holds ``max_batch_size`` rows or ``max_wait_ms`` has passed since it started, then runs
the forward pass in a dedicated thread while the next batch gathers. When many jobs queued up
while the model was busy, they go at once (the model is the bottleneck then; waiting would
leave it idle). Otherwise the batch waits only when more requests are expected: while others are
being decoded, or while the batch holds fewer rows than the number of requests recently open at
once (a peak that halves every second), since clients that just got their answers tend to send
the next request. A lone client is not held back for company that is not coming, so a quiet
server answers as fast as the plain pipeline.

The queue is bounded (:class:`Overloaded`, answered 429) and every request has a deadline
(:class:`TimedOut`, answered 503); a job whose deadline passed is skipped, not computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .inputs import Prepared
from .settings import DEFAULTS

log = logging.getLogger("mmfuse.serve")


class Overloaded(Exception):
    """The queue is full; the client should retry later (429)."""


class TimedOut(Exception):
    """The request did not finish within its deadline (503)."""


@dataclass
class _Job:
    prepared: Prepared
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)
    abandoned: bool = False


RunBatch = Callable[[list[Prepared]], list[list[dict]]]
Observe = Callable[[int, list[float], float], None]  # rows, each job's queue wait, forward s


class DynamicBatcher:
    """Groups queued jobs into batches of at most ``max_batch_size`` rows.

    The defaults are the server's (:data:`~mmfuse.serve.settings.DEFAULTS`).

    Args:
        run: computes the outputs of a list of jobs in one forward pass (in a worker thread);
            returns one list of row outputs per job.
        max_batch_size: rows per forward pass (a single larger job runs alone).
        max_wait_ms: longest a batch waits for more jobs once it has one.
        max_queue: requests admitted (being decoded or queued) before new ones get 429.
        observe: called after each batch with its rows, its jobs' queue waits and the seconds
            its forward pass took (metrics).
        workers: forward passes that may run at once, each on its own thread.
        share_cores: called on the forward thread before each pass with the number of passes
            running then, to split the cores between them (e.g. torch's threads): a lone pass
            gets them all.
    """

    def __init__(self, run: RunBatch, max_batch_size: int = DEFAULTS.max_batch_size,
                 max_wait_ms: float = DEFAULTS.max_wait_ms, max_queue: int = DEFAULTS.max_queue,
                 observe: Observe | None = None, workers: int = DEFAULTS.workers,
                 share_cores: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.observe = observe
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None  # a job that did not fit in the previous batch
        self._waiting = 0  # requests queued or in a forward pass
        self._peak = 0.0  # recent most requests open at once, halving every second
        self._peak_at = 0.0
        self._preparing = 0
        self._task: asyncio.Task | None = None
        self.workers = workers
        self.share_cores = share_cores
        self._running = 0  # forward passes in progress
        self._slots: asyncio.Semaphore | None = None
        self._batches: set[asyncio.Task] = set()
        # one thread per worker, and a pass goes to the first idle one: a lone pass always
        # runs on the first thread, so its wide OpenMP team is not idle (and spinning) on
        # one thread while a second wide team starts on another. Alternating threads made
        # a generating model's passes twice as slow (benchmarks/results/serve_chat.md).
        self._executors = [ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix=f"mmfuse-forward-{i}")
                           for i in range(workers)]
        self._busy = [False] * workers
        self.forward_executor = self._executors[0]

    @property
    def pending(self) -> int:
        """Requests admitted and not yet in a batch."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return self._preparing + queued + (self._carry is not None)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._task = asyncio.create_task(self._loop(), name="mmfuse-batcher")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the batching loop died", exc_info=task.exception())

    @property
    def alive(self) -> bool:
        """Whether the batching loop is running (``/health`` reports it)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._batches:  # let the passes in progress answer their clients
            await asyncio.gather(*self._batches, return_exceptions=True)
        left = [self._carry] if self._carry is not None else []
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            if not job.future.done():
                job.future.set_exception(TimedOut("the server is shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def in_forward_thread(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on a forward thread. Loading the model there keeps torch off other
        threads: each thread that calls torch gets its own OpenMP team, and idle teams on the
        same cores slow every forward pass down."""
        return await asyncio.get_running_loop().run_in_executor(self.forward_executor, function)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place while a request is decoded, or raise :class:`Overloaded` when full.

        The batcher counts admitted requests, so it knows more rows are on their way."""
        if self.pending >= self.max_queue:
            raise Overloaded(f"{self.pending} requests are waiting (the limit is "
                             f"{self.max_queue}); retry shortly")
        self._preparing += 1
        self._note_open()
        try:
            yield
        finally:
            self._preparing -= 1

    def _recent_peak(self) -> float:
        """The most requests open at once, halving for every second since it was seen."""
        return self._peak * 0.5 ** (time.perf_counter() - self._peak_at)

    def _note_open(self) -> None:
        self._peak = max(self._recent_peak(), self._preparing + self._waiting)
        self._peak_at = time.perf_counter()

    def _expected_rows(self) -> int:
        """Rows worth waiting for: the recent peak of open requests, at most a full batch."""
        return min(self.max_batch_size, max(1, int(self._recent_peak())))

    async def submit(self, prepared: Prepared, timeout: float) -> list[dict]:
        """Queue a decoded request and wait for its outputs (one dict per row)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        job = _Job(prepared, future)
        self._queue.put_nowait(job)
        self._waiting += 1
        self._note_open()
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(timeout, 0.0))
        except asyncio.CancelledError:  # the client left: a queued job is skipped
            job.abandoned = True
            raise
        except asyncio.TimeoutError:
            job.abandoned = True
            raise TimedOut(f"no answer within {timeout:.1f} s; the server is busy, "
                           "retry shortly") from None
        finally:
            self._waiting -= 1

    async def _loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # a forward thread is free
            batch = await self._gather()
            batch = [j for j in batch if not j.abandoned and not j.future.done()]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[_Job]) -> None:
        assert self._slots is not None
        started = time.perf_counter()
        waits = [started - j.queued_at for j in batch]
        self._running += 1
        worker = self._busy.index(False)  # a slot was free, so a thread is
        self._busy[worker] = True
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executors[worker], self._run_safely, [j.prepared for j in batch],
                self._running)
        except Exception:  # the executor itself failed: no job may be left waiting
            log.exception("running a batch failed")
            results = [RuntimeError("the model failed on this request")] * len(batch)
        finally:
            self._running -= 1
            self._busy[worker] = False
            self._slots.release()
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self.observe is not None:
            self.observe(sum(j.prepared.rows for j in batch), waits,
                         time.perf_counter() - started)

    async def _gather(self) -> list[_Job]:
        """The next batch: the oldest job plus whatever arrives within the wait."""
        assert self._queue is not None
        # when jobs for at least half the expected rows queued up during the last forward pass
        # (a job has a row or more), they go at once: the model is the bottleneck then, and
        # waiting would only leave it idle
        expected = self._expected_rows()
        queued = self._queue.qsize() + (self._carry is not None)
        backlog = queued > 0 and 2 * queued >= expected
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.prepared.rows
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                coming = self._preparing > 0 or rows < expected
                if backlog or not coming or remaining <= 0:
                    break  # nothing else is expected, or waited long enough
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                    break
            else:
                job = self._queue.get_nowait()
            full = rows + job.prepared.rows > self.max_batch_size
            if full or job.prepared.key != first.prepared.key:  # other generation settings
                self._carry = job  # it goes first in the next batch
                break
            batch.append(job)
            rows += job.prepared.rows
        return batch

    def _run_safely(self, jobs: list[Prepared], running: int = 1) -> list[Any]:
        """Run a batch; if it fails, run its jobs one by one so one bad job fails alone."""
        try:
            if self.share_cores is not None:
                self.share_cores(running)
            return self.run(jobs)
        except Exception:
            if len(jobs) == 1:
                log.exception("the forward pass failed")
                return [RuntimeError("the model failed on this request")]
        results: list[Any] = []
        for job in jobs:
            try:
                results.append(self.run([job])[0])
            except Exception:
                log.exception("the forward pass failed")
                results.append(RuntimeError("the model failed on this request"))
        return results
