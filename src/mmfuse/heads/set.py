"""``set``: multi-label classification, any number of the training split's labels per row.

``p_l = sigmoid(w_l h + b_l)`` for every label ``l``; the loss is per-label sigmoid
cross-entropy, averaged over the labels and the rows with a target; the prediction is every
label with ``p_l >= threshold``. A table cell holds the labels separated by ``separator``
(default: whitespace), or, in JSONL, a list; an empty cell is the empty set. Labels never seen
in training are dropped from the truth (they cannot be predicted), so a row whose labels are
all unseen counts as the empty set in the metrics.

Shapes: fused ``[B, D]`` -> logits ``[B, num_labels]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..fusion.base import mlp
from ..outputs.set import set_scores
from ..registry import HEADS
from ..specs import TargetSpec
from .base import Head


class SetOptions(Options):
    hidden: list[int] = Field(default_factory=list, description="MLP widths before the logits")
    dropout: float = Field(0.0, ge=0, lt=1)
    threshold: float = Field(0.5, gt=0, lt=1, description="a label is predicted at or above "
                             "this probability")
    separator: str | None = Field(None, description="what separates the labels of a CSV cell "
                                  "(default: whitespace)")
    report_top: int = Field(10, ge=1, description="probabilities reported per prediction")


@HEADS.register("set", SetOptions)
class SetHead(Head):
    """One sigmoid per label, trained with binary cross-entropy."""

    def __init__(self, options: SetOptions, in_dim: int, spec: TargetSpec) -> None:
        super().__init__()
        self.options = options
        self.labels = list(spec.labels)
        self.top_set = np.array([label in spec.top_set for label in self.labels], dtype=bool)
        body, width = mlp(in_dim, options.hidden, options.dropout)
        self.net = nn.Sequential(body, nn.Linear(width, len(self.labels)))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean sigmoid cross-entropy over labels and rows with a target (NaN rows: none)."""
        known = ~torch.isnan(target[:, 0]) if target.numel() else target.new_zeros(0, dtype=bool)
        if not bool(known.any()):
            return logits.sum() * 0.0
        y = target[known].float()
        if label_smoothing:
            y = y * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits[known].float(), y)

    def accuracy(self, logits: torch.Tensor, target: torch.Tensor) -> float:
        """Mean Jaccard of the predicted sets (the training loop's score)."""
        known = ~torch.isnan(target[:, 0])
        if not bool(known.any()):
            return float("nan")
        predicted = torch.sigmoid(logits[known].float()) >= self.options.threshold
        return set_scores(predicted.numpy(force=True), target[known].numpy(force=True) > 0.5
                          )["jaccard"]

    def describe(self) -> dict:
        """What ``GET /v1/model`` says about this output."""
        return {"labels": self.labels, "threshold": self.options.threshold}

    def postprocess(self, logits: torch.Tensor) -> list[dict]:
        """Per row: the labels at or above the threshold and the top probabilities."""
        probs = torch.sigmoid(logits.double())
        k = min(self.options.report_top, probs.shape[-1])
        rows = []
        for row in probs.tolist():
            order = sorted(range(len(row)), key=lambda i: -row[i])
            rows.append({"prediction": [self.labels[i] for i in order
                                        if row[i] >= self.options.threshold],
                         "probabilities": {self.labels[i]: round(row[i], 6)
                                           for i in order[:k]}})
        return rows
