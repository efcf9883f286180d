"""What a client or an operator asks about the server: ``GET /health`` (200 once the model is
loaded, 503 before or if loading failed), ``GET /v1/model`` (the inputs, outputs, limits and
batching), ``GET /openapi.json`` (the schema of this model's fields: ``openapi.py``) and
``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .state import authorised, server_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    server = server_of(request)
    if not server.batcher.alive:
        return JSONResponse({"status": "failed", "error": "the batching loop stopped"},
                            status_code=503)
    if server.loaded is not None:
        return JSONResponse({"status": "ok", "runtime": server.loaded.runtime,
                             "source": server.loaded.source})
    status = "failed" if server.error else "loading"
    return JSONResponse({"status": status, "error": server.error}, status_code=503)


@router.get("/v1/model")
async def model_info(request: Request) -> dict:
    server = authorised(request)
    info = server.service().describe()
    settings = server.settings
    info["batching"] = {"max_batch_size": settings.max_batch_size,
                        "max_wait_ms": settings.max_wait_ms,
                        "max_queue": settings.max_queue, "timeout_s": settings.timeout_s}
    return info


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    server = authorised(request)
    return JSONResponse(server.service().openapi(server.settings.api_key is not None))


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    server = authorised(request)
    body, content_type = server.metrics.render()
    return Response(body, media_type=content_type)
