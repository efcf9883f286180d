"""A small model served one row per JSON request, against its own in-process batched speed.

A tiny model is where serving costs show: its forward pass takes well under a millisecond per
row, so HTTP, JSON, base64 and the trip through the batcher decide how fast it is served. This
benchmark trains the demo's architecture (``examples/sort_of_clevr_best.yaml``) for one epoch
on a generated Sort-of-CLEVR set (speed does not depend on accuracy), takes one question per
test image (every request carries an image no other request has, so nothing is shared between
rows), and in the same run measures

- **raw**: ``Model.predict`` on batches of 64 of those rows, in this process with the server
  idle: decoding each PNG, tokenising, forward, postprocess. Measured twice per round: with an
  empty decode cache (every image decoded, as the server must) and again with it filled (the
  faster figure, used as the reference);
- **served**: a real ``mmfuse serve`` process on loopback, one row per
  ``POST /v1/predict/batch`` request (the PNG base64-encoded in JSON), from closed-loop
  keep-alive clients at concurrency 1, 16 and 64; the load generator runs in this process on
  the same cores, as a user's benchmark would. Every answer is checked against ``Model.predict``.

Each setup (server options, e.g. ``--processes 2``) is measured between raw rounds, and its
ratio uses the mean of the raw rounds on either side (the machine's speed drifts). Target:
served rows/s at concurrency 16 >= 0.5 of raw.

    python benchmarks/serve_small.py            # writes benchmarks/results/serve_small.md, .json
    python benchmarks/serve_small.py --setup "" --setup "--processes 2" --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import RESULTS, command, machine, markdown_table  # noqa: E402
from serve import load, prepare_run, request_bytes  # noqa: E402

from serving import start_server, stop_server  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "examples/sort_of_clevr_best.yaml"
LEVELS = (1, 16, 64)
RAW_BATCH = 64


def test_rows(data: Path, seed: int = 0) -> list[dict]:
    """One randomly chosen question per test image: ``{image path, question, answer}``."""
    by_image: dict[str, list[dict]] = {}
    with (data / "test.csv").open() as f:
        for row in csv.DictReader(f):
            by_image.setdefault(row["image"], []).append(row)
    rng = random.Random(seed)
    return [{"image": str(data / image), "question": rng.choice(rows)["question"]}
            for image, rows in sorted(by_image.items())]


def raw_round(model, rows: list[dict]) -> dict:
    """Rows/s of ``Model.predict`` on batches of 64: with a fresh decode cache, then again
    with it filled."""
    rates = {}
    previous = os.environ.get("MMFUSE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-cache-") as cache:
        os.environ["MMFUSE_CACHE_DIR"] = cache
        try:
            for name in ("cold", "warm"):
                started = time.perf_counter()
                for i in range(0, len(rows), RAW_BATCH):
                    model.predict(rows[i:i + RAW_BATCH])
                rates[name] = len(rows) / (time.perf_counter() - started)
        finally:
            if previous is None:
                os.environ.pop("MMFUSE_CACHE_DIR", None)
            else:
                os.environ["MMFUSE_CACHE_DIR"] = previous
    return rates


def closed_loop(host: str, port: int, wire: list[bytes], expected: list[str],
                concurrency: int, seconds: float):
    """``concurrency`` keep-alive clients, each sending the next request as soon as its answer
    arrives, for ``seconds``; every answer is checked against the in-process prediction."""
    def right(index: int, status: int, body: bytes) -> bool:
        return status == 200 and json.loads(body)["rows"][0]["outputs"]["answer"][
            "prediction"] == expected[index]

    return load(host, port, wire, concurrency, seconds, cycle=True, check=right)


def run_loop(coroutine):
    """Run the load generator on uvloop when installed (a cheaper client on shared cores)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure_setup(served: Path, args: list[str], rows: list[dict], expected: list[str],
                  seconds: float) -> dict:
    """Start a server with ``args``, warm it up, and run every concurrency level."""
    process, url = start_server([str(served), *args])
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    wire = [request_bytes(host, port, "/v1/predict/batch", json.dumps({"rows": [{
        "image": base64.b64encode(Path(r["image"]).read_bytes()).decode(),
        "question": r["question"]}]}).encode(), "application/json") for r in rows]
    try:
        run_loop(closed_loop(host, port, wire, expected, 16, 3))  # warm-up
        levels = []
        for concurrency in LEVELS:
            result = run_loop(closed_loop(host, port, wire, expected, concurrency, seconds))
            result.pop("latencies_ms")
            print(args, result, flush=True)
            levels.append(result)
    finally:
        log = stop_server(process)
    if "Traceback" in log:
        print(log)
        raise SystemExit("the server logged a traceback")
    return {"args": shlex.join(args), "levels": levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="append", default=None,
                        help="server options of one setup (repeatable); default: the "
                        "defaults, then --processes 2")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_small.md")
    args = parser.parse_args()
    setups = args.setup if args.setup is not None else ["", "--processes 2"]

    import mmfuse

    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-small-") as tmp:
        work = Path(tmp)
        served, data = prepare_run(work, "torch", CONFIG, n_test=512)
        rows = test_rows(data)
        model = mmfuse.Model.load(served)
        expected = [o["answer"]["prediction"] for o in model.predict(rows)]
        raws = [raw_round(model, rows)]
        results = []
        for setup in setups:
            results.append(measure_setup(served, shlex.split(setup), rows, expected,
                                         args.seconds))
            raws.append(raw_round(model, rows))
            print("raw", raws[-1], flush=True)

    for k, result in enumerate(results):
        reference = (raws[k]["warm"] + raws[k + 1]["warm"]) / 2
        result["raw_rows_per_s"] = reference
        for level in result["levels"]:
            level["over_raw"] = level["throughput"] / reference
    report = {"machine": machine(), "command": command(), "config": str(CONFIG.relative_to(
        HERE.parent)), "rows": len(rows), "raw_rounds": raws, "setups": results}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    table = markdown_table(
        ["server options", "concurrency", "requests", "rows/s", "/ raw", "p50 ms", "p99 ms",
         "wrong answers", "statuses"],
        [[f"`{s['args'] or '(defaults)'}`", x["concurrency"], x["requests"],
          f"{x['throughput']:.0f}", f"**{x['over_raw']:.2f}**" if x["concurrency"] == 16
          else f"{x['over_raw']:.2f}", f"{x['p50_ms']:.1f}", f"{x['p99_ms']:.1f}", x["wrong"],
          x["statuses"]] for s in r["setups"] for x in s["levels"]])
    raw = ", ".join(f"{x['warm']:.0f} ({x['cold']:.0f} with an empty cache)"
                    for x in r["raw_rounds"])
    return f"""# A small model served one row per JSON request

`{r['command']}` on {r['machine']}. The model is `{r['config']}` (the demo's), trained for one
epoch on a generated Sort-of-CLEVR set; {r['rows']} test rows, one question per image, so no
two requests share an image. Requests are `POST /v1/predict/batch` with one row (the 75x75 PNG
base64-encoded in JSON), sent by closed-loop keep-alive clients in the benchmark process on
the same cores; every answer was checked against `Model.predict`.

Raw, in this process with the server stopped: `Model.predict` on batches of {RAW_BATCH} of the
same rows, rows/s per round (decode cache filled, and empty): {raw}. Each setup's `/ raw`
divides by the mean of the filled-cache rounds before and after it.

{table}

Target: rows/s at concurrency 16 at least 0.5 of raw.
"""


if __name__ == "__main__":
    main()
