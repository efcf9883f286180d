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
               time_limit: float) -> dict:
    """Send ``requests`` (cycled in order) over ``concurrency`` keep-alive connections."""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host}: this benchmark only targets loopback")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_index < len(requests) and time.perf_counter() < deadline:
                payload = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                writer.write(payload)
                await writer.drain()
                status, _ = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": seconds,
            "throughput": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "statuses": dict(sorted(statuses.items()))}


def prepare_run(work: Path, runtime: str, config_path: Path) -> tuple[Path, Path]:
    """Generate a small Sort-of-CLEVR set, train the demo architecture briefly; the served
    folder (run or export) and the data folder."""
    import mmfuse
    from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr

    data = work / "soc"
    generate_sort_of_clevr(data, n_train=400, n_test=50, seed=0)
    config = yaml.safe_load(config_path.read_text())
    config = copy.deepcopy(config)
    config["training"].update(epochs=1, max_minutes=None, valid_fraction=0)
    mmfuse.Model.from_config(config).fit(data / "train.csv", out=work / "run")
    if runtime == "torch":
        return work / "run", data
    from mmfuse.export import export_onnx

    export_onnx(work / "run", work / "onnx")
    return work / "onnx", data


def raw_pipeline(served: Path, runtime: str, rows: list[dict], repeats: int) -> dict:
    """In-process times of the pipeline the server runs, without HTTP or batching."""
    from mmfuse.serve import load_service

    service = load_service(served, runtime)
    uploads = [{"image": Path(r["image"]).read_bytes(), "question": r["question"]}
               for r in rows]
    decoded = service.prepare(uploads[:32])
    service.run([decoded])  # warm up
    batch_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        service.run([decoded])
        batch_times.append(time.perf_counter() - started)
    single_times, predict_times = [], []
    for upload, row in zip(uploads[:repeats * 4], rows, strict=False):
        started = time.perf_counter()
        service.run([service.prepare([upload])])  # decode the bytes, encode, forward, ...
        single_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        service.model.predict([row])  # the Python API from the file on disk
        predict_times.append(time.perf_counter() - started)
    batch = statistics.median(batch_times)
    return {"batch32_ms": batch * 1000, "batched_throughput": 32 / batch,
            "single_ms": statistics.median(single_times) * 1000,
            "api_predict_ms": statistics.median(predict_times) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--config", type=Path, default=HERE / "configs/serve_vqa.yaml",
                        help="the model architecture to serve (trained briefly on Sort-of-CLEVR)")
    parser.add_argument("--requests", type=int, default=3000, help="requests at concurrency 32")
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
        raw = raw_pipeline(served, args.runtime, rows, repeats=20)
        print(f"raw: {raw}", flush=True)

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
        try:
            good = [request_bytes(host, port, "/v1/predict", b, t) for b, t in bodies]
            levels = []
            for concurrency, count in ((1, 300), (8, 1500), (32, args.requests)):
                payloads = [good[i % len(good)] for i in range(count)]
                asyncio.run(load(host, port, payloads[:64], concurrency, 30))  # warm up
                result = asyncio.run(load(host, port, payloads, concurrency, args.time_limit))
                print(result, flush=True)
                levels.append(result)
            mixed_payloads = [request_bytes(host, port, "/v1/predict", *bad[i % len(bad)])
                              if i % 5 == 4 else good[i % len(good)] for i in range(2000)]
            mixed = asyncio.run(load(host, port, mixed_payloads, 32, args.time_limit))
            print(mixed, flush=True)
        finally:
            log = stop_server(process)
        if "Traceback" in log:
            print(log)
            raise SystemExit("the server logged a traceback")

    c1, c32 = levels[0], levels[-1]
    ratios = {"throughput_c32_over_raw_batched": c32["throughput"] / raw["batched_throughput"],
              "p50_c1_over_raw_single": c1["p50_ms"] / raw["single_ms"]}
    served_total = sum(r["requests"] for r in levels) + mixed["requests"]
    five_xx = sum(n for r in [*levels, mixed] for s, n in r["statuses"].items() if s >= 500)
    config = args.config.resolve()
    result = {"runtime": args.runtime, "machine": machine(), "command": command(), "raw": raw,
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
`mmfuse serve` process (uvicorn, `--runtime {r['runtime']} --max-batch-size 32 --max-wait-ms 5`)
on loopback; the load generator runs in the benchmark process on the same 2 cores, so the served
figures include the client's cost. Requests are multipart uploads of the test PNGs with their
questions.

Raw pipeline in-process, same run: a batch of 32 decoded rows (encode, forward, postprocess)
takes {raw['batch32_ms']:.1f} ms = **{raw['batched_throughput']:.0f} rows/s**; one example from
its uploaded bytes (decode, encode, forward, postprocess: the server's work minus HTTP) takes
**{raw['single_ms']:.2f} ms** (`Model.predict` from the file on disk: {raw['api_predict_ms']:.2f}
ms).

{table}

Mixed load at concurrency 32, one request in five malformed (undecodable image, missing field,
unknown field, broken multipart): {m['requests']} requests, statuses {m['statuses']},
{m['throughput']:.1f} req/s.

{ratio_table}

{r['requests']} requests in all, {r['5xx']} answered 5xx.
"""


if __name__ == "__main__":
    main()
