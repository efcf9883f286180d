"""OpenAI's chat API over any served model: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A chat request becomes one row of the model's inputs (:func:`parse_chat`):

- Only the **last user message** is read. The models here answer one turn from a prompt fixed
  at training, so earlier turns and system messages are not part of their input.
- **Media parts** map by modality, in order: the k-th ``image_url`` part to the model's k-th
  image input, ``input_audio`` parts to its audio inputs, ``video_url`` parts (vLLM's
  extension) to its video inputs. A ``data:`` URL carries the bytes. A ``file:`` URL is read
  only under the server's ``--data-root``. ``http(s)`` URLs are refused: the server fetches
  nothing, so a request cannot point it at the network.
- **Text parts** go to the text inputs. With one text input, every text part, joined by new
  lines. With several, the k-th text part goes to the k-th text input, and any other count of
  parts is refused with the inputs' names. A model without text inputs ignores text parts.
- **Other inputs** (numbers, categories, tables) come from a text part holding a JSON object
  of ``{input name: value}``, or from a top-level ``mmfuse_inputs`` object (files there are
  base64, as in ``/v1/predict/batch``).

The answer is the model's first text output, or else its first output, as text (a category's
label, a number, a set's labels joined by commas); ``mmfuse`` names the output that answered
and carries the whole ``predict --json`` answer. Unset parameters keep the model's configured
decoding, so a chat answer equals ``predict``'s. ``temperature: 0`` is greedy; a temperature
above 0 or a ``top_p`` below 1 samples; ``max_tokens``, ``stop``, ``seed`` and ``n`` apply to
text outputs; ``min_tokens`` (vLLM's extension) holds the end token back. Refusals use
OpenAI's error shape (:func:`openai_error`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modalities.kind import modality
from .inputs import RequestError, decode_base64

MEDIA_PARTS = {"image_url": "image", "input_audio": "audio", "video_url": "video"}
MAX_TOKENS = 4096  # the most new tokens one request may ask for
MAX_CHOICES = 16
MAX_STOPS = 4  # as OpenAI
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# accepted only at the value that changes nothing, since the models cannot do otherwise
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logprobs": False}
KNOWN = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
         "stop", "seed", "n", "stream", "stream_options", "mmfuse_inputs", "min_tokens",
         "response_format", *IGNORED, *NEUTRAL}


def openai_error(exc: RequestError) -> dict:
    """A refusal in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(exc.status, "server_error" if exc.status >= 500
                                         else "invalid_request_error")
    code = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
            429: "rate_limit_exceeded", 503: "service_unavailable"}.get(exc.status)
    return {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": code}}


OPENAI_ROUTES = ("/v1/chat/", "/v1/models")


def refusal_body(path: str, exc: RequestError) -> dict:
    """A refusal in the shape the route's clients read: OpenAI's on its routes."""
    return openai_error(exc) if path.startswith(OPENAI_ROUTES) else exc.body()


def model_id(service) -> str:
    """The served model's name in ``/v1/models``: the run directory's (or bundle's) name."""
    return Path(service.source).name or "mmfuse"


def models_list(service) -> dict:
    return {"object": "list", "data": [model_card(service)]}


def model_card(service) -> dict:
    created = int(Path(service.source).stat().st_mtime) if Path(service.source).exists() \
        else int(time.time())
    return {"id": model_id(service), "object": "model", "created": created,
            "owned_by": "mmfuse"}


@dataclass
class ChatRequest:
    """A chat request read and checked: the model's row, and how to answer it."""

    row: dict[str, Any]
    output: str  # the output that answers
    generates: bool  # whether that output writes text (the generation parameters apply)
    options: dict[str, Any] = field(default_factory=dict)  # the head's option updates
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    model: str = ""


def parse_chat(body: bytes, service, data_root: str | None) -> ChatRequest:
    """Read a ``/v1/chat/completions`` body into a :class:`ChatRequest` (see the module).

    Raises:
        RequestError: what is wrong, naming the parameter (OpenAI's ``param``).
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, None, f"the body is not valid JSON ({exc}); send OpenAI's "
                           'chat request {"model": ..., "messages": [...]}') from None
    if not isinstance(data, dict):
        raise RequestError(400, None, "the body must be a JSON object with 'model' and "
                           "'messages'")
    for key in data:
        if key not in KNOWN:
            raise RequestError(400, key, f"unsupported parameter {key!r}; this server takes: "
                               f"{', '.join(sorted(KNOWN - IGNORED))}")
    for key, neutral in NEUTRAL.items():
        if data.get(key) not in (None, neutral):
            raise RequestError(400, key, f"{key}={data[key]!r} is not supported; leave it "
                               f"unset or {json.dumps(neutral)}")
    fmt = data.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise RequestError(400, "response_format", "only response_format {\"type\": "
                           "\"text\"} is supported")
    name = model_id(service)
    if not isinstance(data.get("model"), str):
        raise RequestError(400, "model", f"'model' is required; this server serves {name!r}")
    if data["model"] != name:
        raise RequestError(404, "model", f"the model {data['model']!r} does not exist here; "
                           f"this server serves {name!r} (GET /v1/models)")
    chat = _answering(service)
    chat.model = name
    chat.row = _row(data, service, data_root)
    _parameters(chat, data, service)
    return chat


def _answering(service) -> ChatRequest:
    """The output that answers: the first text output, else the first output."""
    config, heads = service.model.config, service.model.pipeline.model.heads
    outputs = [o.name for o in config.outputs if o.type == "text"] or \
        [config.outputs[0].name]
    output = outputs[0]
    head = heads[output]
    return ChatRequest(row={}, output=output, generates=bool(head.traits.generates))


def _number(data: dict, key: str, low: float, high: float, low_open: bool = False
            ) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (low < value if low_open else low <= value) or value > high:
        raise RequestError(400, key, f"{key} must be a number in "
                           f"{'(' if low_open else '['}{low:g}, {high:g}]; got {value!r}")
    return float(value)


def _integer(data: dict, key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, key, f"{key} must be an integer from {low} to {high}; "
                           f"got {value!r}")
    return value


def _parameters(chat: ChatRequest, data: dict, service) -> None:
    limits = [v for v in (_integer(data, "max_tokens", 1, MAX_TOKENS),
                          _integer(data, "max_completion_tokens", 1, MAX_TOKENS))
              if v is not None]
    if len(set(limits)) > 1:
        raise RequestError(400, "max_completion_tokens", "max_tokens and "
                           "max_completion_tokens differ; send one of them")
    chat.max_tokens = limits[0] if limits else None
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "seed", f"seed must be an integer; got {seed!r}")
    chat.n = _integer(data, "n", 1, min(MAX_CHOICES, service.limits.max_batch_rows)) or 1
    chat.stop = _stops(data.get("stop"))
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, "stream", f"stream must be true or false; got {stream!r}")
    chat.stream = bool(stream)
    options = data.get("stream_options")
    if options is not None:
        if not chat.stream:
            raise RequestError(400, "stream_options", "stream_options needs stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise RequestError(400, "stream_options", "stream_options takes only "
                               "{\"include_usage\": true|false}")
        chat.include_usage = bool(options.get("include_usage"))
    sampling = (_number(data, "temperature", 0, 2), _number(data, "top_p", 0, 1, True), seed,
                _integer(data, "min_tokens", 0, MAX_TOKENS))
    if chat.generates:  # a category, number, binary or set answer has nothing to sample
        chat.options = _generation(chat, service.model.pipeline.model.heads[chat.output],
                                   *sampling)


def _generation(chat: ChatRequest, head, temperature: float | None, top_p: float | None,
                seed: int | None, min_tokens: int | None) -> dict[str, Any]:
    """The text head's option updates for this request; unset keeps its own."""
    updates: dict[str, Any] = {}
    if temperature == 0:
        updates["decoding"] = "greedy"
    elif temperature is not None or (top_p is not None and top_p < 1):
        updates.update(decoding="sample", temperature=temperature or 1.0, top_p=top_p or 1.0,
                       top_k=0)
    if seed is not None:
        updates["seed"] = seed
    length_key = "max_new_tokens" if hasattr(head.options, "max_new_tokens") else "max_length"
    if chat.max_tokens is not None:
        updates[length_key] = chat.max_tokens
    if min_tokens:
        if min_tokens > (chat.max_tokens or getattr(head.options, length_key)):
            raise RequestError(400, "min_tokens", "min_tokens is more than the most tokens "
                               "the answer may have (max_tokens)")
        updates["min_tokens"] = min_tokens
    if head.options.decoding == "beam" and updates.get("decoding") in ("greedy", "sample"):
        updates["hypotheses"] = 1  # one text per row once the beam is off
    return updates


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > MAX_STOPS:
        raise RequestError(400, "stop", f"stop must be a string or a list of at most "
                           f"{MAX_STOPS} non-empty strings")
    return stops


def _last_user_content(data: dict) -> list[dict]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages", "'messages' must be a non-empty list of "
                           '{"role": ..., "content": ...}')
    last = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}]", "each message needs a 'role' (one of "
                               f"{', '.join(sorted(ROLES))}) and 'content'")
        if message["role"] == "user":
            last = i
    if last is None:
        raise RequestError(400, "messages", "no user message; the model answers the last "
                           "message whose role is 'user'")
    content = messages[last].get("content")
    where = f"messages[{last}].content"
    if isinstance(content, str):
        return [{"type": "text", "text": content, "_where": where}]
    if not isinstance(content, list) or not content:
        raise RequestError(400, where, "content must be a string or a non-empty list of "
                           "content parts")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(400, f"{where}[{j}]", "each content part needs a 'type'")
        parts.append({**part, "_where": f"{where}[{j}]"})
    return parts


def _row(data: dict, service, data_root: str | None) -> dict[str, Any]:
    """The model's row from the last user message and ``mmfuse_inputs``."""
    types = service.checker.types  # input name -> config type, in config order
    by_kind: dict[str, list[str]] = {}
    for name, kind in types.items():
        by_kind.setdefault(modality(kind).name, []).append(name)
    row: dict[str, Any] = {}
    media: dict[str, list[bytes]] = {}
    texts: list[str] = []
    for part in _last_user_content(data):
        where, kind = part["_where"], part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, where + ".text", "a text part needs a string 'text'")
            fields = _json_inputs(text, types)
            if fields is not None:
                _merge(row, fields, where)
            else:
                texts.append(text)
        elif kind in MEDIA_PARTS:
            media.setdefault(MEDIA_PARTS[kind], []).append(_media(part, kind, where, data_root))
        else:
            raise RequestError(400, where + ".type", f"unsupported content part {kind!r}; use "
                               f"text, {', '.join(MEDIA_PARTS)}")
    for kind, values in media.items():
        names = by_kind.get(kind, [])
        if len(values) > len(names):
            raise RequestError(400, "messages", f"the message has {len(values)} {kind} "
                               f"part(s) but the model has {len(names)} {kind} input(s)"
                               + (f": {', '.join(names)}" if names else ""))
        _merge(row, dict(zip(names, values, strict=False)), "messages")
    text_inputs = by_kind.get("text", [])
    if texts and text_inputs:
        if len(text_inputs) == 1:
            _merge(row, {text_inputs[0]: "\n".join(texts)}, "messages")
        elif len(texts) == len(text_inputs):
            _merge(row, dict(zip(text_inputs, texts, strict=True)), "messages")
        else:
            raise RequestError(400, "messages", f"the model has {len(text_inputs)} text "
                               f"inputs ({', '.join(text_inputs)}) and the message "
                               f"{len(texts)} text part(s); send one text part per input, "
                               "in that order, or name them in mmfuse_inputs")
    extra = data.get("mmfuse_inputs")
    if extra is not None:
        if not isinstance(extra, dict):
            raise RequestError(400, "mmfuse_inputs", "mmfuse_inputs must be an object of "
                               "{input name: value}")
        files = {n for n, k in types.items() if modality(k).value == "file"}
        decoded = {n: _base64(v, f"mmfuse_inputs.{n}") if n in files and v is not None else v
                   for n, v in extra.items()}
        _merge(row, decoded, "mmfuse_inputs")
    return row


def _json_inputs(text: str, types: dict[str, str]) -> dict | None:
    """A text part that is a JSON object of this model's input names, else None."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(value, dict) and value and set(value) <= set(types) and not all(
            modality(types[n]).name == "text" for n in value):
        return value
    return None


def _merge(row: dict, values: dict, where: str) -> None:
    for name, value in values.items():
        if name in row:
            raise RequestError(400, where, f"input {name!r} is given twice")
        row[name] = value


def _media(part: dict, kind: str, where: str, data_root: str | None) -> bytes:
    body = part.get(kind)
    if kind == "input_audio":
        if not isinstance(body, dict) or not isinstance(body.get("data"), str):
            raise RequestError(400, where + ".input_audio", "input_audio needs 'data' (the "
                               "file's bytes in base64) and 'format'")
        return _base64(body["data"], where + ".input_audio.data")
    url = body.get("url") if isinstance(body, dict) else body if isinstance(body, str) else None
    if not isinstance(url, str):
        raise RequestError(400, f"{where}.{kind}", f"{kind} needs a 'url'")
    return read_url(url, f"{where}.{kind}.url", data_root)


def read_url(url: str, where: str, data_root: str | None) -> bytes:
    """The bytes behind a ``data:`` URL, or a ``file:`` URL under ``data_root``."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise RequestError(400, where, "a data: URL must be base64 "
                               "(data:<type>;base64,<bytes>)")
        return _base64(payload, where)
    if scheme in ("http", "https"):
        raise RequestError(400, where, "the server fetches no http(s) URLs (so a request "
                           "cannot point it at the network); send the file inline as a "
                           "data:<type>;base64,... URL")
    if scheme == "file":
        if data_root is None:
            raise RequestError(400, where, "file: URLs are off; start the server with "
                               "--data-root DIR to read files under DIR, or send a data: URL")
        root = Path(data_root).resolve()
        path = Path(url[len("file:"):].removeprefix("//")).resolve()
        if not path.is_relative_to(root):
            raise RequestError(403, where, f"{path} is outside the server's --data-root")
        if not path.is_file():
            raise RequestError(400, where, f"no file {path} under the --data-root")
        return path.read_bytes()
    raise RequestError(400, where, "expected a data: URL (or file: under --data-root)")


def _base64(value: Any, where: str) -> bytes:
    return decode_base64(value, where, status=400)  # OpenAI's status for a bad request


# --- the answer ------------------------------------------------------------------------------

def as_text(prediction: Any) -> str:
    """An output's prediction as the message's content."""
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, list):
        return ", ".join(str(p) for p in prediction)
    return json.dumps(prediction)


def clip_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (which is left out), and whether one was there."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def choice_of(chat: ChatRequest, outputs: dict, completion: int) -> tuple[str, str]:
    """The content and finish reason of one choice."""
    content, stopped = clip_at_stop(as_text(outputs[chat.output]["prediction"]), chat.stop)
    limit = chat.max_tokens or 0
    length = chat.generates and not stopped and limit and completion >= limit
    return content, "length" if length else "stop"


def completion_body(chat: ChatRequest, rows: list[dict], usage: list[tuple[int, int]],
                    ident: str, created: int) -> dict:
    """The non-streamed answer."""
    choices = []
    for index, (outputs, (_, completion)) in enumerate(zip(rows, usage, strict=True)):
        content, finish = choice_of(chat, outputs, completion)
        choices.append({"index": index, "message": {"role": "assistant", "content": content},
                        "finish_reason": finish, "logprobs": None})
    prompt = usage[0][0] if usage else 0
    completion = sum(c for _, c in usage)
    return {"id": ident, "object": "chat.completion", "created": created, "model": chat.model,
            "choices": choices, "usage": {"prompt_tokens": prompt,
                                          "completion_tokens": completion,
                                          "total_tokens": prompt + completion},
            "mmfuse": {"answered_by": chat.output, "outputs": rows[0]}}


def chunk(chat: ChatRequest, ident: str, created: int, choices: list[dict],
          usage: dict | None = None) -> dict:
    body = {"id": ident, "object": "chat.completion.chunk", "created": created,
            "model": chat.model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


class StreamedText:
    """One choice's text as it is generated: what may be sent so far (never a half-decoded
    character, never the start of a stop string that may yet complete), and whether a stop
    string was written, which ends the row."""

    def __init__(self, decode, stops: list[str]) -> None:
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """The new text to send after ``token`` ("" when nothing is safe to send yet)."""
        self.ids.append(token)
        text = self.decode(self.ids)
        text, self.stopped = clip_at_stop(text, self.stops)
        if not self.stopped:
            if text.endswith("\ufffd"):  # a character whose bytes are not all written yet
                return ""
            text = text[:len(text) - self._held(text)]
        return self.take(text)

    def _held(self, text: str) -> int:
        """Characters at the end of ``text`` that could begin a stop string."""
        return max((k for s in self.stops for k in range(1, len(s))
                    if text.endswith(s[:k])), default=0)

    def take(self, text: str) -> str:
        """The part of ``text`` not sent yet (the final text settles what was held)."""
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
