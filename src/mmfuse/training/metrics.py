"""Averages and the evaluation object, shared by the training loop, evaluation and the
benchmarks (each output type's own metrics live in its module of ``outputs/``).

One place computes the averages: :class:`RunningMean` weights each batch by its rows, so the
epoch loss is the mean over examples whatever the batch sizes, and throughput is examples per
second of wall time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np


class RunningMean:
    """Example-weighted running means of named values, plus throughput. A NaN value (an output
    with no target in the batch) is left out of its mean, not spread over the epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}  # examples behind each value's sum
        self.count = 0
        self.start = time.perf_counter()

    def update(self, n: int, **values: float) -> None:
        """Add a batch of ``n`` examples whose means are ``values``."""
        for key, value in values.items():
            self.sums.setdefault(key, 0.0)
            if math.isfinite(float(value)):
                self.sums[key] += float(value) * n
                self.weights[key] = self.weights.get(key, 0.0) + n
        self.count += n

    def means(self) -> dict[str, float]:
        """The example-weighted mean of each value (NaN for one that was never finite)."""
        return {k: v / self.weights[k] if self.weights.get(k) else float("nan")
                for k, v in self.sums.items()}

    def state(self) -> dict:
        """What a checkpoint keeps of an epoch's running sums."""
        return {"sums": dict(self.sums), "weights": dict(self.weights), "count": self.count}

    def load_state(self, state: dict) -> None:
        self.sums, self.count = dict(state["sums"]), state["count"]
        self.weights = dict(state.get("weights", dict.fromkeys(self.sums, self.count)))

    def examples_per_second(self) -> float:
        """Examples seen per second since creation."""
        return self.count / max(1e-9, time.perf_counter() - self.start)


def evaluate_outputs(scorers: dict[str, Callable[[np.ndarray], dict]], n: int,
                     groups: list[str] | None = None,
                     sections: dict[str, dict[str, Callable[[np.ndarray], dict]]] | None = None
                     ) -> dict:
    """The ``evaluate --json`` object: each output's metrics over all ``n`` rows, and per group
    of rows when ``groups`` (one value per row) is given.

    Args:
        sections: more scorers reported beside ``outputs`` under their own key, at the top
            level and in each group (``heads``: the neural heads that classic predictors
            replace; ``predictors``: classic predictors fitted but not served).
    """
    sections = {key: value for key, value in (sections or {}).items() if value}

    def scores(rows: np.ndarray) -> dict:
        out = {"outputs": {name: score(rows) for name, score in scorers.items()}}
        for key, section in sections.items():
            out[key] = {name: score(rows) for name, score in section.items()}
        return out

    result: dict = {"n": n, **scores(np.arange(n))}
    if groups is not None:
        result["groups"] = {}
        for value in sorted(set(groups)):
            rows = np.array([i for i, g in enumerate(groups) if g == value])
            result["groups"][value] = {"n": len(rows), **scores(rows)}
    return result
