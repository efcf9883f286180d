"""Synthetic batches to trace an export with and to check it against PyTorch.

A bundle holds no data, so the batches are made up: random pixels, token ids, sound and frames of
the preprocessed sizes, turned into tensors by the model's own preprocessors, exactly as
:meth:`Pipeline.batch <mmfuse.pipeline.Pipeline.batch>` turns a table. Each batch differs from
the others in what an export must not freeze: the row count, the items per input, rows that share
an item, rows without an input, text lengths and audio / video durations.
"""

from __future__ import annotations

import numpy as np
import torch

from ..modalities import MISSING, Column, Preprocessor
from ..pipeline import Pipeline

# Rows -> item per input (the pattern shifts by one row from input to input, so rows miss
# different inputs), and the size of each item (words, tenths of a second, frames).
TRACE = {"rows": [0, 1, 0, MISSING, 1], "sizes": [4, 2]}  # shared items, a missing row each
CHECKS = [
    {"rows": [0, 1, 2], "sizes": [6, 1, 3]},  # other counts and lengths, every row present
    {"rows": [0], "sizes": [3], "without_first": True},  # one row; no row has the first input
    {"rows": [0, 0, 0, 0], "sizes": [5]},  # four rows share one item
]


def example_batch(pipeline: Pipeline, layout: dict, seed: int) -> dict:
    """One model batch, as :meth:`Pipeline.batch` gives it, following ``layout`` (an entry of
    :data:`TRACE` / :data:`CHECKS`): input ``i`` gets the rows pattern rolled by ``i`` rows
    (and every row misses the first input when ``without_first``)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    batch = {}
    for i, (name, prep) in enumerate(pipeline.inputs.items()):
        rows = np.roll(np.asarray(layout["rows"], dtype=np.int64), i)
        if i == 0 and layout.get("without_first"):
            rows[:] = MISSING
        items = example_items(prep, pipeline.config.inputs[i].type, layout["sizes"], rng)
        batch[name] = prep.batch(Column(items, rows), rows, False, generator)
    return batch


def example_items(prep: Preprocessor, kind: str, sizes: list[int], rng: np.random.Generator):
    """Column items of input type ``kind``, one per entry of ``sizes``: words of a text, tenths
    of a second of audio, frames of a video (capped by the preprocessing options)."""
    spec = prep.spec()
    if kind == "text":
        lengths = np.asarray(sizes, dtype=np.int64)
        ids = rng.integers(0, spec["vocab_size"], (len(sizes), max(sizes)), dtype=np.int64)
        ids[np.arange(max(sizes)) >= lengths[:, None]] = spec["pad_id"]
        return ids, lengths
    if kind == "image":
        return prep.column_of([_pixels(rng, spec["size"]) for _ in sizes]).items
    if kind == "audio":
        options = prep.options
        seconds = [min(s / 10, options.max_seconds) for s in sizes]
        waves = [rng.standard_normal((options.channels, max(1, int(s * options.sample_rate))))
                 .astype(np.float32) * 0.1 for s in seconds]
        return prep.column_of(waves).items
    if kind == "video":
        clips = [np.stack([_pixels(rng, spec["size"]) for _ in range(min(s, spec["frames"]))])
                 for s in sizes]
        return prep.column_of(clips).items
    raise ValueError(f"no example items for input type {kind!r}")


def _pixels(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)
