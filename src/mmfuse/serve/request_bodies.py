"""Reading a request's body into rows of ``{input name: value}``, before they are checked.

``POST /v1/predict`` sends a multipart form, one field per input (:func:`read_form`);
``POST /v1/predict/batch`` sends JSON rows with files base64-encoded (:func:`parse_batch`).
Each value is then checked and decoded by :class:`~mmfuse.serve.inputs.RowChecker`.
"""

from __future__ import annotations

import json

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from ..modalities.kind import modality
from .body_limit import BodyTooLarge
from .inputs import RequestError, decode_base64
from .service import Service
from .settings import Limits


async def read_form(request: Request, limits: Limits) -> dict:
    """The fields of a multipart (or url-encoded) form: bytes for files, str for text."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise RequestError(415, None, f"expected a multipart/form-data form with one field per "
                           f"input, got content type {content_type or 'none'!r}; for JSON use "
                           "POST /v1/predict/batch")
    try:
        form = await request.form(max_files=64, max_fields=256,
                                  max_part_size=limits.max_body_bytes)
    except (StarletteHTTPException, BodyTooLarge):
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise RequestError(400, None, f"malformed form data: {exc}") from None
    row: dict = {}
    try:
        for name, value in form.multi_items():
            if name in row:
                raise RequestError(422, name, f"field {name!r} is given more than once")
            row[name] = await value.read() if isinstance(value, UploadFile) else value
    finally:
        await form.close()
    return row


def parse_batch(body: bytes, service: Service, limits: Limits) -> list[dict]:
    """Rows of a ``{"rows": [...]}`` request with base64 file values decoded to bytes."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, and
        # the ValueError of an integer with more digits than Python converts
        raise RequestError(400, None, f"the body is not valid JSON ({exc}); send "
                           '{"rows": [{"input": value, ...}, ...]}') from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise RequestError(422, "rows", 'expected a JSON object {"rows": [...]} with a list of '
                           "row objects")
    extra = sorted(set(data) - {"rows"})
    if extra:
        raise RequestError(422, extra[0], f"unknown key {extra[0]!r}; only 'rows' is allowed")
    rows = data["rows"]
    if not rows:
        raise RequestError(422, "rows", "no rows given")
    if len(rows) > limits.max_batch_rows:
        raise RequestError(413, "rows", f"{len(rows)} rows is over the limit of "
                           f"{limits.max_batch_rows}; split the request")
    files = {name for name, kind in service.checker.types.items()
             if modality(kind).value == "file"}
    decoded = []
    for r, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{r}]", "each row must be a JSON object of "
                               "{input name: value}")
        out = dict(row)
        for name, value in row.items():
            if name in files and value is not None:
                out[name] = decode_base64(value, f"rows[{r}].{name}")
        decoded.append(out)
    return decoded
