"""``category``: softmax classification over the labels seen in the training split.

``p = softmax((W h + b) / T)``; trained with cross-entropy computed from the logits
(``F.cross_entropy`` applies log-softmax itself, which is numerically stable; a loss on softmax
outputs would not be). Rows whose label was not seen in training (index ``-100``) are left out
of the loss and count as wrong in accuracy.

- ``class_weights: balanced`` weights each class's loss by ``N / (C * n_c)`` (its training rows
  ``n_c``), so a rare class counts as much as a common one.
- ``calibrate: true`` fits the temperature ``T`` on the validation split after training
  (temperature scaling, Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML,
  arXiv:1706.04599): the argmax, hence accuracy, is unchanged and the probabilities become
  honest. ``T`` is 1 otherwise.
- ``top_k`` (3) names the extra metric ``top_k_accuracy``: the true label among the k most
  probable; ``report_top`` (10) is how many probabilities a prediction lists.

Shapes: fused ``[B, D]`` -> logits ``[B, num_labels]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..fusion.base import mlp
from ..outputs.category import IGNORE_INDEX
from ..registry import HEADS
from ..specs import TargetSpec
from .base import Head, HeadTraits


class CategoryOptions(Options):
    hidden: list[int] = Field(default_factory=list, description="MLP widths before the logits")
    dropout: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["balanced"] | None = Field(
        None, description="balanced: weight each class's loss by N / (classes * its rows)")
    calibrate: bool = Field(False, description="fit a softmax temperature on the validation "
                            "split after training (probabilities, not accuracy, change)")
    top_k: int = Field(3, ge=1, description="k of the top_k_accuracy metric")
    report_top: int = Field(10, ge=1, description="probabilities reported per prediction")


@HEADS.register("category", CategoryOptions)
class CategoryHead(Head):
    """Softmax classifier trained with cross-entropy on logits."""

    def __init__(self, options: CategoryOptions, in_dim: int, spec: TargetSpec) -> None:
        super().__init__()
        self.options = options
        self.labels = list(spec.labels)
        self.temperature = float(spec.calibration.get("temperature", 1.0))
        body, width = mlp(in_dim, options.hidden, options.dropout)
        self.net = nn.Sequential(body, nn.Linear(width, len(self.labels)))
        weights = None
        if options.class_weights == "balanced" and spec.counts:
            counts = torch.tensor([float(spec.counts.get(label, 0)) for label in self.labels])
            weights = counts.sum() / (len(counts) * counts.clamp(min=1.0))
        # not saved with the weights: rebuilt from the label counts in the bundle's state
        self.register_buffer("class_weight", weights, persistent=False)

    @property
    def traits(self) -> HeadTraits:
        """A temperature is fitted after training with ``calibrate: true``; it scales the
        head's own logits."""
        return HeadTraits(needs_calibration=self.options.calibrate, calibrates_logits=True)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        logits = self.net(fused)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean (class-weighted) cross-entropy over rows with a known label."""
        if not bool((target != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        weight = None if self.class_weight is None else self.class_weight.float()
        logits = logits if weight is None else logits.float()  # weights in fp32 under autocast
        return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)

    @staticmethod
    def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
        """Share of rows whose top label is right; rows with an unseen label count as wrong."""
        if len(target) == 0:
            return float("nan")
        return (logits.argmax(-1) == target).float().mean().item()

    def calibrate(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Fit the temperature on validation logits (as the head gives them now); returns the
        calibration to store, ``{}`` when the output does not ask for it."""
        if not self.options.calibrate:
            return {}
        known = target != IGNORE_INDEX
        raw = logits[known].double() * self.temperature
        temperature = fit_temperature(raw, target[known])
        self.temperature = temperature
        return {"temperature": temperature}

    def describe(self) -> dict:
        """What ``GET /v1/model`` says about this output."""
        return {"labels": self.labels}

    def postprocess(self, logits: torch.Tensor) -> list[dict]:
        """Per row: the predicted label and the top probabilities, highest first."""
        probs = logits.float().softmax(-1)
        k = min(self.options.report_top, probs.shape[-1])
        top_p, top_i = probs.topk(k, dim=-1)
        rows = []
        for p_row, i_row in zip(top_p.tolist(), top_i.tolist(), strict=True):
            probabilities = {self.labels[i]: round(p, 6) for p, i in zip(p_row, i_row, strict=True)}
            rows.append({"prediction": self.labels[i_row[0]], "probabilities": probabilities})
        return rows


def fit_temperature(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The temperature ``T`` minimising the cross-entropy of ``logits / T`` (L-BFGS over
    ``log T``, so T stays positive), within [0.01, 100] (a model no better than chance on the
    split would drive T to infinity); 1.0 when there is nothing to fit."""
    if len(target) < 2:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = float(log_t.detach().exp())
    return min(max(value, 1e-2), 1e2) if np.isfinite(value) else 1.0
