"""Running a real ``mmfuse serve`` process for the server tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Run ``mmfuse serve ARGS --port FREE`` as a real uvicorn process; wait for /health."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mmfuse.cli", "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**{k: v for k, v in os.environ.items() if k != "MMFUSE_API_KEY"},  # args decide
             "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{process.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"the server did not become ready in {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> str:
    """Stop the server as Ctrl-C would and return what it printed."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read() if process.stdout else ""


def rss_bytes(pid: int) -> int:
    """A process's resident memory now (``VmRSS``)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak_requests(name: str, image: bytes, question: str, image_field: str = "image",
                  question_field: str = "question") -> dict[str, dict]:
    """The mixed load of the soak: a chat answer, a streamed one, a form prediction, and
    malformed requests of each route (each with the status family it must get)."""
    import base64

    data = base64.b64encode(image).decode()
    content = [{"type": "text", "text": question},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
    chat = {"model": name, "messages": [{"role": "user", "content": content}]}
    broken = {"model": name, "messages": [{"role": "user", "content": [
        content[0], {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]}
    return {
        "chat": {"path": "/v1/chat/completions", "json": chat, "ok": True},
        "stream": {"path": "/v1/chat/completions", "json": {**chat, "stream": True},
                   "ok": True},
        "predict": {"path": "/v1/predict", "data": {question_field: question},
                    "files": {image_field: ("x.png", image)}, "ok": True},
        "bad_chat": {"path": "/v1/chat/completions", "json": broken, "ok": False},
        "bad_json": {"path": "/v1/chat/completions", "content": b"{not json",
                     "headers": {"content-type": "application/json"}, "ok": False},
        "bad_image": {"path": "/v1/predict", "data": {question_field: question},
                      "files": {image_field: ("x.png", b"not an image")}, "ok": False},
    }


async def soak(url: str, requests: dict[str, dict], concurrency: int, seconds: float,
               headers: dict | None = None) -> dict:
    """Closed-loop clients cycling through ``requests`` for ``seconds``; counts statuses per
    kind and any answer of the wrong family (a 5xx, a refusal of a good request, a 2xx to a
    malformed one, a stream that did not end with ``[DONE]``)."""
    import asyncio

    import httpx

    kinds = list(requests)
    statuses: dict[str, dict[int, int]] = {k: {} for k in kinds}
    wrong: list[str] = []
    end = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient, kind: str) -> None:
        spec = requests[kind]
        args = {k: spec[k] for k in ("json", "data", "files", "content") if k in spec}
        if kind == "stream":
            async with client.stream("POST", spec["path"], **args) as response:
                text = (await response.aread()).decode()
                status = response.status_code
                if status == 200 and not text.rstrip().endswith("data: [DONE]"):
                    wrong.append(f"{kind}: the stream did not end with [DONE]")
        else:
            response = await client.post(spec["path"], headers=spec.get("headers"), **args)
            status = response.status_code
        statuses[kind][status] = statuses[kind].get(status, 0) + 1
        if status >= 500 or (spec["ok"] and status != 200) or \
                (not spec["ok"] and not 400 <= status < 500):
            wrong.append(f"{kind}: {status}")

    async def client_loop(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
            i = k
            while time.monotonic() < end:
                await one(client, kinds[i % len(kinds)])
                i += 1

    await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    return {"statuses": statuses, "wrong": wrong,
            "requests": sum(sum(s.values()) for s in statuses.values())}
