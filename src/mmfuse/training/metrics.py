"""Metrics, shared by the training loop, evaluation and the benchmarks.

One place computes the averages: :class:`RunningMean` weights each batch by its rows, so the
epoch loss is the mean over examples whatever the batch sizes, and throughput is examples per
second of wall time.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..heads.category import IGNORE_INDEX


class RunningMean:
    """Example-weighted running means of named values, plus throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.start = time.perf_counter()

    def update(self, n: int, **values: float) -> None:
        """Add a batch of ``n`` examples whose means are ``values``."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.count += n

    def means(self) -> dict[str, float]:
        """The example-weighted mean of each value."""
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def examples_per_second(self) -> float:
        """Examples seen per second since creation."""
        return self.count / max(1e-9, time.perf_counter() - self.start)


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows predicted right; rows with an unknown label count as wrong."""
    if len(target) == 0:
        return float("nan")
    return (predicted == target).float().mean().item()


def majority_baseline(labels: list[str]) -> float:
    """Accuracy of always answering the most frequent of ``labels`` (0 for no labels)."""
    if not labels:
        return 0.0
    return Counter(labels).most_common(1)[0][1] / len(labels)


def category_metrics(logits: torch.Tensor, target: torch.Tensor, labels: list[str],
                     truth: list[str]) -> dict:
    """Accuracy, mean cross-entropy and the majority-answer baseline of one output.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` class indices (``IGNORE_INDEX`` for labels unseen in training).
        labels: the class names.
        truth: the true label text of every row (for the baseline, unseen labels included).
    """
    known = target != IGNORE_INDEX
    loss = F.cross_entropy(logits[known], target[known]).item() if known.any() else float("nan")
    return {
        "accuracy": round(accuracy(logits.argmax(-1), target), 6),
        "loss": round(loss, 6),
        "majority_baseline": round(majority_baseline(truth), 6),
    }


def evaluate_outputs(logits: dict[str, torch.Tensor], targets: dict[str, np.ndarray],
                     labels: dict[str, list[str]], truth: dict[str, list[str]],
                     groups: list[str] | None = None) -> dict:
    """The ``evaluate --json`` object: overall metrics, and per group when ``groups`` is given."""
    n = len(next(iter(targets.values())))
    result: dict = {"n": n, "outputs": {}}
    for name in logits:
        result["outputs"][name] = category_metrics(
            logits[name], torch.from_numpy(targets[name]), labels[name], truth[name])
    if groups is not None:
        result["groups"] = {}
        for value in sorted(set(groups)):
            rows = np.array([i for i, g in enumerate(groups) if g == value])
            result["groups"][value] = {"n": len(rows), "outputs": {
                name: category_metrics(logits[name][rows], torch.from_numpy(targets[name][rows]),
                                       labels[name], [truth[name][i] for i in rows])
                for name in logits}}
    return result
