"""The OpenAPI schema of one served model (``GET /openapi.json``).

The schema describes the real request fields of the model being served, as each input's
modality declares them (``Modality.schema``: a text field with its length cap, a file upload,
a number, a category value, a yes/no), which of them every request needs, the answer of each
output type, and every refusal (``{"error": {"status", "field", "message"}}``). A client can be
generated from it, and the test suite fuzzes the server with it (schemathesis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..modalities.kind import modality
from ..outputs import output_type

if TYPE_CHECKING:
    from .service import Service

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "field", "message"],
    "properties": {"status": {"type": "integer"}, "field": {"type": ["string", "null"]},
                   "message": {"type": "string"}}}}}
ERRORS = {str(code): {"description": why, "content": {"application/json": {"schema": ERROR}}}
          for code, why in (
              (400, "malformed body"), (401, "missing or wrong API key"),
              (413, "over a size limit"), (415, "wrong content type"),
              (422, "a field is missing, unknown or unreadable"), (429, "the queue is full"),
              (503, "the model is loading, or the request timed out"))}
OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
PART = {"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["text", "image_url", "input_audio", "video_url"]},
    "text": {"type": "string"},
    "image_url": {"type": "object", "properties": {"url": {"type": "string"}}},
    "video_url": {"type": "object", "properties": {"url": {"type": "string"}}},
    "input_audio": {"type": "object", "properties": {"data": {"type": "string"},
                                                      "format": {"type": "string"}}}}}
CHAT = {"type": "object", "required": ["model", "messages"], "properties": {
    "model": {"type": "string"},
    "messages": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role", "content"], "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [{"type": "string"},
                                  {"type": "array", "items": PART}]}}}},
    "temperature": {"type": "number"}, "top_p": {"type": "number"},
    "max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "seed": {"type": "integer"}, "n": {"type": "integer"}, "stream": {"type": "boolean"},
    "min_tokens": {"type": "integer"}, "mmfuse_inputs": {"type": "object"}}}
HEALTH = {"200": {"description": "the model is loaded", "content": {
              "application/json": {"schema": {"type": "object"}}}},
          "503": {"description": "loading, or failed", "content": {
              "application/json": {"schema": {"type": "object"}}}}}


def output_schema(kind: str, head_info: dict) -> dict:
    """The answer of one output of type ``kind`` (``head_info``: its head's ``describe()``),
    as its output type declares it."""
    return output_type(kind).answer_schema(head_info)


def openapi_schema(service: Service, secured: bool = False) -> dict:
    """OpenAPI 3.1 for the routes of :func:`~mmfuse.serve.app.create_app` serving
    ``service``'s model (``secured``: the server asks for an API key)."""
    form, row, required = request_fields(service)
    info = service.describe()
    outputs = {"type": "object", "required": [o["name"] for o in info["outputs"]],
               "properties": {o["name"]: output_schema(o["type"], o)
                              for o in info["outputs"]}}
    answer = {"type": "object", "required": ["outputs"], "properties": {"outputs": outputs}}
    security = [{"bearer": []}] if secured else []
    rows = {"type": "array", "minItems": 1, "maxItems": service.limits.max_batch_rows,
            "items": {"type": "object", "properties": row, "required": required,
                      "additionalProperties": False}}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"mmfuse model {service.source}", "version": "1",
                 "description": "Predictions of one mmfuse model: one field per input."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": ERROR}},
        "paths": {
            "/health": {"get": {"operationId": "health", "responses": HEALTH}},
            "/v1/model": {"get": {"operationId": "model", "security": security,
                                  "responses": json_answer({"type": "object"},
                                                           "the model's inputs and outputs")}},
            "/v1/predict": {"post": {
                "operationId": "predict", "security": security,
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "properties": form, "required": required,
                               "additionalProperties": False}}}},
                "responses": json_answer(answer, "every output's prediction")}},
            "/v1/predict/batch": {"post": {
                "operationId": "predict_batch", "security": security,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["rows"],
                               "additionalProperties": False,
                               "properties": {"rows": rows}}}}},
                "responses": json_answer({"type": "object", "required": ["rows"], "properties": {
                    "rows": {"type": "array", "items": answer}}}, "predictions per row")}},
            "/v1/chat/completions": {"post": {
                "operationId": "chat_completions", "security": security,
                "description": "OpenAI's chat API (serve/chat.py: how a message maps to the "
                "inputs); stream: true answers as server-sent events",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": CHAT}}},
                "responses": openai_answer("a chat completion, or its chunks as events")}},
            "/v1/models": {"get": {"operationId": "models", "security": security,
                                   "responses": openai_answer("the served model")}},
        },
    }


def request_fields(service: Service) -> tuple[dict, dict, list[str]]:
    """Each input's form field, its JSON value in a batch row, and the inputs every request
    needs."""
    config, pipeline, limits = service.model.config, service.model.pipeline, service.limits
    required = [i.name for i in config.inputs if i.name not in service.checker.optional]
    form, row = {}, {}
    for spec in config.inputs:
        kind, prep = modality(spec.type), pipeline.inputs[spec.name]
        form[spec.name] = {**kind.schema(prep, limits, False),
                           "description": f"{spec.type} input {spec.name!r}"}
        row[spec.name] = {"anyOf": [kind.schema(prep, limits, True), {"type": "null"}],
                          "description": f"{spec.type} input {spec.name!r} (null: missing)"}
    return form, row, required


def openai_answer(what: str) -> dict:
    """An OpenAI route's responses: refusals in OpenAI's error shape."""
    errors = {code: {"description": e["description"], "content": {"application/json": {
        "schema": OPENAI_ERROR}}} for code, e in ERRORS.items()}
    return {"200": {"description": what, "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}}}},
        "404": {"description": "no such model", "content": {"application/json": {
            "schema": OPENAI_ERROR}}}, "403": {"description": "a file: URL outside "
                                                 "--data-root", "content": {
            "application/json": {"schema": OPENAI_ERROR}}}, **errors}


def json_answer(schema: dict, what: str) -> dict:
    """A route's responses: ``schema`` on success, the error shape on every refusal."""
    return {"200": {"description": what, "content": {"application/json": {
        "schema": schema}}}, **ERRORS}
