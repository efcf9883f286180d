"""WebDataset shards: tar files whose members, grouped by key, are the rows of a table.

``--data "shards/train-{000000..000099}.tar"`` names shards with brace ranges (zero-padded as
written) and lists (``{a,b}``), as WebDataset and ``braceexpand`` read them. Within a shard, a
sample is the consecutive members that share a key (the member's path up to the first dot of
its file name). A member ``KEY.NAME.EXT`` becomes column ``NAME``; ``KEY.EXT`` becomes column
``EXT``; the top-level keys of ``KEY.json`` become columns. The value comes from the
extension: ``txt`` and ``text`` are text, ``cls`` a category (its text, stripped), ``json``
columns, anything else the member's bytes as a file (png/jpg/webp images, wav/flac/mp3 audio,
mp4/webm video are recognised by their content when decoded, like every file). Each row also
gets ``__key__`` and ``__shard__``, which name it in error messages.

This is a small reader of that layout rather than the ``webdataset`` library: it needs only
``tarfile`` (in streaming mode: a shard is read front to back, never seeked), it yields
plain rows that the rest of mmfuse reads as any table, and it reports a truncated or corrupt
shard by name and key. The tests check it against shards written by ``webdataset``'s own
``ShardWriter`` and against what ``webdataset.WebDataset`` reads from them.
"""

from __future__ import annotations

import itertools
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import DataError
from .media import Embedded
from .remote import is_url, remote_cache

TEXT = {"txt", "text"}
CATEGORY = {"cls", "cls2", "index", "label"}
BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: ``{000..099}`` (zero-padded to the
    first bound's width), ``{a,b,c}``; several braces multiply."""
    parts: list[list[str]] = []
    position = 0
    for match in BRACES.finditer(pattern):
        parts.append([pattern[position:match.start()]])
        parts.append(_alternatives(match.group(1), pattern))
        position = match.end()
    parts.append([pattern[position:]])
    return ["".join(p) for p in itertools.product(*parts)]


def _alternatives(body: str, pattern: str) -> list[str]:
    if ".." in body and "," not in body:
        low, _, high = body.partition("..")
        if not (low.isdigit() and high.isdigit()):
            raise DataError(f"{pattern!r}: a range must be of numbers, like {{000..099}}")
        width = len(low) if low.startswith("0") else 0
        step = 1 if int(high) >= int(low) else -1
        return [str(n).zfill(width) for n in range(int(low), int(high) + step, step)]
    return body.split(",")


def is_shards(source: str) -> bool:
    """Whether a ``--data`` value names WebDataset shards (``.tar``, maybe with braces)."""
    return expand_braces(source)[0].lower().endswith((".tar", ".tar.gz", ".tgz"))


def shard_names(pattern: str) -> list[str]:
    """Every shard a pattern names, checked before any is read (a typo in the pattern should
    not cost a long read first).

    Raises:
        DataError: a local shard is missing.
    """
    names = expand_braces(pattern)
    missing = [n for n in names if not is_url(n) and not Path(n).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(names)} shards not found (from {pattern!r}), "
                        f"e.g. {missing[0]!r}; check the pattern, e.g. "
                        "'shards/train-{000000..000009}.tar'")
    return names


def shards_root(names: list[str], data_root: str | Path | None) -> Path:
    """Where relative paths in shards start: ``data_root``, else the shards' folder (the
    fetched copies' folder for shards at URLs)."""
    if data_root is not None:
        return Path(data_root).resolve()
    return (remote_cache() if is_url(names[0]) else Path(names[0]).parent).resolve()


def split_member(name: str) -> tuple[str, str]:
    """A member's (key, field): ``dir/0001.image.png`` -> (``dir/0001``, ``image.png``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (field if dot else "")


def sample_row(fields: dict[str, bytes], key: str, shard: str) -> dict[str, Any]:
    """One sample's members as a row of columns (see the module's docstring)."""
    row: dict[str, Any] = {"__key__": key, "__shard__": shard}
    for field, data in fields.items():
        name, _, ext = field.rpartition(".")
        column = name or ext
        ext = ext.lower()
        if ext == "json":
            try:
                value = json.loads(data)
            except ValueError:
                raise DataError(f"{shard}, sample {key!r}: {key}.{field} is not valid "
                                "JSON") from None
            if isinstance(value, dict) and not name:
                row.update(value)
            else:
                row[column] = value
        elif ext in TEXT:
            row[column] = data.decode("utf-8")
        elif ext in CATEGORY:
            row[column] = data.decode("utf-8").strip()
        else:
            row[column] = Embedded.of(data, f"{key}.{field}")
    return row


def read_shard(stream: IO[bytes], shard: str) -> Iterator[dict[str, Any]]:
    """The rows of one shard (``stream``: its bytes), read front to back; a truncated or
    corrupt shard is a DataError naming ``shard`` and the sample."""
    key, fields = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, field = split_member(member.name)
                if member_key != key and fields:
                    yield sample_row(fields, key, shard)
                    fields = {}
                key = member_key
                if field:
                    fields[field] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{shard}: the shard is truncated or corrupt ({exc}), at sample "
                        f"{key!r}; rewrite the shard or leave it out") from None
    if fields:
        yield sample_row(fields, key, shard)
