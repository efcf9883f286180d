"""``binary``: one yes/no decision per row, as the logit of the positive label (sigmoid head,
``heads/binary.py``).

- Targets: 1.0 for the positive label, 0.0 for the other, NaN where a row has none. The two
  labels are learned from the training split; when both are spellings of true and false
  (``yes``/``no``, ``1``/``0``, JSON booleans), a cell is read by its meaning, so ``Yes`` and
  ``yes`` are one label.
- Metrics: accuracy, precision, recall and F1 at the threshold, ROC-AUC, PR-AUC (average
  precision), beside those of always answering the majority training label.
- Predictors: logistic regression, random forest, gradient boosting; their probability of the
  positive label becomes a logit.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from ..data.table import Table
from ..errors import DataError
from ..modalities.binary import FALSE, TRUE, parse_binary
from ..modalities.tabular import TabularPreprocessor, label_text, missing_cell
from ..registry import OUTPUTS
from ..specs import TargetSpec
from .kind import PROBABILITIES, NoOptions, OutputType, Score, label_schema


class BinaryTargetPreprocessor(TabularPreprocessor):
    """Two labels -> 0.0 (negative) / 1.0 (positive)."""

    what = "one of the two labels"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.positive = config.head.get("positive")
        self.labels: list[str] = []  # [negative, positive]
        self.counts: dict[str, int] = {}
        self.boolean = False  # the labels are spellings of true and false
        self.json_bool = False  # ... written as JSON booleans
        self.calibration: dict[str, float] = {}

    def parse(self, value: Any) -> float:
        if isinstance(value, dict | list):
            raise ValueError(f"a {type(value).__name__}, not a label")
        if self.boolean:
            try:
                return float(parse_binary(value))
            except ValueError:
                raise ValueError(f"not {self.labels[1]!r} or {self.labels[0]!r}") from None
        text = label_text(value)
        if text not in self.labels:
            raise ValueError(f"not {self.labels[1]!r} or {self.labels[0]!r}, the labels of the "
                             "training split")
        return float(self.labels.index(text))

    def fit(self, table: Table) -> None:
        cells = [v for v in table.column(self.column) if not missing_cell(v)]
        texts = Counter(label_text(v) for v in cells)
        if len(texts) == 0:
            raise DataError(f"{table.source}: column {self.column!r} has no labels to learn from")
        if all(t.lower() in TRUE + FALSE for t in texts) and self.positive is None:
            self._fit_boolean(cells, texts)
            return
        if len(texts) != 2:
            raise DataError(f"{table.source}: a binary output has two labels, and column "
                            f"{self.column!r} has {len(texts)}: "
                            f"{', '.join(sorted(texts)[:10])}; use type: category for more")
        if self.positive is None or self.positive not in texts:
            hint = f"positive: {self.positive!r} is not one of them; " if self.positive else ""
            raise DataError(f"{table.source}: column {self.column!r} has labels "
                            f"{' and '.join(map(repr, sorted(texts)))}; {hint}name the positive "
                            "one with positive: LABEL in the output's config")
        negative = next(t for t in texts if t != self.positive)
        self.labels, self.counts = [negative, self.positive], dict(texts)

    def _fit_boolean(self, cells: list, texts: Counter) -> None:
        """Labels that spell true and false: read by meaning, written as first seen."""
        self.boolean = True
        self.json_bool = all(isinstance(v, bool) for v in cells)
        first = {truth: next((t for t in texts if (t.lower() in TRUE) == truth),
                             "true" if truth else "false") for truth in (False, True)}
        self.labels = ["false", "true"] if self.json_bool else [first[False], first[True]]
        counts = Counter(t.lower() in TRUE for t in texts.elements())
        self.counts = {self.labels[1]: counts[True], self.labels[0]: counts[False]}

    def targets(self, table: Table) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in self.parsed(table)],
                        dtype=np.float32)

    def target_spec(self) -> TargetSpec:
        return TargetSpec(labels=self.labels, counts=self.counts, calibration=self.calibration,
                          json_bool=self.json_bool)

    def state(self) -> dict:
        return {"labels": self.labels, "counts": self.counts, "boolean": self.boolean,
                "json_bool": self.json_bool, "calibration": self.calibration}

    def load_state(self, state: dict) -> None:
        self.labels, self.counts = list(state["labels"]), dict(state["counts"])
        self.boolean, self.json_bool = bool(state["boolean"]), bool(state["json_bool"])
        self.calibration = dict(state.get("calibration", {}))


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


def best_f1_threshold(probability: np.ndarray, truth: np.ndarray) -> float:
    """The probability threshold with the highest F1 (0.5 without a positive row): each
    distinct probability is tried, and the midpoint to the next lower one is returned, so a
    slightly different score of the same row falls on the same side."""
    if not len(truth) or not truth.sum():
        return 0.5
    order = np.argsort(-probability, kind="mergesort")
    p, y = probability[order], truth[order]
    last = run_ends(p)  # predict positive for rows 0..last
    tp = np.cumsum(y)[last]
    f1 = 2 * tp / (last + 1 + y.sum())
    best = int(np.argmax(f1))
    below = p[last[best] + 1] if last[best] + 1 < len(p) else 0.0
    return float((p[last[best]] + below) / 2)


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


@OUTPUTS.register("binary", NoOptions)
class BinaryOutput(OutputType):
    """A yes/no decision (sigmoid)."""

    preprocessor = BinaryTargetPreprocessor
    main_metric = "roc_auc"
    causal_lm_head = "causal_lm_binary"
    report_metrics = ("roc_auc", "pr_auc", "f1", "accuracy")
    predictors = ("logistic", "random_forest", "gradient_boosting")

    def scorer(self, head, raw: torch.Tensor, target: np.ndarray, column: list,
               prep: Any) -> Score:
        probability = torch.sigmoid(raw.double()).numpy()
        target_t = torch.from_numpy(target)

        def score(rows: np.ndarray) -> dict:
            loss = float(head.loss(raw[rows], target_t[rows]))
            return binary_metrics(probability[rows], target[rows], head.threshold, loss,
                                  head.majority)

        return score

    def answer_schema(self, info: dict) -> dict:
        label = label_schema(info.get("labels") or [])
        return {"type": "object", "required": ["prediction"], "properties": {
            "prediction": {"anyOf": [label, {"type": "boolean"}]},
            "probability": {"type": "number"}, "probabilities": PROBABILITIES}}

    def judge(self, prep: Any, rows: list[dict], table: Table) -> tuple:
        """A yes/no is right by its meaning ("Yes" or true for "yes")."""
        targets = prep.targets(table)
        predicted = [str(r["prediction"]) for r in rows]
        truth = [None if c is None else label_text(c) for c in table.column(prep.column)]
        said = [r["prediction"] is True or r["prediction"] == prep.labels[1] for r in rows]
        right = [not np.isnan(t) and s == bool(t) for s, t in zip(said, targets, strict=True)]
        return predicted, truth, np.array(right, dtype=bool)

    def predictor_answer(self, answer: np.ndarray, classes: np.ndarray | None,
                         labels: int) -> np.ndarray:
        """The logit of the positive label."""
        eps = 1e-7
        full = np.zeros((len(answer), 2))
        full[:, classes] = np.asarray(answer, dtype=np.float64)
        p = np.clip(full[:, 1], eps, 1 - eps)
        return (np.log(p) - np.log1p(-p)).astype(np.float32)
