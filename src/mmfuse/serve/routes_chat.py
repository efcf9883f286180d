"""OpenAI's chat API: ``POST /v1/chat/completions`` (plain, or streamed as server-sent events)
and ``GET /v1/models``. How a chat request maps to the model's inputs: ``chat.py``.

A streamed answer sends ``data: {chunk}`` for each piece of text as the model writes it (on
the forward thread, handed to the event loop), then a chunk with the finish reason, and
``data: [DONE]``. A request is read and checked before the stream starts, so every refusal
is still a 4xx. A client that leaves mid-stream ends its rows at the next generated token,
which frees the forward pass at once when nobody else is in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .batcher import Overloaded, TimedOut
from .chat import (
    ChatRequest,
    StreamedText,
    choice_of,
    chunk,
    completion_body,
    completion_id,
    model_card,
    model_id,
    models_list,
    openai_error,
    parse_chat,
)
from .inputs import RequestError
from .service import Steering
from .state import ServerState, authorised

router = APIRouter()
_DONE = object()


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    return JSONResponse(models_list(authorised(request).service()))


@router.get("/v1/models/{name}")
async def model(request: Request, name: str) -> JSONResponse:
    service = authorised(request).service()
    if name != model_id(service):
        raise RequestError(404, "model", f"the model {name!r} does not exist here; this "
                           f"server serves {model_id(service)!r}")
    return JSONResponse(model_card(service))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    started = time.perf_counter()
    server = authorised(request)
    service = server.service()
    body = await request.body()  # JSON parsing and base64 decoding run off the event loop
    chat = await server.decode(parse_chat, body, service, server.settings.data_root)
    head = service.model.pipeline.model.heads[chat.output]
    texts = [StreamedText(head.decode, chat.stop) for _ in range(chat.n)] \
        if chat.generates else []
    if not chat.stream:
        steering = Steering(chat.output, chat.options, _stopper(texts) if chat.stop else None)
        outputs = await server.infer([chat.row] * chat.n, "", steering)
        return JSONResponse(completion_body(chat, outputs, steering.usage, completion_id(),
                                            int(time.time())))
    return await _stream(server, chat, texts, started)


def _stopper(texts: list[StreamedText]):
    """A listener that only ends a row once it wrote a stop string."""
    def listener(row: int, token: int) -> bool:
        texts[row].add(token)
        return texts[row].stopped
    return listener


async def _stream(server: ServerState, chat: ChatRequest, texts: list[StreamedText],
                  started: float) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    left = False  # the client went away

    def listener(row: int, token: int) -> bool:  # on the forward thread
        if left:
            return True
        delta = texts[row].add(token)
        if delta:
            loop.call_soon_threadsafe(pieces.put_nowait, (row, delta))
        return texts[row].stopped

    steering = Steering(chat.output, chat.options, listener if texts else None)
    prepared = await server.prepare([chat.row] * chat.n, "", steering)  # refusals: a 4xx
    job = asyncio.ensure_future(server.submit(prepared, started))
    job.add_done_callback(lambda _: pieces.put_nowait(_DONE))
    ident, created = completion_id(), int(time.time())

    def event(choices: list[dict], usage: dict | None = None) -> str:
        return f"data: {json.dumps(chunk(chat, ident, created, choices, usage))}\n\n"

    async def events() -> AsyncIterator[str]:
        nonlocal left
        try:
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None, "logprobs": None} for i in range(chat.n)])
            while (item := await pieces.get()) is not _DONE:
                row, delta = item
                yield event([{"index": row, "delta": {"content": delta},
                              "finish_reason": None, "logprobs": None}])
            for text in _ending(job, chat, texts, steering, event):
                yield text
        finally:
            if not job.done():  # the client left: its rows end at their next token (listener),
                left = True  # or, still queued, it is skipped
                server.metrics.abandoned.inc()
                job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _ending(job: asyncio.Future, chat: ChatRequest, texts: list[StreamedText],
            steering: Steering, event) -> list[str]:
    """The stream's last events: what was held back, each choice's finish reason, the usage
    when asked, ``[DONE]``; or the error that ended the request."""
    try:
        outputs = job.result()
    except (RequestError, TimedOut, Overloaded) as exc:
        status = exc.status if isinstance(exc, RequestError) else 503
        error = RequestError(status, None, getattr(exc, "message", str(exc)))
        return [f"data: {json.dumps(openai_error(error))}\n\n", "data: [DONE]\n\n"]
    events, usage = [], steering.usage
    for row, outputs_row in enumerate(outputs):
        content, finish = choice_of(chat, outputs_row, usage[row][1])
        rest = texts[row].take(content) if texts else content
        if rest:
            events.append(event([{"index": row, "delta": {"content": rest},
                                  "finish_reason": None, "logprobs": None}]))
        events.append(event([{"index": row, "delta": {}, "finish_reason": finish,
                              "logprobs": None}]))
    if chat.include_usage:
        prompt, completion = usage[0][0], sum(c for _, c in usage)
        events.append(event([], {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}))
    return [*events, "data: [DONE]\n\n"]
