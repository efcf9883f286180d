"""Generation under load through OpenAI's chat API: aggregate tokens per second at
concurrency 1 and 8, on a from-scratch text decoder and on the shipped LM.

For each model it trains briefly on the built-in ``image_qa`` probe (generation speed does not
depend on accuracy), starts a real ``mmfuse serve`` process on a free loopback port, and runs
closed-loop clients that each send a chat request (the image as a ``data:`` URL and the
question), wait for the answer, and send the next. Every answer is held to exactly
``--tokens`` tokens (``min_tokens`` = ``max_tokens``, as vLLM's benchmarks use ``ignore_eos``),
so the figure counts decoding steps rather than how soon a model says its one-word answer.
It reports written tokens per second, over ``--seconds`` after a warm-up, at concurrency 1
and 8, and their ratio (target >= 3: concurrent requests share decoding steps), for several
answer lengths: the shorter the answer, the more each request's own costs (HTTP, JSON, the
image's decoding and encoding) weigh against its decoding steps.

    python benchmarks/serve_chat.py            # writes benchmarks/results/serve_chat.md and .json
    python benchmarks/serve_chat.py --models scratch --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import RESULTS, command, machine, markdown_table  # noqa: E402
from serve import LOOPBACK, read_response, request_bytes  # noqa: E402

from serving import start_server, stop_server  # noqa: E402

USAGE = re.compile(rb'"completion_tokens":\s*(\d+)')

MODELS = {
    # the default from-scratch decoder (a GRU) on the probe's minimal config
    "scratch": {"decoder": None, "rows": 240, "epochs": 3},
    # the shipped SmolLM2-135M, frozen, with the default projector
    "causal_lm": {"decoder": {"type": "causal_lm", "lm": "frozen"}, "rows": 32, "epochs": 1},
}


def train(kind: str, work: Path) -> tuple[Path, list[dict]]:
    """A briefly trained run of ``kind`` and its probe's test rows (image path, question)."""
    import mmfuse
    from mmfuse.datasets.probes import generate_probe, minimal_config

    spec = MODELS[kind]
    data = work / "data"
    if not (data / "train.csv").exists():
        generate_probe("image_qa", data, 240, 16, 3)
    config = minimal_config("image_qa")
    config["outputs"][0]["type"] = "text"
    if spec["decoder"]:
        config["outputs"][0]["decoder"] = spec["decoder"]
    config["training"] = {**config.get("training", {}), "epochs": spec["epochs"]}
    rows = list(csv.DictReader((data / "train.csv").open()))[: spec["rows"]]
    with (work / f"train_{kind}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = work / kind
    mmfuse.Model.from_config(config).fit(work / f"train_{kind}.csv", out=out, data_root=data)
    tests = [{"image": str(data / r["image"]), "question": r["question"]}
             for r in csv.DictReader((data / "test.csv").open())]
    return out, tests


def bodies(name: str, rows: list[dict], tokens: int) -> list[bytes]:
    out = []
    for row in rows:
        image = base64.b64encode(Path(row["image"]).read_bytes()).decode()
        out.append(json.dumps({
            "model": name, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "text", "text": row["question"]}]}]}).encode())
    return out


async def load(url: str, requests: list[bytes], concurrency: int, seconds: float,
               warmup: float) -> dict:
    """Closed-loop clients on keep-alive sockets for ``warmup + seconds`` (pre-built requests,
    so the clients, on the same cores as the server, cost little); tokens counted after the
    warm-up."""
    host, port = url.removeprefix("http://").split(":")
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host}: this benchmark only targets loopback")
    wire = [request_bytes(host, int(port), "/v1/chat/completions", body, "application/json")
            for body in requests]
    written, answered, errors = 0, 0, 0
    measuring_from = time.perf_counter() + warmup
    end = measuring_from + seconds

    async def client(k: int) -> None:
        nonlocal written, answered, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            i = k
            while time.perf_counter() < end:
                writer.write(wire[i % len(wire)])
                await writer.drain()
                status, body = await read_response(reader)
                i += concurrency
                if status != 200:
                    errors += 1
                elif time.perf_counter() >= measuring_from:
                    written += int(USAGE.search(body).group(1))
                    answered += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - measuring_from
    return {"concurrency": concurrency, "tokens_per_s": round(written / elapsed, 1),
            "answers": answered, "errors": errors, "seconds": round(elapsed, 1)}


def run(kind: str, work: Path, args: argparse.Namespace) -> list[dict]:
    """Each answer length of ``kind`` at concurrency 1 and 8, on one server."""
    out, rows = train(kind, work)
    lengths = args.lm_tokens if kind == "causal_lm" else args.tokens
    process, url = start_server([str(out)], timeout=180)
    results = []
    try:
        for tokens in (int(t) for t in lengths.split(",")):
            requests = bodies(out.name, rows, tokens)
            runs = [asyncio.run(load(url, requests, c, args.seconds, args.warmup))
                    for c in (1, 8)]
            ratio = runs[1]["tokens_per_s"] / max(runs[0]["tokens_per_s"], 1e-9)
            results.append({"model": kind, "tokens": tokens, "runs": runs,
                            "ratio_8_to_1": round(ratio, 2)})
    finally:
        stop_server(process)
    return results


def report(results: list[dict]) -> str:
    rows = []
    for r in results:
        one, eight = r["runs"]
        rows.append([r["model"], r["tokens"], one["tokens_per_s"], eight["tokens_per_s"],
                     f"**{r['ratio_8_to_1']}x**", one["errors"] + eight["errors"]])
    return "\n".join([
        "# Generation under load: OpenAI's chat API", "",
        f"Reproduce: `{command()}` · {machine()}", "",
        "Closed-loop clients send chat requests (image + question) to a real `mmfuse serve`; "
        "every answer is held to the given number of tokens (`min_tokens` = `max_tokens`). "
        "Written tokens per second, all clients together, after a warm-up:", "",
        markdown_table(["model", "tokens per answer", "concurrency 1", "concurrency 8",
                        "8 / 1 (target >= 3)", "errors"], rows), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="scratch,causal_lm")
    parser.add_argument("--tokens", default="24,48,96", help="tokens per answer of the "
                        "scratch decoder (48: the text decoders' default max_length)")
    parser.add_argument("--lm-tokens", default="24,48", help="tokens per answer of the LM")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [r for kind in args.models.split(",") if kind
                   for r in run(kind, Path(tmp), args)]
    text = report(results)
    print(text)
    if not args.no_write:
        (RESULTS / "serve_chat.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "serve_chat.md").write_text(text)


if __name__ == "__main__":
    main()
