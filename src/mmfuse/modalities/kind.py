"""A modality (input type) as one registered unit.

Each input type is one module of this package that registers a :class:`Modality` subclass
with ``@MODALITIES.register(NAME, OPTIONS)``, ``OPTIONS`` being the pydantic model of its
``preprocess:`` settings. The class declares everything the rest of mmfuse asks about the type,
so adding a type touches no other module:

- ``preprocessor``: the class that fits on the training split and turns cells into tensors;
- ``default_encoder``: the encoder an input of the type gets when the config names none;
- ``value``: what a request field holds (``text``, ``file``, ``number``, ``category`` or
  ``binary``): how the server reads a form field or a JSON value, what the OpenAPI schema
  says, and which control the web page shows;
- ``request_value``: the server's check and decoding of one untrusted value;
- ``example_items``: made-up items for tracing and checking an ONNX export;
- ``variable_axes``: the tensors its preprocessor gives and their axes that vary by batch;
- ``missing``: which values count as missing (the row takes the missing-input path);
- ``tabular``: one value per row, whose encoder gives a single token with no position, which a
  fusion that needs positioned tokens must refuse; ``query``: a natural conditioning input.

Config validation, the pipeline, the server and the exporter ask :func:`modality` and never test
an input's type by name.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..registry import MODALITIES

if TYPE_CHECKING:
    from .base import Preprocessor


class BadValue(ValueError):
    """A request value an input cannot take; the server answers ``status`` with the message."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def blank(value: Any) -> bool:
    """Whether a value counts as missing, as an empty cell of a table does: None, no bytes, or
    text of nothing but whitespace."""
    return value is None or value == b"" or (isinstance(value, str) and not value.strip())


def check_length(text: str, limits: Any) -> None:
    """A request's text within the server's ``max_text_chars``.

    Raises:
        BadValue: 413, the text is longer.
    """
    if len(text) > limits.max_text_chars:
        raise BadValue(f"text of {len(text)} characters is over the limit of "
                       f"{limits.max_text_chars}; shorten it", 413)


class Modality:
    """What mmfuse knows about one input type (subclassed once per type)."""

    name: str = ""
    preprocessor: type[Preprocessor]
    default_encoder: str = ""
    value: str = "text"  # text | file | number | category | binary
    tabular: bool = False
    query: bool = False
    variable_axes: dict[str, dict[int, str]] = {}
    accept: str = ""  # file types the web page offers (file inputs)

    def resolve_options(self, options: Any, encoder: dict, builder: Any) -> Any:
        """The validated ``preprocess`` options, adjusted to the chosen encoder if need be.

        Raises:
            ValueError: the options do not suit the encoder (the config reports it).
        """
        return options

    def missing(self, value: Any) -> bool:
        """Whether a cell or a request value means "this row lacks the input"."""
        return blank(value)

    def request_value(self, value: Any, prep: Preprocessor, limits: Any) -> Any:
        """The value a request sent, checked and decoded into what ``prep.column_of`` takes.

        Raises:
            BadValue: the value is of the wrong kind, too large, or unreadable.
        """
        raise NotImplementedError

    def example_items(self, prep: Preprocessor, sizes: list[int],
                      rng: np.random.Generator) -> Any:
        """Column items of this type, one per entry of ``sizes`` (the length of each: words,
        tenths of a second, frames; ignored by types of fixed size), for tracing an export."""
        raise NotImplementedError

    def limits(self, limits: Any) -> dict:
        """The server's caps on a value of this type, for ``GET /v1/model``."""
        return {}

    def schema(self, prep: Preprocessor, limits: Any, json_body: bool) -> dict:
        """The OpenAPI schema of a request value: a form field, or a JSON value of
        ``/v1/predict/batch`` when ``json_body``."""
        return {"type": "string"}

    def describe(self, prep: Preprocessor) -> dict:
        """What the web page needs beyond the name and type (e.g. known values)."""
        return {}


@cache
def modality(name: str) -> Modality:
    """The registered modality ``name``.

    Raises:
        ConfigError: no modality has that name (the message lists them).
    """
    return MODALITIES.get(name).builder()


def modality_names() -> list[str]:
    """Every registered input type."""
    return MODALITIES.names()
