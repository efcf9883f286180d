"""Metrics, shared by the training loop, evaluation and the benchmarks.

One place computes the averages: :class:`RunningMean` weights each batch by its rows, so the
epoch loss is the mean over examples whatever the batch sizes, and throughput is examples per
second of wall time.
"""

from __future__ import annotations

import math
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


def category_metrics(logits: torch.Tensor, target: torch.Tensor, truth: list[str],
                     k: int = 3) -> dict:
    """Accuracy, top-k accuracy, mean cross-entropy and the majority-answer baseline of one
    output.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` class indices (``IGNORE_INDEX`` for labels unseen in training).
        truth: the true label text of every labelled row (for the baseline, unseen labels
            included).
        k: of ``top_k_accuracy``.
    """
    known = target != IGNORE_INDEX
    loss = F.cross_entropy(logits[known], target[known]).item() if known.any() else float("nan")
    if len(logits):
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        top_k = (top == target.unsqueeze(-1)).any(-1).float().mean().item()
    else:
        top_k = float("nan")
    return {
        "accuracy": round(accuracy(logits.argmax(-1), target), 6),
        "top_k_accuracy": round(top_k, 6),
        "loss": round(loss, 6),
        "majority_baseline": round(majority_baseline(truth), 6),
    }


def category_scorer(logits: torch.Tensor, target: np.ndarray, truth: list[str | None],
                    k: int = 3) -> Callable[[np.ndarray], dict]:
    """The metrics of a category output on any subset of rows (``truth``: each row's label
    text, None where the row has none)."""
    target_t = torch.from_numpy(target)
    return lambda rows: category_metrics(logits[rows], target_t[rows],
                                         [truth[i] for i in rows if truth[i] is not None], k)


def number_metrics(predicted: np.ndarray, truth: np.ndarray, loss: float,
                   baseline: float) -> dict:
    """MAE, RMSE and R² of predictions in the original units, the head's loss, and the same
    errors of always predicting ``baseline`` (the training mean). Rows without a target (NaN)
    are left out; R² is 1 - SSE / SST over those rows (0 for the mean of the rows themselves,
    negative when worse)."""
    known = ~np.isnan(truth)
    p, y = predicted[known].astype(np.float64), truth[known].astype(np.float64)
    if not len(y):
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "r2": nan, "loss": nan,
                "baseline": {"mae": nan, "rmse": nan, "r2": nan}}

    def errors(guess: np.ndarray) -> dict:
        sse = float(np.square(y - guess).sum())
        sst = float(np.square(y - y.mean()).sum())
        return {"mae": round(float(np.abs(y - guess).mean()), 6),
                "rmse": round(float(np.sqrt(sse / len(y))), 6),
                "r2": round(1.0 - sse / sst, 6) if sst > 0 else float("nan")}

    return {**errors(p), "loss": round(loss, 6),
            "baseline": errors(np.full_like(y, baseline))}


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half), from the ranks (Mann-Whitney U); NaN without both classes."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # tied scores share the mean of their ranks
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end - 1) / 2 + 1
    u = ranks[truth == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def run_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """The last index of each run of equal scores in descending ``sorted_scores``: the rows
    predicted positive at each distinct threshold are 0..end."""
    return np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: the precision at each
    distinct score threshold, weighted by the recall it adds (scikit-learn's definition)."""
    positives = int(truth.sum())
    if not positives:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], truth[order]
    last = run_ends(s)
    hits = np.cumsum(y)[last]
    precision = hits / (last + 1)
    recall_gain = np.diff(np.r_[0, hits]) / positives
    return float((precision * recall_gain).sum())


def binary_counts(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy, precision, recall and F1 of boolean predictions against 0/1 truth."""
    tp = int((predicted & (truth == 1)).sum())
    fp = int((predicted & (truth == 0)).sum())
    fn = int((~predicted & (truth == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    right = float((predicted == (truth == 1)).mean()) if len(truth) else float("nan")
    return {"accuracy": round(right, 6), "precision": round(precision, 6),
            "recall": round(recall, 6), "f1": round(f1, 6)}


def binary_metrics(probability: np.ndarray, truth: np.ndarray, threshold: float,
                   loss: float, majority: float) -> dict:
    """Accuracy, precision, recall and F1 at ``threshold``, ROC-AUC, PR-AUC (average
    precision), the head's loss, and the same of always answering the majority training
    label (``majority``: 1.0 or 0.0). Rows without a target (NaN) are left out."""
    known = ~np.isnan(truth)
    p, y = probability[known], truth[known].astype(np.int64)
    if not len(y):
        nan = float("nan")
        empty = dict.fromkeys(("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"), nan)
        return {**empty, "loss": nan, "threshold": round(threshold, 6), "baseline": empty}
    both = len(set(y.tolist())) == 2
    return {**binary_counts(p >= threshold, y), "roc_auc": round(roc_auc(p, y), 6),
            "pr_auc": round(average_precision(p, y), 6), "loss": round(loss, 6),
            "threshold": round(threshold, 6),
            "baseline": {**binary_counts(np.full(len(y), bool(majority)), y),
                         "roc_auc": 0.5 if both else float("nan"),
                         "pr_auc": round(float(y.mean()), 6) if len(y) else float("nan")}}


def set_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Jaccard (per row, averaged; two empty sets agree fully), micro-F1 (over every label
    decision) and macro-F1 (per label, averaged; a label never predicted nor present scores
    1) of boolean ``[N, L]`` predictions against boolean ``[N, L]`` truth."""
    if not len(truth):
        nan = float("nan")
        return {"jaccard": nan, "f1_micro": nan, "f1_macro": nan}
    both = (predicted & truth).sum(1)
    either = (predicted | truth).sum(1)
    jaccard = np.where(either > 0, both / np.maximum(either, 1), 1.0).mean()
    tp = (predicted & truth).sum(0).astype(np.float64)
    wrong = (predicted ^ truth).sum(0)
    micro = 2 * tp.sum() / max(1.0, 2 * tp.sum() + wrong.sum())
    per_label = np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(1, 2 * tp + wrong), 1.0)
    return {"jaccard": round(float(jaccard), 6), "f1_micro": round(float(micro), 6),
            "f1_macro": round(float(per_label.mean()), 6) if per_label.size else float("nan")}


def set_metrics(probability: np.ndarray, truth: np.ndarray, threshold: float, loss: float,
                top_set: np.ndarray) -> dict:
    """:func:`set_scores` of the labels at or above ``threshold``, the head's loss, and the
    scores of always answering ``top_set`` (the training split's most frequent label set)."""
    truth = truth.astype(bool)
    return {**set_scores(probability >= threshold, truth), "loss": round(loss, 6),
            "threshold": threshold,
            "baseline": set_scores(np.broadcast_to(top_set.astype(bool), truth.shape), truth)}


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
