"""Checking and decoding the values of a request, before they reach the batcher.

Every value a client sends is untrusted. A value is checked against the input it names and the
server's :class:`Limits` (size, pixels, duration, text length) by the input's modality
(``Modality.request_value``: a file is recognised by its content, never by the file name or
the MIME type the client claims, and decoded by the input's own preprocessor, so the server and
``mmfuse predict`` decode it the same way). Anything wrong raises :class:`RequestError` with the
HTTP status, the field and the reason.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..modalities.kind import BadValue, modality
from ..pipeline import Pipeline
from .settings import Limits

log = logging.getLogger("mmfuse.serve")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, the ``field`` at fault and why."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


@dataclass
class Prepared:
    """Decoded rows of one request, ready for the batcher: per input, one value per row."""

    values: dict[str, list[Any]]
    rows: int
    seconds: float = 0.0  # time spent checking and decoding
    steering: Any = None  # a chat request's generation settings (service.Steering)

    @property
    def key(self) -> tuple:
        """Jobs share a forward pass only when their keys are equal (same generation)."""
        return () if self.steering is None else self.steering.key


class RowChecker:
    """Checks and decodes request rows for the inputs of one model."""

    def __init__(self, config: Config, pipeline: Pipeline, limits: Limits) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.types = {i.name: i.type for i in config.inputs}
        # an input may be left out of a request when the model was trained to do without it,
        # or when every output is a causal LM that reads the inputs (a missing one leaves no
        # block in its prompt: with no media it answers as the plain LM)
        lm_only = all(head.traits.reads_inputs for head in pipeline.model.heads.values())
        self.optional = {i.name for i in config.inputs
                         if lm_only or i.missing == "placeholder" or i.modality_dropout > 0}

    def prepare(self, rows: list[dict[str, Any]], prefix: str = "") -> Prepared:
        """Check and decode rows of ``{input name: value}`` (text, bytes of a file, a number, a
        boolean, or None).

        Args:
            prefix: how fields are named in errors, e.g. ``"rows[3]."`` for batch rows.

        Raises:
            RequestError: the first problem found, naming its field.
        """
        values: dict[str, list[Any]] = {name: [] for name in self.types}
        for r, row in enumerate(rows):
            where = prefix.format(r=r)
            self._check_fields(row, where)
            for name, kind in self.types.items():
                field_name = where + name
                try:
                    values[name].append(modality(kind).request_value(
                        row.get(name), self.pipeline.inputs[name], self.limits))
                except BadValue as exc:
                    raise RequestError(exc.status, field_name,
                                       f"{field_name!r}: {exc}") from None
        return Prepared(values, len(rows))

    def _check_fields(self, row: dict[str, Any], where: str) -> None:
        unknown = sorted(set(row) - set(self.types))
        if unknown:
            raise RequestError(422, where + unknown[0],
                               f"unknown field {unknown[0]!r}; this model's inputs are: "
                               f"{', '.join(self.types)}")
        given = {n for n, v in row.items() if n in self.types
                 and not modality(self.types[n]).missing(v)}
        required = [n for n in self.types if n not in self.optional and n not in given]
        if required:
            raise RequestError(422, where + required[0],
                               f"missing field {required[0]!r} ({self.types[required[0]]}); "
                               "this model needs it in every request")
        if not given:
            raise RequestError(422, where.rstrip(".") or None,
                               f"no inputs given; send at least one of: {', '.join(self.types)}")


def decode_base64(value: object, field_name: str, status: int = 422) -> bytes:
    """Decode a base64 file value (a ``data:...;base64,`` prefix is allowed); a bad one is
    refused with ``status``."""
    if not isinstance(value, str):
        raise RequestError(status, field_name, f"expected the file as a base64 string, got "
                           f"{type(value).__name__}")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(status, field_name, "not valid base64; encode the file's bytes with "
                           "base64 (RFC 4648)") from None
