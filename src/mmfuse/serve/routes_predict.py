"""The prediction routes: ``POST /v1/predict`` (a multipart form, one field per input) and
``POST /v1/predict/batch`` (JSON rows, files base64-encoded).

They are plain Starlette routes answering a ready :class:`JSONResponse`: FastAPI's request
handling (dependencies, response validation and encoding) cost a small model's server about a
twentieth of its speed, and these routes need none of it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .request_bodies import parse_batch, read_form
from .state import authorised


async def predict(request: Request) -> JSONResponse:
    server = authorised(request)
    row = await read_form(request, server.settings.limits)
    return JSONResponse({"outputs": (await server.infer([row]))[0]})


async def predict_batch(request: Request) -> JSONResponse:
    server = authorised(request)
    body = await request.body()  # JSON parsing and base64 decoding run off the event loop,
    limits = server.settings.limits  # with the rows' checks, in one trip to a decoding thread
    outputs = await server.infer(lambda service: parse_batch(body, service, limits),
                                 "rows[{r}].")
    return JSONResponse({"rows": [{"outputs": o} for o in outputs]})


ROUTES = [Route("/v1/predict", predict, methods=["POST"]),
          Route("/v1/predict/batch", predict_batch, methods=["POST"])]
