"""Probe tasks: tiny generated tables that check a model's default options learn each modality.

A probe isolates the one obvious property of a modality (motion direction, order of events,
position, counting, colour, pitch, loudness, word order) that a model with default options
should pick up. If it cannot beat the majority baseline on a probe, its encoder or defaults
throw that property away. The twelve probes, in ``PROBES`` order:

- image (PNG, 40/56/72 px square, dark or light grey, filled circles, squares, triangles):
  ``image_qa`` (colour, left/right, top/bottom of one shape), ``image_count`` (1-4 shapes),
  ``image_caption`` ("a red circle on the left").
- video (MP4, mpeg4/yuv420p at 10 fps, 8-20 frames of 40/56/72 px): ``video_qa`` (a dot's
  direction or colour), ``video_count`` (how often a square flashes), ``video_caption``
  ("the red dot moves left").
- audio (16-bit mono WAV at 8/16/22.05 kHz, 1-2 s, sine tones over white noise):
  ``audio_order`` (low then high: rising), ``audio_qa`` (pitch, loudness, early/late),
  ``audio_caption`` ("low high low").
- text: ``text_order`` (who did it: the subject), ``text_negation`` (sentiment in English,
  French and Chinese, flipped by negation), ``text_translate`` (English noun phrase to French,
  with adjective order and gender).

Layout::

    out_dir/
        media/train_00000.png (.mp4, .wav), ..., media/test_00000.png, ...   (not for text)
        train.csv
        test.csv

A CSV's columns are the probe's inputs, its target, then its group column if it has one;
media paths are relative to ``out_dir``. Sizes, frame counts, sample rates, durations and
question wordings (English and French) vary across the rows of a task; answers are always
English tokens. Targets are drawn uniformly over their classes. Train and test draw from the
streams ``[seed, 0]`` and ``[seed, 1]``, so the test split does not depend on ``n_train``, and
the same seed gives the same tables and files (with the same PyAV/FFmpeg build).
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import MmfuseError
from .probe_rows import (
    RowMaker,
    audio_caption_row,
    audio_order_row,
    audio_qa_row,
    image_caption_row,
    image_count_row,
    image_qa_row,
    photo_qa_row,
    text_negation_row,
    text_order_row,
    text_translate_row,
    video_caption_row,
    video_count_row,
    video_qa_row,
)

__all__ = ["PROBES", "Probe", "generate_probe", "minimal_config"]

@dataclass(frozen=True)
class Probe:
    """One probe task: its table's columns, what it probes and its generator.

    ``generate(out_dir, n_train, n_test, seed)`` writes the task and returns the summary that
    ``generate_probe`` returns.
    """

    name: str
    modality: str
    output: str
    inputs: dict[str, str]
    target: str
    group: str | None
    properties: tuple[str, ...]
    description: str
    generate: Callable[..., dict]

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV header: inputs, target, then the group column if any."""
        return _columns(self.inputs, self.target, self.group)


def generate_probe(name: str, out_dir: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """Write one probe task: ``out_dir/train.csv``, ``out_dir/test.csv`` and its media.

    Args:
        name: A key of ``PROBES``.
        out_dir: Folder to write into (created if missing; same-named files are overwritten).
        n_train: Number of training rows (>= 1).
        n_test: Number of test rows (>= 1).
        seed: Non-negative random seed.

    Returns:
        ``{"name", "train_rows", "test_rows", "majority_baseline", "seconds"}``, where
        ``majority_baseline`` is the share of the most frequent target among the test rows.

    Raises:
        MmfuseError: If ``name`` is unknown, a count or the seed is invalid, or PyAV (video)
            or soundfile (audio) is not installed.
    """
    if name not in PROBES:
        raise MmfuseError(f"unknown probe {name!r}; choose one of: {', '.join(PROBES)}")
    for arg, value, minimum in (("n_train", n_train, 1), ("n_test", n_test, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise MmfuseError(f"{arg} must be an integer >= {minimum}, got {value!r}")
    return PROBES[name].generate(Path(out_dir), int(n_train), int(n_test), int(seed))


def minimal_config(name: str) -> dict:
    """The config a new user writes for probe ``name``: the types of its inputs and output,
    nothing else, so every encoder, fusion, head and training setting is at its default."""
    probe = PROBES[name]
    return {"inputs": [{"name": column, "type": kind} for column, kind in probe.inputs.items()],
            "outputs": [{"name": probe.target, "type": probe.output}]}


def _columns(inputs: dict[str, str], target: str, group: str | None) -> tuple[str, ...]:
    """A table's header: inputs, target, then the group column if any."""
    return (*inputs, target, *([group] if group else []))


def _generate(name: str, make_row: RowMaker, columns: tuple[str, ...], target: str,
              out_dir: Path, n_train: int, n_test: int, seed: int) -> dict:
    """Draw and write both splits; train from stream ``[seed, 0]``, test from ``[seed, 1]``."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"name": name}
    for index, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, index])
        rows = [make_row(rng, out_dir, f"media/{split}_{i:05d}") for i in range(n)]
        with (out_dir / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([row[column] for column in columns] for row in rows)
        summary[f"{split}_rows"] = n
    top = Counter(row[target] for row in rows).most_common(1)[0][1]  # rows: the test split
    summary["majority_baseline"] = round(top / n_test, 4)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _probe(name: str, modality: str, output: str, inputs: dict[str, str], target: str,
           group: str | None, properties: tuple[str, ...], description: str,
           make_row: RowMaker) -> Probe:
    """A ``Probe`` whose ``generate`` draws its rows with ``make_row``."""
    generate = partial(_generate, name, make_row, _columns(inputs, target, group), target)
    return Probe(name, modality, output, inputs, target, group, properties, description,
                 generate)


_QA = {"question": "text"}
PROBES: dict[str, Probe] = {probe.name: probe for probe in (
    _probe("image_qa", "image", "category", {"image": "image", **_QA}, "answer", "qtype",
           ("position", "colour"), "one shape: its colour, side or height", image_qa_row),
    _probe("image_count", "image", "category", {"image": "image"}, "count", None,
           ("counting",), "how many shapes (1-4)", image_count_row),
    _probe("image_caption", "image", "text", {"image": "image"}, "caption", None,
           ("colour", "position"), "caption one shape: 'a red circle on the left'",
           image_caption_row),
    _probe("photo_qa", "image", "text", {"image": "image", **_QA}, "answer", "qtype",
           ("colour", "shape", "position", "counting"),
           "1-3 shapes on a grey photograph: colour, shape, side or number, in one word",
           photo_qa_row),
    _probe("video_qa", "video", "category", {"video": "video", **_QA}, "answer", "qtype",
           ("motion direction", "colour"), "a moving dot: its direction or colour", video_qa_row),
    _probe("video_count", "video", "category", {"video": "video"}, "count", None,
           ("counting", "order of events"), "how often a square flashes (1-3)", video_count_row),
    _probe("video_caption", "video", "text", {"video": "video"}, "caption", None,
           ("motion direction", "colour"), "caption a moving dot: 'the red dot moves left'",
           video_caption_row),
    _probe("audio_order", "audio", "category", {"audio": "audio"}, "label", None,
           ("order of events", "pitch"), "a low and a high tone: rising or falling",
           audio_order_row),
    _probe("audio_qa", "audio", "category", {"audio": "audio", **_QA}, "answer", "qtype",
           ("pitch", "loudness", "position in clip"), "one tone: its pitch, loudness or half",
           audio_qa_row),
    _probe("audio_caption", "audio", "text", {"audio": "audio"}, "caption", None,
           ("counting", "order of events", "pitch"), "caption 2-3 beeps: 'low high low'",
           audio_caption_row),
    _probe("text_order", "text", "category", {"sentence": "text"}, "agent", None,
           ("word order",), "who acts in 'the cat chased the dog'", text_order_row),
    _probe("text_negation", "text", "category", {"review": "text"}, "sentiment", None,
           ("word order", "negation"), "review sentiment in en/fr/zh, flipped by negation",
           text_negation_row),
    _probe("text_translate", "text", "text", {"english": "text"}, "french", None,
           ("word order", "translation"), "'the big red circle' -> 'le grand cercle rouge'",
           text_translate_row),
)}
"""The probe tasks by name."""
