"""Media held inside a table's cells rather than in files beside it.

A file input's cell is a path, a URL (fetched through fsspec when decoded,
``data/remote.py``), or the file itself:

- raw bytes: a Parquet or Arrow ``binary`` column;
- the Hugging Face ``datasets`` struct ``{"bytes": ..., "path": ...}`` of its ``Image``,
  ``Audio`` and ``Video`` features (the bytes when they are embedded, as on the Hub; else the
  path, read as any path);
- a ``data:`` URL with base64 content, e.g. in JSONL (``data:image/png;base64,...``).

:func:`cell_media` turns a cell into a path string or an :class:`Embedded` file, which is
decoded from memory (images) or from a temporary file (audio and video, which FFmpeg probes)
and never written beside the table. An embedded file is named by a hash of its content in the
decode cache, so the same bytes hit the same entry whatever table they come in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from os import PathLike
from typing import Any


@dataclass(frozen=True)
class Embedded:
    """A file's bytes held in a table cell.

    Attributes:
        digest: SHA-256 of the bytes (hex): the file's name in the decode cache.
        data: the bytes.
        name: the path the cell gave beside the bytes (a Hugging Face struct), if any.
    """

    digest: str
    data: bytes = field(repr=False, compare=False)
    name: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, data: bytes, name: str | None = None) -> Embedded:
        return cls(hashlib.sha256(data).hexdigest(), data, name)

    @property
    def key(self) -> str:
        """How the decode cache and the unique-file index name it."""
        return f"sha256:{self.digest}"

    @property
    def suffix(self) -> str:
        """The extension of the path given beside the bytes ('' when none)."""
        if not self.name or "." not in self.name.rsplit("/", 1)[-1]:
            return ""
        return "." + self.name.rsplit(".", 1)[-1].lower()

    def describe(self) -> str:
        """How error messages name it."""
        named = f"{self.name!r}, " if self.name else ""
        return f"<embedded file {named}{len(self.data)} bytes, sha256 {self.digest[:12]}>"


def cell_media(value: Any) -> str | Embedded | None:
    """A file input's cell as a path string, an embedded file, or None (missing).

    Raises:
        ValueError: a ``data:`` URL that is not base64, or a value of another type (the
            caller names the cell).
    """
    if value is None or isinstance(value, Embedded):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Embedded.of(bytes(value)) if len(value) else None
    if isinstance(value, dict):
        return _feature_struct(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, float) and value != value:  # NaN: pandas' empty cell
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # a file named by a number
    if isinstance(value, str):
        if value.startswith("data:"):
            return _data_url(value)
        return value if value.strip() else None
    raise ValueError(f"expected a file path, the file's bytes, a {{bytes, path}} struct or a "
                     f"data: URL, got {type(value).__name__}")


def cell_key(cell: str | PathLike | Embedded | None) -> str | PathLike | None:
    """What names a cell's file among the others: its path or URL, or an embedded file's
    content key."""
    return cell.key if isinstance(cell, Embedded) else cell


def _feature_struct(value: dict) -> str | Embedded | None:
    """The Hugging Face ``{bytes, path}`` struct: its bytes, else its path."""
    if not set(value) & {"bytes", "path"}:
        raise ValueError("a struct cell must be the Hugging Face {bytes, path} of an Image, "
                         f"Audio or Video feature; this one has: {', '.join(map(str, value))}")
    data, path = value.get("bytes"), value.get("path")
    if data:
        return Embedded.of(bytes(data), str(path) if path else None)
    return str(path) if path else None


def _data_url(value: str) -> Embedded:
    head, comma, payload = value.partition(",")
    if not comma or not head.endswith(";base64"):
        raise ValueError("a data: URL must carry base64 content ('data:image/png;base64,...')")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data: URL's content is not valid base64") from None
    subtype = head[5:].split(";", 1)[0].rsplit("/", 1)[-1]
    return Embedded.of(data, f"data.{subtype}" if subtype else None)
