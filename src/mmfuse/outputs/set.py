"""``set``: any number of labels per row (multi-label: one sigmoid per label,
``heads/set.py``).

- Targets: a multi-hot row over the training split's labels; labels never seen in training are
  dropped (they cannot be predicted). An empty cell is the empty set.
- Metrics: Jaccard, micro-F1 and macro-F1 of the labels at or above the threshold, beside those
  of always answering the training split's most frequent label set.
- Explain: the summed logits of the labels it predicts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from ..data.table import Table
from ..errors import DataError
from ..modalities.tabular import TabularPreprocessor, label_text
from ..registry import OUTPUTS
from ..specs import TargetSpec
from .kind import PROBABILITIES, NoOptions, OutputType, Score, label_schema


class SetTargetPreprocessor(TabularPreprocessor):
    """Label sets -> multi-hot rows over the training labels."""

    what = "labels separated by the separator, or a JSON list of labels"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.separator = config.head.get("separator")
        self.labels: list[str] = []
        self.counts: dict[str, int] = {}
        self.top_set: list[str] = []  # the most frequent label set of the training split

    def parse(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, list | tuple):
            if any(isinstance(v, dict | list) for v in value):
                raise ValueError("a list may hold only labels")
            labels = [label_text(v) for v in value]
        elif isinstance(value, dict):
            raise ValueError("an object, not labels")
        else:
            labels = label_text(value).split(self.separator)
        return tuple(sorted({label.strip() for label in labels if label.strip()}))

    def parsed(self, table: Table) -> list[Any]:
        # an empty cell is the empty set, not a missing target
        return [() if v is None else v for v in super().parsed(table)]

    def fit(self, table: Table) -> None:
        sets = self.parsed(table)
        self.counts = dict(Counter(label for s in sets for label in s))
        if not self.counts:
            raise DataError(f"{table.source}: column {self.column!r} has no labels to learn "
                            "from (every cell is empty)")
        self.labels = sorted(self.counts)
        self.top_set = list(Counter(sets).most_common(1)[0][0])

    def targets(self, table: Table) -> np.ndarray:
        position = {label: i for i, label in enumerate(self.labels)}
        sets = self.parsed(table)
        out = np.zeros((len(sets), len(self.labels)), dtype=np.float32)
        for row, labels in enumerate(sets):
            for label in labels:
                if label in position:
                    out[row, position[label]] = 1.0
        return out

    def target_tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values))

    def target_spec(self) -> TargetSpec:
        return TargetSpec(labels=self.labels, counts=self.counts, top_set=self.top_set)

    def state(self) -> dict:
        return {"labels": self.labels, "counts": self.counts, "top_set": self.top_set}

    def load_state(self, state: dict) -> None:
        self.labels, self.counts = list(state["labels"]), dict(state["counts"])
        self.top_set = list(state["top_set"])


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


@OUTPUTS.register("set", NoOptions)
class SetOutput(OutputType):
    """Any number of labels (multi-label)."""

    preprocessor = SetTargetPreprocessor
    main_metric = "jaccard"
    report_metrics = ("jaccard", "f1_micro", "f1_macro")

    def scorer(self, head, raw: torch.Tensor, target: np.ndarray, column: list,
               prep: Any) -> Score:
        probability = torch.sigmoid(raw.double()).numpy()
        target_t = torch.from_numpy(target)

        def score(rows: np.ndarray) -> dict:
            known = rows[~np.isnan(target[rows, 0])] if len(rows) else rows
            loss = float(head.loss(raw[known], target_t[known])) if len(known) else \
                float("nan")
            return set_metrics(probability[known], target[known] > 0.5,
                               head.options.threshold, loss, head.top_set)

        return score

    def answer_schema(self, info: dict) -> dict:
        return {"type": "object", "required": ["prediction"], "properties": {
            "prediction": {"type": "array", "items": label_schema(info.get("labels") or [])},
            "probabilities": PROBABILITIES}}

    def judge(self, prep: Any, rows: list[dict], table: Table) -> tuple:
        """A set is right when it holds exactly the true labels, in any order."""
        targets = prep.targets(table)
        predicted = [" ".join(r["prediction"]) for r in rows]
        truth = [None if c is None else " ".join(map(str, c)) if isinstance(c, list)
                 else label_text(c) for c in table.column(prep.column)]
        right = [bool(np.array_equal(t > 0.5, [label in set(r["prediction"])
                                               for label in prep.labels]))
                 for r, t in zip(rows, targets, strict=True)]
        return predicted, truth, np.array(right, dtype=bool)

    def explain_score(self, predicted: torch.Tensor) -> tuple:
        chosen = predicted[0] >= 0
        if not bool(chosen.any()):
            chosen = predicted[0] == predicted[0].max()
        return (lambda out: out[:, chosen].sum(-1)), None
