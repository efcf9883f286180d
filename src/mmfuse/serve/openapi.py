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


def json_answer(schema: dict, what: str) -> dict:
    """A route's responses: ``schema`` on success, the error shape on every refusal."""
    return {"200": {"description": what, "content": {"application/json": {
        "schema": schema}}}, **ERRORS}
