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
