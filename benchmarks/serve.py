"""Serving benchmark: latency and throughput of ``mmfuse serve`` against the raw pipeline.

Trains a model (default: benchmarks/configs/serve_vqa.yaml, a mid-sized visual question
answering model) briefly on a small generated Sort-of-CLEVR set (serving speed does not depend
on accuracy), starts a real ``mmfuse serve``
process on a free loopback port, and drives it with a keep-alive HTTP/1.1 load generator
(asyncio sockets, pre-built multipart bodies, so the client costs little CPU) at concurrency
1, 8 and 32, then with a mixed load in which a fifth of the requests are malformed. In the same
run it times the model's raw pipeline in-process: batches of 32 decoded rows (encode, forward,
postprocess) and a single example from its bytes (decode too), and reports

- served throughput at concurrency 32 / raw batched throughput   (target >= 0.70)
- p50 latency at concurrency 1 / raw single-example time         (target <= 1.5)

The load generator refuses any host but loopback and stops at a request count or a time limit.

    python benchmarks/serve.py                 # writes benchmarks/results/serve.md and .json
    python benchmarks/serve.py --runtime onnx  # the same against the ONNX export
    python benchmarks/serve.py --config examples/sort_of_clevr_best.yaml   # the demo's model
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import RESULTS, command, machine, markdown_table  # noqa: E402

from serving import start_server, stop_server  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                  f"{value}\r\n".encode())
    for name, data in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{name}.png"\r\nContent-Type: application/octet-stream\r\n\r\n'
                  .encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request_bytes(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


async def load(host: str, port: int, requests: list[bytes], concurrency: int,
               time_limit: float, cycle: bool = False,
               check: Callable[[int, int, bytes], bool] | None = None) -> dict:
    """Send ``requests`` in order (with ``cycle``, round and round until ``time_limit``) over
    ``concurrency`` keep-alive connections; ``check(index, status, body)`` false counts a
    wrong answer."""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host}: this benchmark only targets loopback")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = wrong = 0
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal next_index, wrong
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (cycle or next_index < len(requests)) and time.perf_counter() < deadline:
                index = next_index % len(requests)
                next_index += 1
                started = time.perf_counter()
                writer.write(requests[index])
                await writer.drain()
                status, body = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if check is not None and not check(index, status, body):
                    wrong += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": seconds,
            "throughput": len(latencies) / seconds, **percentiles(ms), "wrong": wrong,
            "statuses": dict(sorted(statuses.items())), "latencies_ms": ms}


def prepare_run(work: Path, runtime: str, config_path: Path, n_test: int = 50
                ) -> tuple[Path, Path]:
    """Generate a small Sort-of-CLEVR set, train the demo architecture briefly; the served
    folder (run or export) and the data folder."""
    import mmfuse
    from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr

    data = work / "soc"
    generate_sort_of_clevr(data, n_train=400, n_test=n_test, seed=0)
    config = yaml.safe_load(config_path.read_text())
    config = copy.deepcopy(config)
    config["training"].update(epochs=1, max_minutes=None, valid_fraction=0)
    mmfuse.Model.from_config(config).fit(data / "train.csv", out=work / "run", overwrite=True)
    if runtime == "torch":
        return work / "run", data
    from mmfuse.export import export_onnx

    export_onnx(work / "run", work / "onnx")
    return work / "onnx", data


class RawPipeline:
    """In-process times of the pipeline the server runs, without HTTP or batching."""

    def __init__(self, served: Path, runtime: str, rows: list[dict]) -> None:
        from mmfuse.serve import keep_freed_memory, load_service

        keep_freed_memory()  # as `mmfuse serve` does: the same allocator behaviour
        self.service = load_service(served, runtime)
        self.rows = rows
        self.uploads = [{"image": Path(r["image"]).read_bytes(), "question": r["question"]}
                        for r in rows]
        self.decoded = self.service.prepare(self.uploads[:32])
        self.service.run([self.decoded])  # warm up

    def batched(self, repeats: int = 15) -> float:
        """Rows per second of the forward pipeline on batches of 32 decoded rows (median)."""
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.service.run([self.decoded])
            times.append(time.perf_counter() - started)
        return 32 / statistics.median(times)

    def single(self, repeats: int = 60) -> dict:
        """Median ms of one example from its uploaded bytes (decode, encode, forward,
        postprocess: the server's work minus HTTP), and of ``Model.predict`` from its file."""
        single, predict = [], []
        for upload, row in zip(self.uploads[:repeats], self.rows, strict=False):
            started = time.perf_counter()
            self.service.run([self.service.prepare([upload])])
            single.append(time.perf_counter() - started)
            started = time.perf_counter()
            self.service.model.predict([row])
            predict.append(time.perf_counter() - started)
        return {"single_ms": statistics.median(single) * 1000,
                "api_predict_ms": statistics.median(predict) * 1000}


def pooled(results: list[dict]) -> dict:
    """One load result from several rounds at the same concurrency."""
    latencies = np.concatenate([r.pop("latencies_ms") for r in results])
    statuses: dict[int, int] = {}
    for r in results:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    requests, seconds = sum(r["requests"] for r in results), sum(r["seconds"] for r in results)
    return {"concurrency": results[0]["concurrency"], "requests": requests, "seconds": seconds,
            "throughput": requests / seconds, **percentiles(latencies),
            "statuses": dict(sorted(statuses.items())),
            "rounds": [r["throughput"] for r in results]}


def percentiles(ms: np.ndarray) -> dict:
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--config", type=Path, default=HERE / "configs/serve_vqa.yaml",
                        help="the model architecture to serve (trained briefly on Sort-of-CLEVR)")
    parser.add_argument("--requests", type=int, default=3000, help="requests at concurrency 32")
    parser.add_argument("--rounds", type=int, default=5,
                        help="concurrency-32 rounds, each between two raw measurements")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per level")
    parser.add_argument("--out", type=Path, default=None, help="results file (Markdown)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-serve-") as tmp:
        work = Path(tmp)
        served, data = prepare_run(work, args.runtime, args.config)
        import csv

        with (data / "test.csv").open() as f:
            rows = [{"image": str(data / r["image"]), "question": r["question"]}
                    for r in csv.DictReader(f)]
        random.Random(0).shuffle(rows)
        raw = RawPipeline(served, args.runtime, rows)

        bodies = [multipart({"question": r["question"]},
                            {"image": Path(r["image"]).read_bytes()}) for r in rows[:200]]
        bad = [multipart({"question": "what?"}, {"image": b"not an image"}),
               multipart({"question": "what?"}, {}),
               multipart({"question": "what?", "colour": "red"},
                         {"image": Path(rows[0]["image"]).read_bytes()}),
               (b"--x\r\ngarbage", "multipart/form-data; boundary=x")]
        process, url = start_server([str(served), "--runtime", args.runtime,
                                     "--max-batch-size", "32", "--max-wait-ms", "5"])
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        good = [request_bytes(host, port, "/v1/predict", b, t) for b, t in bodies]

        def level(concurrency: int, count: int) -> dict:
            payloads = [good[i % len(good)] for i in range(count)]
            asyncio.run(load(host, port, payloads[:64], concurrency, 30))  # warm up
            result = asyncio.run(load(host, port, payloads, concurrency, args.time_limit))
            print({k: v for k, v in result.items() if k != "latencies_ms"}, flush=True)
            return result

        # The machine's speed drifts by tens of percent over minutes, so every served level
        # sits between two raw measurements, and the ratios use their mean.
        try:
            singles = [raw.single()]
            c1 = pooled([level(1, 300)])
            singles.append(raw.single())
            c8 = pooled([level(8, 1500)])
            batched, c32_rounds = [], []
            for _ in range(args.rounds):
                batched.append(raw.batched())
                c32_rounds.append(level(32, args.requests // args.rounds))
            batched.append(raw.batched())
            c32 = pooled(c32_rounds)
            mixed_payloads = [request_bytes(host, port, "/v1/predict", *bad[i % len(bad)])
                              if i % 5 == 4 else good[i % len(good)] for i in range(2000)]
            mixed = pooled([asyncio.run(load(host, port, mixed_payloads, 32,
                                             args.time_limit))])
        finally:
            log = stop_server(process)
        if "Traceback" in log:
            print(log)
            raise SystemExit("the server logged a traceback")

    levels = [c1, c8, c32]
    raw_summary = {
        "batched_throughput": statistics.mean(batched), "batched_rounds": batched,
        "single_ms": statistics.mean(s["single_ms"] for s in singles),
        "api_predict_ms": statistics.mean(s["api_predict_ms"] for s in singles)}
    ratios = {"throughput_c32_over_raw_batched":
              c32["throughput"] / raw_summary["batched_throughput"],
              "p50_c1_over_raw_single": c1["p50_ms"] / raw_summary["single_ms"],
              "c32_rounds": [served / ((batched[i] + batched[i + 1]) / 2)
                             for i, served in enumerate(c32["rounds"])]}
    served_total = sum(r["requests"] for r in levels) + mixed["requests"]
    five_xx = sum(n for r in [*levels, mixed] for s, n in r["statuses"].items() if s >= 500)
    config = args.config.resolve()
    result = {"runtime": args.runtime, "machine": machine(), "command": command(),
              "raw": raw_summary,
              "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
              "levels": levels, "mixed": mixed, "ratios": ratios,
              "requests": served_total, "5xx": five_xx}
    default = args.runtime == "torch" and args.config.resolve() == (
        HERE / "configs/serve_vqa.yaml").resolve()
    out = args.out or RESULTS / ("serve.md" if default else
                                 f"serve_{args.runtime}_{args.config.stem}.md")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    raw, ratios = r["raw"], r["ratios"]
    table = markdown_table(
        ["concurrency", "requests", "throughput (req/s)", "p50 ms", "p95 ms", "p99 ms",
         "statuses"],
        [[x["concurrency"], x["requests"], f"{x['throughput']:.1f}", f"{x['p50_ms']:.1f}",
          f"{x['p95_ms']:.1f}", f"{x['p99_ms']:.1f}", x["statuses"]]
         for x in r["levels"]])
    m = r["mixed"]
    ratio_table = markdown_table(["ratio", "measured", "target"], [
        ["served throughput at concurrency 32 / raw batched throughput",
         f"**{ratios['throughput_c32_over_raw_batched']:.2f}**", ">= 0.70"],
        ["p50 latency at concurrency 1 / raw single-example time",
         f"**{ratios['p50_c1_over_raw_single']:.2f}**", "<= 1.5"]])
    return f"""# Serving benchmark ({r['runtime']} runtime)

`{r['command']}` on {r['machine']}. The model is `{r['config']}`, trained for one epoch on a
small generated Sort-of-CLEVR set (speed does not depend on accuracy), served by a real
`mmfuse serve` process (uvicorn, `--runtime {r['runtime']} --max-batch-size 32 --max-wait-ms 5`,
other settings at their defaults: `--workers 2 --decode-threads 2`) on loopback; the load
generator runs in the benchmark process on the same 2 cores, so the served figures include the
client's cost. Requests are multipart uploads of the test PNGs with their
questions.

Raw pipeline in-process, same run, with the server idle: batches of 32 decoded rows (encode,
forward, postprocess) run at **{raw['batched_throughput']:.0f} rows/s** (mean of
{len(raw['batched_rounds'])} measurements taken before, between and after the concurrency-32
rounds: {', '.join(f"{x:.0f}" for x in raw['batched_rounds'])}); one example from its uploaded
bytes (decode, encode, forward, postprocess: the server's work minus HTTP) takes
**{raw['single_ms']:.2f} ms** (mean of the medians before and after the concurrency-1 level;
`Model.predict` from the file on disk: {raw['api_predict_ms']:.2f} ms).

{table}

Mixed load at concurrency 32, one request in five malformed (undecodable image, missing field,
unknown field, broken multipart): {m['requests']} requests, statuses {m['statuses']},
{m['throughput']:.1f} req/s.

{ratio_table}

Each concurrency-32 round over the mean of the raw measurements on either side:
{', '.join(f"{x:.2f}" for x in ratios['c32_rounds'])} (median
{statistics.median(ratios['c32_rounds']):.2f}). {r['requests']} requests in all,
{r['5xx']} answered 5xx.
"""


if __name__ == "__main__":
    main()
