"""The dynamic batcher on its own, with a fake forward pass that records its batches."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mmfuse.serve.batcher import DynamicBatcher, Overloaded, TimedOut
from mmfuse.serve.inputs import Prepared


def job(tag: str, rows: int = 1) -> Prepared:
    return Prepared({"x": [f"{tag}.{i}" for i in range(rows)]}, rows)


class Recorder:
    """A forward pass that echoes its rows, records each batch, and can be held or fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: str | None = None

    def __call__(self, jobs: list[Prepared]) -> list[list[dict]]:
        self.gate.wait(5)
        rows = [v for j in jobs for v in j.values["x"]]
        self.batches.append(rows)
        if self.fail_on is not None and any(self.fail_on in r for r in rows):
            raise ValueError("boom")
        return [[{"echo": v} for v in j.values["x"]] for j in jobs]


def run_async(coroutine):
    return asyncio.run(coroutine)


async def started(recorder: Recorder, **options) -> DynamicBatcher:
    options.setdefault("workers", 1)  # one forward thread: batches form one after another
    batcher = DynamicBatcher(recorder, **options)
    await batcher.start()
    return batcher


async def submit(batcher: DynamicBatcher, prepared: Prepared, timeout: float = 5.0):
    with batcher.admit():
        await asyncio.sleep(0)  # decoding happens here in the server
    return await batcher.submit(prepared, timeout)


async def held_burst(jobs: list[Prepared], max_batch_size: int) -> tuple[Recorder, list]:
    """Submit ``jobs`` at once while the model holds the first batch, so the others queue up
    behind it; then let the model run and collect every job's outputs."""
    recorder = Recorder()
    recorder.gate.clear()
    batcher = await started(recorder, max_batch_size=max_batch_size, max_wait_ms=50)
    tasks = [asyncio.create_task(submit(batcher, j)) for j in jobs]
    await asyncio.sleep(0.1)
    recorder.gate.set()
    results = await asyncio.gather(*tasks)
    await batcher.stop()
    return recorder, results


def test_concurrent_requests_share_batches_up_to_the_maximum():
    recorder, results = run_async(held_burst([job(f"r{i}") for i in range(9)], 4))
    assert [r[0]["echo"] for r in results] == [f"r{i}.0" for i in range(9)]
    assert all(len(b) <= 4 for b in recorder.batches)
    assert len(recorder.batches) <= 4  # 9 rows in batches of up to 4, not 9 passes
    assert sorted(r for b in recorder.batches for r in b) == sorted(f"r{i}.0" for i in range(9))


def test_multi_row_jobs_are_kept_whole_and_in_order():
    jobs = [job(t, n) for t, n in (("a", 3), ("b", 3), ("c", 2), ("d", 7))]
    recorder, results = run_async(held_burst(jobs, 5))
    assert [len(r) for r in results] == [3, 3, 2, 7]
    assert results[3][6] == {"echo": "d.6"}
    for batch in recorder.batches:  # no job is split across batches
        tags = [r.split(".")[0] for r in batch]
        assert all(tags.count(t) == {"a": 3, "b": 3, "c": 2, "d": 7}[t] for t in set(tags))
    assert ["d.0", "d.1", "d.2", "d.3", "d.4", "d.5", "d.6"] in recorder.batches  # alone


def test_a_lone_request_does_not_wait_for_company():
    """With nothing else being decoded and no recent stream of arrivals, a request is run at
    once, not after max_wait_ms."""
    async def scenario():
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=32, max_wait_ms=500)
        begin = time.perf_counter()
        await submit(batcher, job("solo"))
        elapsed = time.perf_counter() - begin
        await batcher.stop()
        return elapsed

    assert run_async(scenario()) < 0.25  # far below the 0.5 s wait it would otherwise take


def test_clients_that_come_back_fill_the_next_batch():
    """Eight clients, each sending its next request 2 to 9 ms after its answer, to a slow model:
    between batches no request is being decoded, yet the batcher waits for the clients it has
    recently seen and runs full batches instead of alternating half ones."""
    async def scenario():
        recorder = Recorder()
        batcher = await started(recorder, max_batch_size=8, max_wait_ms=100)
        original = recorder.__call__

        def slow(jobs):
            time.sleep(0.02)
            return original(jobs)

        batcher.run = slow

        async def client(c: int) -> None:
            for k in range(5):
                await submit(batcher, job(f"c{c}-{k}"))
                await asyncio.sleep(0.002 + c / 1000)

        await asyncio.gather(*(client(c) for c in range(8)))
        await batcher.stop()
        return recorder

    recorder = run_async(scenario())
    sizes = [len(b) for b in recorder.batches]
    assert sum(sizes) == 40 and max(sizes) <= 8
    assert len(sizes) <= 7, sizes  # five rounds of full batches, give or take a split one


def test_a_backlog_goes_at_once():
    """Jobs that queued up while the model was busy do not wait for more: the model is the
    bottleneck then, and waiting would leave it idle."""
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = await started(recorder, max_batch_size=32, max_wait_ms=3000)
        first = asyncio.create_task(submit(batcher, job("first")))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(submit(batcher, job(f"q{i}"))) for i in range(6)]
        await asyncio.sleep(0.05)
        begin = time.perf_counter()
        recorder.gate.set()
        await asyncio.gather(first, *queued)
        elapsed = time.perf_counter() - begin
        await batcher.stop()
        return recorder, elapsed

    recorder, elapsed = run_async(scenario())
    assert [len(b) for b in recorder.batches] == [1, 6]
    assert elapsed < 1.5  # not the 3 s a waiting batch could take


def test_full_queue_is_refused():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = await started(recorder, max_batch_size=1, max_queue=2)
        first = asyncio.create_task(submit(batcher, job("a")))
        await asyncio.sleep(0.05)  # "a" is in the forward pass; two more fill the queue
        queued = [asyncio.create_task(submit(batcher, job(t))) for t in "bc"]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="retry"):
            with batcher.admit():
                pass
        recorder.gate.set()
        await asyncio.gather(first, *queued)
        await batcher.stop()

    run_async(scenario())


def test_timed_out_jobs_are_skipped_not_computed():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = await started(recorder, max_batch_size=1)
        first = asyncio.create_task(submit(batcher, job("slow")))
        await asyncio.sleep(0.05)
        with pytest.raises(TimedOut):
            await submit(batcher, job("abandoned"), timeout=0.1)
        recorder.gate.set()
        await first
        after = await submit(batcher, job("later"))
        await batcher.stop()
        return recorder, after

    recorder, after = run_async(scenario())
    assert after == [{"echo": "later.0"}]
    assert all("abandoned.0" not in b for b in recorder.batches)


def test_a_failing_job_fails_alone():
    async def scenario():
        recorder = Recorder()
        recorder.fail_on = "bad"
        recorder.gate.clear()
        batcher = await started(recorder, max_batch_size=8, max_wait_ms=50)
        tasks = [asyncio.create_task(submit(batcher, job(t))) for t in ("ok1", "bad", "ok2")]
        await asyncio.sleep(0.1)
        recorder.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return results

    ok1, bad, ok2 = run_async(scenario())
    assert ok1 == [{"echo": "ok1.0"}] and ok2 == [{"echo": "ok2.0"}]
    assert isinstance(bad, RuntimeError)
