"""Synthetic batches to trace an export with and to check it against PyTorch.

A bundle holds no data, so the batches are made up: random pixels, token ids, sound, frames,
numbers and category ids of the preprocessed sizes (each modality makes its own), turned into
tensors by the model's own preprocessors, exactly as
:meth:`Pipeline.batch <mmfuse.pipeline.Pipeline.batch>` turns a table. Each batch differs from
the others in what an export must not freeze: the row count, the items per input, rows that share
an item, rows without an input, text lengths and audio / video durations.
"""

from __future__ import annotations

import numpy as np
import torch

from ..modalities import MISSING, Column, modality
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
    (and every row misses the first input when ``without_first``). Each input's items are made
    by its modality (``Modality.example_items``)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    batch = {}
    for i, (name, prep) in enumerate(pipeline.inputs.items()):
        rows = np.roll(np.asarray(layout["rows"], dtype=np.int64), i)
        if i == 0 and layout.get("without_first"):
            rows[:] = MISSING
        kind = modality(pipeline.config.inputs[i].type)
        items = kind.example_items(prep, layout["sizes"], rng)
        batch[name] = prep.batch(Column(items, rows), rows, False, generator)
    return batch
