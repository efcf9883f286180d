"""The cap on a request body's size: :class:`BodyLimit` answers 413 before a large body is read."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .chat import refusal_body
from .inputs import RequestError


class BodyTooLarge(Exception):
    """The streamed body passed the limit (raised inside :class:`BodyLimit`, answered 413)."""


class BodyLimit:
    """Answers 413 to a body over ``max_bytes``: at once when Content-Length says so, else as
    soon as the streamed body passes the limit (a client may send no length, or lie)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = RequestError(413, None, f"the request body is over the limit of "
                               f"{self.max_bytes} bytes; send smaller files or raise "
                               "--max-body-mb")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse(refusal_body(scope["path"], refusal),
                               status_code=413)(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await JSONResponse(refusal_body(scope["path"], refusal),
                               status_code=413)(scope, receive, send)
