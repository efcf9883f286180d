"""A real ``mmfuse serve`` process (uvicorn) on a free loopback port, driven over TCP."""

from __future__ import annotations

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest

from test_cli import run

httpx = pytest.importorskip("httpx")

COLOUR_Q, SHAPE_Q = "What colour is the shape?", "Which shape is in the picture?"


def test_concurrent_load_gives_predict_outputs_and_no_5xx(live_server, served_run):
    """Hundreds of requests from 16 threads, a third of them malformed: every valid one gets
    exactly the Python API's answer, every bad one a 4xx, none a 5xx; requests share batches."""
    import mmfuse

    images = sorted((served_run["data"] / "img").glob("test_*.png"))
    questions = (COLOUR_Q, SHAPE_Q)
    model = mmfuse.Model.load(served_run["run"])
    expected = {(p.name, q): model.predict([{"image": str(p), "question": q}])[0]
                for p in images for q in questions}
    bad_bodies = [
        {"files": {"image": ("x.png", b"not an image")}, "data": {"question": COLOUR_Q}},
        {"data": {"question": COLOUR_Q}},
        {"files": {"image": ("x.png", images[0].read_bytes())},
         "data": {"question": COLOUR_Q, "extra": "1"}},
    ]

    def call(i: int) -> tuple[int, object, int]:
        with httpx.Client(base_url=live_server, timeout=30) as client:
            if i % 3 == 2:
                response = client.post("/v1/predict", **bad_bodies[i % len(bad_bodies)])
                return i, None, response.status_code
            image, question = images[i % len(images)], questions[(i // 3) % 2]
            response = client.post("/v1/predict", data={"question": question},
                                   files={"image": (image.name, image.read_bytes())})
            got = response.json()["outputs"] if response.status_code == 200 else response.text
            return i, ((image.name, question), got), response.status_code

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(480)))
    statuses = [s for _, _, s in results]
    assert not [s for s in statuses if s >= 500], statuses
    for _, answer, status in results:
        if answer is None:
            assert 400 <= status < 500
            continue
        key, got = answer
        assert status == 200, got
        assert got["answer"]["prediction"] == expected[key]["answer"]["prediction"]
        for label, p in expected[key]["answer"]["probabilities"].items():
            assert got["answer"]["probabilities"][label] == pytest.approx(p, abs=2e-6)
    metrics = httpx.get(live_server + "/metrics").text
    count = float(metrics.split("mmfuse_batch_rows_count ")[1].split()[0])
    rows = float(metrics.split("mmfuse_batch_rows_sum ")[1].split()[0])
    assert rows == 320 and count < rows, "concurrent requests were batched together"


def test_batch_endpoint_over_tcp(live_server, served_run):
    image = served_run["data"] / "img/test_0001.png"
    row = {"image": base64.b64encode(image.read_bytes()).decode(), "question": SHAPE_Q}
    response = httpx.post(live_server + "/v1/predict/batch", json={"rows": [row] * 5},
                          timeout=30)
    assert response.status_code == 200
    assert len(response.json()["rows"]) == 5


def raw(url: str, payload: bytes, read: bool = True) -> bytes:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_garbage_and_abandoned_uploads_do_not_hurt_the_server(live_server):
    assert raw(live_server, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    # a client that promises 1 MB and hangs up after a few bytes
    raw(live_server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
        b" boundary=B\r\nContent-Length: 1000000\r\n\r\n--B\r\nContent-Disp", read=False)
    lying = raw(live_server, b"POST /v1/predict/batch HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{\"rows\": []}")
    assert b" 400 " in lying.split(b"\r\n")[0] or b" 422 " in lying.split(b"\r\n")[0]
    assert httpx.get(live_server + "/health").json()["status"] == "ok"


def test_serve_refuses_a_folder_without_a_model(tmp_path):
    result = run("serve", tmp_path, "--port", "0", check=False)
    assert result.returncode == 2 and "no model bundle" in result.stderr
    result = run("serve", tmp_path, "--runtime", "onnx", check=False)
    assert result.returncode == 2 and "mmfuse export" in result.stderr


def test_default_bind_is_loopback_and_shutdown_is_clean(served_run):
    from serving import start_server, stop_server

    process, url = start_server([str(served_run["run"]), "--api-key", "k"])
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(url + "/v1/model").status_code == 401
    assert httpx.get(url + "/v1/model", headers={"Authorization": "Bearer k"}).status_code == 200
    log = stop_server(process)
    assert process.returncode == 0, log
    assert "http://127.0.0.1:" in log and "API key required" in log


def test_export_cli_and_onnx_runtime_serve_the_same_answers(served_run, tmp_path):
    """``mmfuse export`` then ``mmfuse serve --runtime onnx``: outputs within 1e-4 of PyTorch."""
    import mmfuse
    from serving import start_server, stop_server

    out = tmp_path / "onnx"
    summary = json.loads(run("export", served_run["run"], "--format", "onnx", "--out", out,
                             "--json").stdout)
    assert (out / "model.onnx").is_file() and summary["max_abs_diff"] < 1e-4
    assert run("export", served_run["run"], "--format", "tflite", "--out", out,
               check=False).returncode == 2
    model = mmfuse.Model.load(served_run["run"])
    images = sorted((served_run["data"] / "img").glob("test_*.png"))[:6]
    for extra in ([], ["--processes", "2"]):  # also forked from one loaded export
        process, url = start_server([str(out), "--runtime", "onnx", *extra])
        try:
            assert httpx.get(url + "/v1/model").json()["runtime"] == "onnx"
            for image in images:
                expected = model.predict([{"image": str(image), "question": SHAPE_Q}])[0]
                response = httpx.post(url + "/v1/predict", data={"question": SHAPE_Q},
                                      files={"image": (image.name, image.read_bytes())},
                                      timeout=30)
                got = response.json()["outputs"]["answer"]
                assert got["prediction"] == expected["answer"]["prediction"]
                for label, p in expected["answer"]["probabilities"].items():
                    assert got["probabilities"][label] == pytest.approx(p, abs=1e-4)
        finally:
            stop_server(process)


def test_curl_a_client_that_is_not_ours(live_server, served_run):
    """curl (libcurl's own multipart encoder and HTTP stack) gets the same answers and errors."""
    import shutil
    import subprocess

    import mmfuse

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    image = served_run["data"] / "img/test_0002.png"

    def curl(*args: str) -> tuple[int, dict]:
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        body, status = out.rsplit("\n", 1)
        return int(status), json.loads(body)

    status, body = curl("-F", f"image=@{image}", "-F", f"question={COLOUR_Q}",
                        live_server + "/v1/predict")
    expected = mmfuse.Model.load(served_run["run"]).predict(
        [{"image": str(image), "question": COLOUR_Q}])[0]
    assert status == 200 and body["outputs"]["answer"]["prediction"] == \
        expected["answer"]["prediction"]
    status, body = curl("-F", f"image=@{served_run['train']};type=image/png", "-F",
                        f"question={COLOUR_Q}", live_server + "/v1/predict")  # a CSV as PNG
    assert status == 422 and body["error"]["field"] == "image"
    status, body = curl("-H", "Content-Type: application/json", "-d", '{"rows": "x"}',
                        live_server + "/v1/predict/batch")
    assert status == 422 and body["error"]["field"] == "rows"


def _children(pid: int) -> list[int]:
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def _wait_for(condition, seconds: float = 30.0):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_processes_share_the_port_the_metrics_and_replace_a_dead_one(served_run):
    """--processes 2: two forked servers on one port, each pinned to its own CPU, both
    answering as the Python API does; /metrics sums both; a killed one is replaced; Ctrl-C
    stops them all."""
    import os
    import signal
    from pathlib import Path

    import mmfuse
    from serving import start_server, stop_server

    images = sorted((served_run["data"] / "img").glob("test_*.png"))[:8]
    model = mmfuse.Model.load(served_run["run"])
    expected = [model.predict([{"image": str(p), "question": SHAPE_Q}])[0]["answer"]
                ["prediction"] for p in images]
    bodies = [{"rows": [{"image": base64.b64encode(p.read_bytes()).decode(),
                         "question": SHAPE_Q}]} for p in images]
    process, url = start_server([str(served_run["run"]), "--processes", "2"])
    try:
        children = _wait_for(lambda: len(_children(process.pid)) == 2 and
                             _children(process.pid))
        if os.cpu_count() >= 2 and len(os.sched_getaffinity(0)) >= 2:
            allowed = [open(f"/proc/{c}/status").read().split("Cpus_allowed_list:")[1].split()[0]
                       for c in children]
            assert allowed[0] != allowed[1], allowed

        def call(i: int) -> str:  # a new connection each time: the kernel spreads them
            response = httpx.post(url + "/v1/predict/batch", json=bodies[i % 8], timeout=30)
            assert response.status_code == 200, response.text
            return response.json()["rows"][0]["outputs"]["answer"]["prediction"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(96)))
        assert answers == [expected[i % 8] for i in range(96)]
        # each process maps its counters' file in the shared folder
        files = {c: [Path(line.split()[-1]) for line in open(f"/proc/{c}/maps")
                     if "/counter_" in line] for c in children}
        assert all(files.values()), "both processes answered requests"
        shared = files[children[0]][0].parent
        writers = {int(f.stem.rsplit("_", 1)[1]) for f in shared.glob("counter_*.db")}
        assert set(children) <= writers, "both processes answered requests"
        metrics = httpx.get(url + "/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("mmfuse_requests_total{")
                    and 'route="/v1/predict/batch"' in x and 'status="200"' in x)
        assert float(line.split()[-1]) == 96, "one /metrics sums every process"

        os.kill(children[0], signal.SIGKILL)
        replaced = _wait_for(lambda: len(_children(process.pid)) == 2 and
                             _children(process.pid) != children and _children(process.pid))
        assert children[1] in replaced and children[0] not in replaced
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(16))) == [expected[i % 8] for i in range(16)]
    finally:
        log = stop_server(process)
    assert process.returncode == 0, log
    assert "died" in log and "starting another" in log
    assert not shared.exists(), "the metrics folder is removed on exit"
    for child in children:
        assert not Path(f"/proc/{child}").exists() or \
            "zombie" in open(f"/proc/{child}/status").read()
