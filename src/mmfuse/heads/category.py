"""``category``: softmax classification over the labels seen in the training split.

``p = softmax(W h + b)``; trained with cross-entropy computed from the logits
(``F.cross_entropy`` applies log-softmax itself, which is numerically stable; a loss on softmax
outputs would not be). Rows whose label was not seen in training (index ``-100``) are left out
of the loss and count as wrong in accuracy.

Shapes: fused ``[B, D]`` -> logits ``[B, num_labels]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..fusion.base import mlp
from ..registry import HEADS

IGNORE_INDEX = -100


class CategoryOptions(Options):
    hidden: list[int] = Field(default_factory=list, description="MLP widths before the logits")
    dropout: float = Field(0.0, ge=0, lt=1)
    top_k: int = Field(10, ge=1, description="probabilities reported per prediction")


@HEADS.register("category", CategoryOptions)
class CategoryHead(nn.Module):
    """Softmax classifier trained with cross-entropy on logits."""

    def __init__(self, options: CategoryOptions, in_dim: int, labels: list[str],
                 input_dims: dict[str, dict] | None = None) -> None:
        super().__init__()
        self.labels = labels
        self.top_k = options.top_k
        body, width = mlp(in_dim, options.hidden, options.dropout)
        self.net = nn.Sequential(body, nn.Linear(width, len(labels)))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean cross-entropy over rows with a known label."""
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)

    @staticmethod
    def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
        """Share of rows whose top label is right; rows with an unseen label count as wrong."""
        if len(target) == 0:
            return float("nan")
        return (logits.argmax(-1) == target).float().mean().item()

    def postprocess(self, logits: torch.Tensor) -> list[dict]:
        """Per row: the predicted label and the top-k probabilities, highest first."""
        probs = logits.float().softmax(-1)
        k = min(self.top_k, probs.shape[-1])
        top_p, top_i = probs.topk(k, dim=-1)
        rows = []
        for p_row, i_row in zip(top_p.tolist(), top_i.tolist(), strict=True):
            probabilities = {self.labels[i]: round(p, 6) for p, i in zip(p_row, i_row, strict=True)}
            rows.append({"prediction": self.labels[i_row[0]], "probabilities": probabilities})
        return rows
