"""Batch orders: plain shuffling, or keeping the rows that share a file together.

When many rows point at one file (20 questions per Sort-of-CLEVR image), putting them in the same
batch lets the image encoder run once for all of them. ``grouped_batches`` shuffles the files,
shuffles the rows within each file, and cuts the resulting order into batches.
"""

from __future__ import annotations

import numpy as np


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices in random order, cut into batches."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def grouped_batches(group: np.ndarray, batch_size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Batches that keep the rows of one group (file) together.

    Args:
        group: ``[N]`` group id of every row (e.g. the index of its image file).
        batch_size: rows per batch (the last batch may be smaller).
        rng: the random generator (seeded for reproducible runs).
    """
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    groups = np.split(order, starts[1:])
    parts = [rng.permutation(groups[g]) for g in rng.permutation(len(groups))]
    order = np.concatenate(parts) if parts else order
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def sequential_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Row indices in table order, cut into batches (evaluation)."""
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
