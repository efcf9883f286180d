"""The prediction routes: ``POST /v1/predict`` (a multipart form, one field per input) and
``POST /v1/predict/batch`` (JSON rows, files base64-encoded).

Both answer with a ready :class:`JSONResponse`, which skips FastAPI's generic (and per-request
costly) response validation and encoding.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .request_bodies import parse_batch, read_form
from .state import authorised

router = APIRouter()


@router.post("/v1/predict")
async def predict(request: Request) -> JSONResponse:
    server = authorised(request)
    row = await read_form(request, server.settings.limits)
    return JSONResponse({"outputs": (await server.infer([row]))[0]})


@router.post("/v1/predict/batch")
async def predict_batch(request: Request) -> JSONResponse:
    server = authorised(request)
    service = server.service()
    body = await request.body()  # JSON parsing and base64 decoding run off the event loop
    rows = await server.decode(parse_batch, body, service, server.settings.limits)
    outputs = await server.infer(rows, "rows[{r}].")
    return JSONResponse({"rows": [{"outputs": o} for o in outputs]})
