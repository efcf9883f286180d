"""Soak: ``mmfuse serve`` under a mixed load for a minute, watching for server errors and
memory growth.

Trains the from-scratch text model of ``serve_chat.py`` (image + question -> a free-text
answer), starts a real ``mmfuse serve`` and runs ``--concurrency`` closed-loop clients that
cycle through chat answers, streamed chat answers, form predictions and malformed requests
of each route (broken base64, a body that is not JSON, a file that is not an image). After a
warm-up it records the server's resident memory, runs ``--seconds`` more, and reports

- answers of the wrong kind: any 5xx, a refusal of a good request, a 2xx to a malformed one,
  a stream that did not end with ``[DONE]`` (target: none);
- resident memory at the end against after the warm-up (target: at most +10%).

    python benchmarks/serve_soak.py        # writes benchmarks/results/serve_soak.md and .json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import RESULTS, command, machine, markdown_table  # noqa: E402
from serve_chat import train  # noqa: E402

from serving import rss_bytes, soak, soak_requests, start_server, stop_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, rows = train("scratch", Path(tmp))
        process, url = start_server([str(out)], timeout=180)
        try:
            requests = soak_requests(out.name, Path(rows[0]["image"]).read_bytes(),
                                     rows[0]["question"])
            warm = asyncio.run(soak(url, requests, args.concurrency, args.warmup))
            settled = rss_bytes(process.pid)
            run = asyncio.run(soak(url, requests, args.concurrency, args.seconds))
            final = rss_bytes(process.pid)
        finally:
            stop_server(process)
    result = {"seconds": args.seconds, "concurrency": args.concurrency,
              "requests": run["requests"], "statuses": run["statuses"],
              "wrong": warm["wrong"] + run["wrong"], "rss_after_warmup_mb": settled / 2**20,
              "rss_end_mb": final / 2**20, "rss_growth": final / settled - 1}
    text = report(result)
    print(text)
    if not args.no_write:
        (RESULTS / "serve_soak.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "serve_soak.md").write_text(text)


def report(r: dict) -> str:
    rows = [[kind, sum(codes.values()), ", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))]
            for kind, codes in r["statuses"].items()]
    return "\n".join([
        "# Soak: a mixed load on `mmfuse serve`", "",
        f"Reproduce: `{command()}` · {machine()}", "",
        f"{r['concurrency']} closed-loop clients for {r['seconds']:g} s after a warm-up: "
        f"{r['requests']} requests.", "",
        markdown_table(["request", "sent", "statuses"], rows), "",
        "| check | measured | target |", "|---|---|---|",
        f"| answers of the wrong kind (5xx, a refused good request, an accepted bad one, a "
        f"stream without [DONE]) | **{len(r['wrong'])}** | 0 |",
        f"| resident memory, end / after the warm-up | **{r['rss_end_mb']:.0f} / "
        f"{r['rss_after_warmup_mb']:.0f} MB ({r['rss_growth']:+.1%})** | <= +10% |", ""])


if __name__ == "__main__":
    main()
