"""The gallery: per output, the rows answered right and wrong with the most confidence, each
with its inputs as the model received them.

Media come from the encoded table, so nothing is decoded twice and the gallery shows what the
model saw and heard: an image as its preprocessor resized it, a video's middle kept frame as a
poster, an audio clip's first seconds after decoding and resampling. To keep the file small,
pictures are JPEG thumbnails of at most THUMB pixels a side (smaller ones are scaled up by the
page, not in the file) and audio is a few seconds of mono 16-bit WAV at AUDIO_RATE Hz.
"""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..modalities.base import MISSING
from ..modalities.kind import modality
from ..outputs import output_type
from .collect import Outcomes, ReportData
from .html import Section, esc, paragraph

PER_KIND = 6  # cards for the right answers, and again for the wrong ones, per output
THUMB = 96  # longest side of a thumbnail, in pixels
AUDIO_SECONDS = 3.0
AUDIO_RATE = 8000  # Hz; clips at a lower rate keep theirs
TEXT_CHARS = 200  # longer text inputs are cut


def most_confident(o: Outcomes, right: bool, k: int = PER_KIND) -> list[int]:
    """The ``k`` rows with a true value, answered right (or wrong), most confident first."""
    rows = np.flatnonzero(o.known & (o.right == right))
    return [int(i) for i in rows[np.argsort(-o.confidence[rows], kind="stable")][:k]]


def gallery_section(report: ReportData) -> Section:
    """Cards of the most confident right and wrong rows of every output."""
    media = Media(report)
    parts = [paragraph(f"Per output, the {PER_KIND} rows answered right and the {PER_KIND} "
                       "answered wrong with the highest confidence (top probability for a "
                       "category, the generated text's score for a text output). Inputs are "
                       "shown as the model received them.", note=True)]
    for name, o in report.outcomes.items():
        for right in (True, False):
            rows = most_confident(o, right)
            kind = "right" if right else "wrong"
            parts.append(f"<h3>{esc(name)}: most confident {kind}</h3>")
            if not rows:
                parts.append(paragraph(f"No row of this table is answered {kind}.", note=True))
                continue
            cards = "\n".join(card(report, media, o, i, kind) for i in rows)
            parts.append(f'<div class="cards" data-output="{esc(name)}" '
                         f'data-outcome="{kind}">\n{cards}\n</div>')
    return Section("gallery", "Gallery", "\n".join(parts))


def card(report: ReportData, media: Media, o: Outcomes, row: int, kind: str) -> str:
    """One row: its inputs, the true value, the prediction and its confidence."""
    # row numbers from 0, as 'mmfuse explain --rows' takes them
    fields = [f'<div class="field"><span class="label">row</span> {row}</div>']
    for spec in report.model.config.inputs:
        fields.append(f'<div class="field"><span class="label">{esc(spec.name)}</span> '
                      f"{media.html(spec.name, row)}</div>")
    measure = output_type(o.type).confidence
    fields += [f'<div class="field"><span class="label">true</span> {esc(o.truth[row])}</div>',
               f'<div class="field"><span class="label">predicted</span> '
               f"<strong>{esc(o.predicted[row])}</strong></div>"]
    if np.isfinite(o.confidence[row]):  # a number output has none
        fields.append(f'<div class="field"><span class="label">{measure}</span> '
                      f"{o.confidence[row]:.4f}</div>")
    return (f'<div class="card {kind}" data-output="{esc(o.name)}" data-row="{row}">'
            + "".join(fields) + "</div>")


class Media:
    """Each input's cell of a row as HTML; a file shown on several cards is encoded once."""

    def __init__(self, report: ReportData) -> None:
        self.report = report
        self.types = {spec.name: spec.type for spec in report.model.config.inputs}
        self.cache: dict[tuple[str, int], str] = {}
        # inputs that are not files (text, numbers, categories, yes/no) show their cell
        self.texts = {spec.name: report.table.column(spec.column)
                      for spec in report.model.config.inputs
                      if modality(spec.type).value != "file"}
        self.renderers: dict[str, Callable[[str, int], str]] = {
            "image": self.image, "video": self.video, "audio": self.audio}

    def html(self, name: str, row: int) -> str:
        """The input ``name`` of ``row``: a thumbnail, a poster, a player or its text."""
        if name in self.texts:
            value = self.texts[name][row]
            if value is None:
                return '<span class="note">missing</span>'
            text = str(value)
            return esc(text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…")
        item = int(self.report.encoded.inputs[name].index[row])
        if item == MISSING:
            return '<span class="note">missing</span>'
        if (name, item) not in self.cache:
            self.cache[name, item] = self.renderers[self.types[name]](name, item)
        return self.cache[name, item]

    def image(self, name: str, item: int) -> str:
        pixels = self.report.encoded.inputs[name].items[item]
        return f'<img src="{jpeg_uri(pixels)}" alt="{esc(name)}">'

    def video(self, name: str, item: int) -> str:
        clips, lengths = self.report.encoded.inputs[name].items
        frames = int(lengths[item])
        return (f'<img class="poster" src="{jpeg_uri(clips[item, frames // 2])}" '
                f'alt="{esc(name)} poster (frame {frames // 2 + 1} of {frames} kept)">')

    def audio(self, name: str, item: int) -> str:
        waves, lengths = self.report.encoded.inputs[name].items
        rate = self.report.model.pipeline.inputs[name].options.sample_rate
        clip = np.asarray(waves[item, :, : int(lengths[item])], dtype=np.float32)
        uri, seconds = wav_uri(clip.mean(axis=0), rate)
        total = clip.shape[1] / rate
        shown = f"{seconds:.1f} s" if seconds >= total else f"first {seconds:.1f} of {total:.1f} s"
        return (f'<audio controls preload="none" src="{uri}"></audio>'
                f'<span class="note">{shown}</span>')


def jpeg_uri(pixels: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` as a JPEG data URI, shrunk to at most THUMB pixels a side."""
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    if max(img.size) > THUMB:
        img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85, subsampling=0)  # full colour: tiny images
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def wav_uri(samples: np.ndarray, rate: int) -> tuple[str, float]:
    """The first AUDIO_SECONDS of mono float ``samples`` as a 16-bit WAV data URI (resampled
    to AUDIO_RATE when faster), and the seconds it holds."""
    samples = samples[: int(AUDIO_SECONDS * rate)]
    if rate > AUDIO_RATE:
        from ..modalities.audio import resample_audio

        samples, rate = resample_audio(samples[None, :], rate, AUDIO_RATE)[0], AUDIO_RATE
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    uri = "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, len(pcm) / rate
