"""``mmfuse serve`` and ``mmfuse export``: the commands that deploy a trained model (``cli.py``
registers them beside the others)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import DeviceOption, JsonFlag, err, out, print_json
from .errors import MmfuseError
from .serve.settings import DEFAULTS as SERVE_DEFAULTS
from .serve.settings import HOST, PORT, RUNTIME


def serve(
    run_dir: Annotated[Path, typer.Argument(
        help="what 'mmfuse train --out' wrote (or, with --runtime onnx, what 'mmfuse export' "
        "wrote)")],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server")]
    = HOST,
    port: Annotated[int, typer.Option(min=0, max=65535)] = PORT,
    max_batch_size: Annotated[int, typer.Option(
        min=1, help="rows per forward pass")] = SERVE_DEFAULTS.max_batch_size,
    max_wait_ms: Annotated[float, typer.Option(
        min=0, help="longest a batch waits for more requests")] = SERVE_DEFAULTS.max_wait_ms,
    max_queue: Annotated[int, typer.Option(
        min=1, help="requests waiting before new ones get 429")] = SERVE_DEFAULTS.max_queue,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="seconds per request before 503")] = SERVE_DEFAULTS.timeout_s,
    api_key: Annotated[str | None, typer.Option(
        envvar="MMFUSE_API_KEY", help="require 'Authorization: Bearer KEY' (or set "
        "MMFUSE_API_KEY)")] = SERVE_DEFAULTS.api_key,
    runtime: Annotated[str, typer.Option(help="torch, or onnx for an export")] = RUNTIME,
    decode_threads: Annotated[int, typer.Option(
        min=0, help="threads that check and decode requests (0: the forward thread)")]
    = SERVE_DEFAULTS.decode_threads,
    workers: Annotated[int, typer.Option(
        min=1, help="forward passes at once, splitting the cores between them")]
    = SERVE_DEFAULTS.workers,
    processes: Annotated[int, typer.Option(
        min=1, help="server processes sharing the model")] = SERVE_DEFAULTS.processes,
    max_body_mb: Annotated[float, typer.Option(
        min=0.001, help="largest request body")] = SERVE_DEFAULTS.limits.max_body_mb,
    max_image_pixels: Annotated[int, typer.Option(min=1)]
    = SERVE_DEFAULTS.limits.max_image_pixels,
    max_media_seconds: Annotated[float, typer.Option(
        min=0.1, help="longest audio or video clip")] = SERVE_DEFAULTS.limits.max_media_seconds,
    max_text_chars: Annotated[int, typer.Option(min=1)] = SERVE_DEFAULTS.limits.max_text_chars,
    max_batch_rows: Annotated[int, typer.Option(
        min=1, help="rows of one /v1/predict/batch request")]
    = SERVE_DEFAULTS.limits.max_batch_rows,
    device: DeviceOption = None,
    data_root: Annotated[Path | None, typer.Option(
        help="folder whose files chat requests may name as file: URLs")] = None,
) -> None:
    """Serve a trained model over HTTP (FastAPI + uvicorn) with dynamic batching."""
    from .serve import serve as run_server
    from .serve.settings import RUNTIMES, Limits, ServeSettings

    if runtime not in RUNTIMES:  # checked here too: the model loads after the server starts
        raise MmfuseError(f"--runtime {runtime!r}: use one of: {', '.join(RUNTIMES)}")
    _check_servable(run_dir, runtime)
    device = _serve_device(runtime, device)
    limits = Limits(max_body_mb, max_image_pixels, max_media_seconds, max_text_chars,
                    max_batch_rows)
    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, timeout_s=timeout, api_key=api_key,
                             limits=limits, decode_threads=decode_threads, workers=workers,
                             processes=processes, device=device,
                             data_root=str(data_root.resolve()) if data_root else None)
    err.print(f"serving {run_dir} ({runtime}) on http://{host}:{port}/ "
              f"(batches of up to {max_batch_size}, waiting up to {max_wait_ms:g} ms)"
              + ("; API key required" if api_key else ""), soft_wrap=True)
    run_server(run_dir, host, port, runtime, settings)


def _serve_device(runtime: str, device: str | None) -> str:
    """Where the served model runs: ``--device`` resolved for torch (a bad device fails before
    the server binds), the CPU for onnx."""
    if runtime == "onnx" and device not in (None, "cpu", "auto"):
        raise MmfuseError(f"--device {device}: the onnx runtime runs on the CPU; serve the run "
                          "folder with --runtime torch to use a GPU")
    if runtime == "torch":
        from .device import resolve_device

        return str(resolve_device(device or "auto"))
    return device or SERVE_DEFAULTS.device


def _check_servable(path: Path, runtime: str) -> None:
    """Fail before the server starts when ``path`` holds nothing this runtime can load."""
    if runtime == "onnx":
        if not (path / "model.onnx").is_file():
            raise MmfuseError(f"no model.onnx in {str(path)!r}; run 'mmfuse export RUN_DIR "
                              f"--format onnx --out {path}' first")
        return
    from .bundle import find_bundle

    find_bundle(path)


def export(
    run_dir: Annotated[Path, typer.Argument(help="what 'mmfuse train --out' wrote")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write")],
    format: Annotated[str, typer.Option("--format", help="onnx")] = "onnx",
    as_json: JsonFlag = False,
) -> None:
    """Export a trained model: model.onnx plus the preprocessing state and config."""
    if format != "onnx":
        raise MmfuseError(f"--format {format!r}: only onnx is supported")
    from .export import export_onnx

    summary = export_onnx(run_dir, out_dir)
    if as_json:
        print_json(summary)
        return
    out.print(f"wrote {out_dir / 'model.onnx'} in {summary['seconds']:.1f}s; largest difference "
              f"from PyTorch on an example batch: {summary['max_abs_diff']:.2e}")
    out.print(f"serve it with: mmfuse serve {out_dir} --runtime onnx")
