"""``binary``: one yes/no decision per row, as the logit of the positive label.

``p = sigmoid(w h + b)`` is the probability of the positive label (``positive:``; by default
``true``, ``yes`` or ``1`` when the training labels are such spellings). The loss is binary
cross-entropy on the logit, with the positive rows weighted by ``positive_class_weight``
(> 1 when positives are rare and missing one costs more). The label is positive when
``p >= threshold``: a fixed value (0.5), or ``threshold: auto``, chosen after training on the
validation split to maximise F1.

Shapes: fused ``[B, D]`` -> logits ``[B]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..fusion.base import mlp
from ..outputs.binary import best_f1_threshold
from ..registry import HEADS
from ..specs import TargetSpec
from .base import Head, HeadTraits


class BinaryOptions(Options):
    hidden: list[int] = Field(default_factory=list, description="MLP widths before the logit")
    dropout: float = Field(0.0, ge=0, lt=1)
    positive: str | None = Field(
        None, description="the positive label as written in the table (default: true, yes or "
        "1 when the labels are such spellings)")
    positive_class_weight: float = Field(1.0, gt=0, description="weight of positive rows in "
                                         "the loss")
    threshold: float | Literal["auto"] = Field(
        0.5, description="probability at which the positive label is predicted; auto: the one "
        "maximising F1 on the validation split")


@HEADS.register("binary", BinaryOptions)
class BinaryHead(Head):
    """Logistic output trained with binary cross-entropy on the logit."""

    def __init__(self, options: BinaryOptions, in_dim: int, spec: TargetSpec) -> None:
        super().__init__()
        self.options = options
        self.labels = list(spec.labels)  # [negative, positive]
        self.threshold = float(spec.calibration.get(
            "threshold", 0.5 if options.threshold == "auto" else options.threshold))
        self.majority = 1.0 if spec.counts.get(self.labels[1], 0) > spec.counts.get(
            self.labels[0], 0) else 0.0
        self.boolean = spec.json_bool  # the labels were JSON booleans
        body, width = mlp(in_dim, options.hidden, options.dropout)
        self.net = nn.Sequential(body, nn.Linear(width, 1))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).squeeze(-1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean binary cross-entropy over rows with a label."""
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return logits.sum() * 0.0
        y = target[known].float()
        if label_smoothing:
            y = y * (1 - label_smoothing) + 0.5 * label_smoothing
        weight = torch.tensor(self.options.positive_class_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits[known].float(), y, pos_weight=weight)

    @staticmethod
    def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
        """Share of labelled rows right at probability 0.5."""
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return float("nan")
        return ((logits[known] >= 0) == (target[known] == 1)).float().mean().item()

    @property
    def traits(self) -> HeadTraits:
        """A threshold is fitted after training with ``threshold: auto`` (on the answers
        served, a classic predictor's included)."""
        return HeadTraits(needs_calibration=self.options.threshold == "auto")

    def calibrate(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """With ``threshold: auto``, the threshold maximising F1 on validation logits."""
        if self.options.threshold != "auto":
            return {}
        known = ~torch.isnan(target)
        self.threshold = best_f1_threshold(torch.sigmoid(logits[known].double()).numpy(),
                                           target[known].numpy())
        return {"threshold": self.threshold}

    def describe(self) -> dict:
        """What ``GET /v1/model`` says about this output."""
        return {"labels": self.labels, "positive": self.labels[1],
                "threshold": round(self.threshold, 6)}

    def label(self, positive: bool) -> str | bool:
        """A label as the training table wrote it (a JSON boolean stays one)."""
        return positive if self.boolean else self.labels[int(positive)]

    def postprocess(self, logits: torch.Tensor) -> list[dict]:
        """Per row: the label, P(positive) and both labels' probabilities."""
        rows = []
        for p in torch.sigmoid(logits.double()).tolist():
            rows.append({"prediction": self.label(p >= self.threshold),
                         "probability": round(p, 6),
                         "probabilities": {self.labels[1]: round(p, 6),
                                           self.labels[0]: round(1 - p, 6)}})
        return rows
