"""Checking and decoding the values of a request, before they reach the batcher.

Every value a client sends is untrusted. A value is checked against the input it names and the
server's :class:`Limits` (size, pixels, duration, text length), recognised by its content (never
by the file name or the MIME type the client claims) and decoded by the input's own
preprocessor, so the server and ``mmfuse predict`` decode a file the same way. Anything wrong
raises :class:`RequestError` with the HTTP status, the field and the reason.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..modalities.files import FilePreprocessor, UnreadableFile
from ..pipeline import Pipeline

log = logging.getLogger("mmfuse.serve")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, the ``field`` at fault and why."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


@dataclass(frozen=True)
class Limits:
    """What one request may hold; every cap answers 413 when exceeded."""

    max_body_mb: float = 20.0  # a whole request body (all uploads together)
    max_image_pixels: int = 40_000_000  # width x height, checked before the pixels are decoded
    max_media_seconds: float = 60.0  # audio and video, read from the container header
    max_text_chars: int = 2000
    max_batch_rows: int = 64  # rows of one POST /v1/predict/batch

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass
class Prepared:
    """Decoded rows of one request, ready for the batcher: per input, one value per row."""

    values: dict[str, list[Any]]
    rows: int
    seconds: float = 0.0  # time spent checking and decoding


class RowChecker:
    """Checks and decodes request rows for the inputs of one model."""

    def __init__(self, config: Config, pipeline: Pipeline, limits: Limits) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.types = {i.name: i.type for i in config.inputs}
        # an input may be left out of a request when the model was trained to do without it
        self.optional = {i.name for i in config.inputs
                         if i.missing == "placeholder" or i.modality_dropout > 0}

    def prepare(self, rows: list[dict[str, Any]], prefix: str = "") -> Prepared:
        """Check and decode rows of ``{input name: str (text) | bytes (file) | None}``.

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
                value = row.get(name)
                if kind == "text":
                    values[name].append(self._text(value, where + name))
                else:
                    values[name].append(self._file(value, name, where + name))
        return Prepared(values, len(rows))

    def _check_fields(self, row: dict[str, Any], where: str) -> None:
        unknown = sorted(set(row) - set(self.types))
        if unknown:
            raise RequestError(422, where + unknown[0],
                               f"unknown field {unknown[0]!r}; this model's inputs are: "
                               f"{', '.join(self.types)}")
        given = {n for n, v in row.items() if not blank(v)}
        required = [n for n in self.types if n not in self.optional and n not in given]
        if required:
            raise RequestError(422, where + required[0],
                               f"missing field {required[0]!r} ({self.types[required[0]]}); "
                               "this model needs it in every request")
        if not given:
            raise RequestError(422, where.rstrip(".") or None,
                               f"no inputs given; send at least one of: {', '.join(self.types)}")

    def _text(self, value: Any, field_name: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            got = "a file upload" if isinstance(value, bytes) else type(value).__name__
            raise RequestError(422, field_name, f"expected text for {field_name!r}, got {got}")
        if len(value) > self.limits.max_text_chars:
            raise RequestError(413, field_name, f"text of {len(value)} characters is over the "
                               f"limit of {self.limits.max_text_chars}; shorten it")
        return None if blank(value) else value

    def _file(self, value: Any, name: str, field_name: str) -> Any:
        kind = self.types[name]
        if blank(value):
            return None
        if not isinstance(value, bytes):
            raise RequestError(422, field_name, f"expected an uploaded {kind} file for "
                               f"{field_name!r}, got {type(value).__name__}")
        prep: FilePreprocessor = self.pipeline.inputs[name]
        if kind == "image":  # Pillow decodes from memory
            self._check_image(value, field_name)
            return self._decode(prep, io.BytesIO(value), field_name, kind)
        with tempfile.NamedTemporaryFile(prefix="mmfuse-upload-") as upload:
            upload.write(value)  # FFmpeg and libsndfile probe a file on disk
            upload.flush()
            path = Path(upload.name)
            self._check_media(path, field_name, kind)
            return self._decode(prep, path, field_name, kind)

    @staticmethod
    def _decode(prep: FilePreprocessor, source: Path | io.BytesIO, field_name: str,
                kind: str) -> Any:
        try:
            return prep.decode(source)
        except UnreadableFile as exc:
            raise RequestError(422, field_name, f"not a readable {kind} file: "
                               f"{str(exc).splitlines()[0]}") from None
        except Exception as exc:  # a crafted file may break a decoder in any way
            log.warning("decoding %s failed: %r", field_name, exc)
            raise RequestError(422, field_name, f"not a readable {kind} file ({type(exc).__name__}"
                               ")") from None

    def _check_image(self, data: bytes, field_name: str) -> None:
        from PIL import Image, UnidentifiedImageError

        cap = self.limits.max_image_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:  # reads the header only
                    width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestError(413, field_name, f"image over the limit of {cap} pixels "
                               "(a decompression bomb?); send a smaller image") from None
        except UnidentifiedImageError:
            raise RequestError(422, field_name, "not an image file: its content is not a "
                               "format Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"
                               ) from None
        except Exception as exc:  # a crafted header may break Pillow's parser in any way
            raise RequestError(422, field_name, f"not a readable image file ({exc})") from None
        if width * height > cap:
            raise RequestError(413, field_name, f"image of {width}x{height} pixels is over the "
                               f"limit of {cap} pixels; send a smaller image")

    def _check_media(self, path: Path, field_name: str, kind: str) -> None:
        seconds = media_seconds(path, kind)
        cap = self.limits.max_media_seconds
        if seconds is None:  # decoding a stream of unknown length could take any memory
            raise RequestError(422, field_name, f"not a readable {kind} file, or its header "
                               "does not give its duration; send WAV, FLAC, OGG, MP3, M4A, "
                               "MP4, WebM or another file whose header states its length")
        if seconds > cap:
            raise RequestError(413, field_name, f"{kind} of {seconds:.1f} s is over the limit of "
                               f"{cap:g} s; send a shorter clip")


def blank(value: Any) -> bool:
    """Whether a request value counts as missing, as an empty cell of a table does: None, no
    bytes, or text of nothing but whitespace."""
    return value is None or value == b"" or (isinstance(value, str) and not value.strip())


def media_seconds(path: Path, kind: str) -> float | None:
    """Duration of an audio or video file from its header (None when the header has none or the
    file is not readable)."""
    if kind == "audio":
        try:
            import soundfile

            info = soundfile.info(str(path))
            return info.frames / info.samplerate if info.samplerate else None
        except Exception:  # not a libsndfile format: ask FFmpeg below
            pass
    try:
        import av

        with av.open(str(path)) as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                return None
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / 1_000_000 if container.duration else None
    except Exception:
        return None
