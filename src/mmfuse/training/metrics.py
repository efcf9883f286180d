"""Metrics, shared by the training loop, evaluation and the benchmarks.

One place computes the averages: :class:`RunningMean` weights each batch by its rows, so the
epoch loss is the mean over examples whatever the batch sizes, and throughput is examples per
second of wall time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import require
from ..heads.category import IGNORE_INDEX
from ..modalities.text_target import PAD_ID, has_cjk


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


def category_scorer(logits: torch.Tensor, target: np.ndarray, labels: list[str],
                    truth: list[str]) -> Callable[[np.ndarray], dict]:
    """The metrics of a category output on any subset of rows."""
    target_t = torch.from_numpy(target)
    return lambda rows: category_metrics(logits[rows], target_t[rows], labels,
                                         [truth[i] for i in rows])


def token_stats(logits: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """Per row of teacher-forced logits ``[N, T - 1, V]`` and targets ``[N, T]``: target tokens,
    tokens predicted right, and summed cross-entropy (so subsets can be summed)."""
    gold = target[:, 1: 1 + logits.shape[1]]
    real = gold != PAD_ID
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                           ignore_index=PAD_ID, reduction="none").view(gold.shape)
    return {"tokens": real.sum(1).numpy(),
            "correct": ((logits.argmax(-1) == gold) & real).sum(1).numpy(),
            "loss": (loss * real).sum(1).double().numpy()}


def text_metrics(hypotheses: list[str], references: list[str | None],
                 stats: dict[str, np.ndarray]) -> dict:
    """Exact match, BLEU and chrF of generated texts against references (rows without one are
    left out), and teacher-forced token accuracy and loss per token.

    BLEU and chrF are sacrebleu's corpus scores (0-100). BLEU splits Chinese into characters
    (sacrebleu's ``zh`` tokenizer, the same as ``13a`` elsewhere) when any reference has CJK,
    and uses the effective order: n-gram orders that no hypothesis is long enough to have are
    left out of the geometric mean, so a corpus of three-word texts does not score 0.
    """
    require("sacrebleu", "text", "BLEU and chrF of text outputs")
    from sacrebleu.metrics import BLEU, CHRF

    rows = [i for i, r in enumerate(references) if r]
    hyps, refs = [hypotheses[i] for i in rows], [references[i] for i in rows]
    if not rows:
        nan = float("nan")
        return {"exact_match": nan, "token_accuracy": nan, "bleu": nan, "chrf": nan,
                "loss": nan}
    tokenize = "zh" if any(has_cjk(r) for r in refs) else "13a"
    counted = max(1, int(stats["tokens"][rows].sum()))
    return {
        "exact_match": round(float(np.mean([h == r for h, r in zip(hyps, refs, strict=True)])),
                             6),
        "token_accuracy": round(float(stats["correct"][rows].sum()) / counted, 6),
        "bleu": round(BLEU(tokenize=tokenize, effective_order=True).corpus_score(
            hyps, [refs]).score, 4),
        "chrf": round(CHRF().corpus_score(hyps, [refs]).score, 4),
        "loss": round(float(stats["loss"][rows].sum()) / counted, 6),
    }


def text_scorer(hypotheses: list[str], references: list[str | None],
                stats: dict[str, np.ndarray]) -> Callable[[np.ndarray], dict]:
    """The metrics of a text output on any subset of rows."""
    return lambda rows: text_metrics([hypotheses[i] for i in rows],
                                     [references[i] for i in rows],
                                     {k: v[rows] for k, v in stats.items()})


def evaluate_outputs(scorers: dict[str, Callable[[np.ndarray], dict]], n: int,
                     groups: list[str] | None = None) -> dict:
    """The ``evaluate --json`` object: each output's metrics over all ``n`` rows, and per group
    of rows when ``groups`` (one value per row) is given."""
    everything = np.arange(n)
    result: dict = {"n": n, "outputs": {name: score(everything) for name, score in scorers.items()}}
    if groups is not None:
        result["groups"] = {}
        for value in sorted(set(groups)):
            rows = np.array([i for i, g in enumerate(groups) if g == value])
            result["groups"][value] = {"n": len(rows), "outputs": {
                name: score(rows) for name, score in scorers.items()}}
    return result
