"""How the server answers what goes wrong: every refusal is JSON
``{"error": {"status", "field", "message"}}`` (:meth:`RequestError.body`).

The OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``) answer in OpenAI's
shape instead, ``{"error": {"message", "type", "param", "code"}}``
(:func:`.chat.openai_error`), which OpenAI's clients read.

A bad request is a 4xx naming its field; a full queue is 429 and a missed deadline 503, both
with ``Retry-After``; an unknown route or method is 404 or 405; anything unexpected is a 500
whose details go to the server log only.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Overloaded, TimedOut
from .chat import refusal_body
from .inputs import RequestError


def refusal(request: Request, exc: RequestError, headers: dict | None = None) -> JSONResponse:
    """``exc`` as a JSON answer in the shape the route's clients read."""
    return JSONResponse(refusal_body(request.url.path, exc), status_code=exc.status,
                        headers=headers)

log = logging.getLogger("mmfuse.serve")


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return refusal(request, exc, headers)


async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    return refusal(request, RequestError(429, None, str(exc)), {"Retry-After": "1"})


async def timed_out(request: Request, exc: TimedOut) -> JSONResponse:
    return refusal(request, RequestError(503, None, str(exc)), {"Retry-After": "1"})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return refusal(request, RequestError(500, None, "internal error; the server log has "
                                         "the details"))


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no route {request.url.path}; see GET / or GET /v1/model",
               405: f"{request.method} is not allowed on {request.url.path}"}
    return refusal(request, RequestError(exc.status_code, None,
                                         message.get(exc.status_code, str(exc.detail))),
                   exc.headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error ``app`` raises as a JSON refusal."""
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(Overloaded, overloaded)
    app.add_exception_handler(TimedOut, timed_out)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
