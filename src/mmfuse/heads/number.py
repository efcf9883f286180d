"""``number``: regression of one value per row.

The head predicts the target normalised with the training split's mean and standard deviation,
``z = (y - mean) / std``, so its loss has the same scale whatever the units; predictions come
back in the original units, ``mean + std * z``, clipped to ``clip: [low, high]`` when given
(either end may be null). The loss is ``mse`` (default), ``mae`` or ``huber`` (quadratic within
``huber_delta`` standard deviations, linear beyond: robust to a few wild targets). Rows without
a target (NaN) are left out of the loss.

Shapes: fused ``[B, D]`` -> ``[B]`` (normalised).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..config_base import Options
from ..fusion.base import mlp
from ..registry import HEADS
from ..specs import TargetSpec
from .base import Head


class NumberOptions(Options):
    hidden: list[int] = Field(default_factory=list, description="MLP widths before the output")
    dropout: float = Field(0.0, ge=0, lt=1)
    loss: Literal["mse", "mae", "huber"] = Field("mse", description="on the normalised target")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns linear, "
                               "in standard deviations of the target")
    clip: tuple[float | None, float | None] | None = Field(
        None, description="[low, high]: predictions are clipped to this range (null: open)")

    @model_validator(mode="after")
    def _ordered(self) -> NumberOptions:
        if self.clip and None not in self.clip and self.clip[0] > self.clip[1]:
            raise ValueError(f"clip: low {self.clip[0]} is above high {self.clip[1]}")
        return self


@HEADS.register("number", NumberOptions)
class NumberHead(Head):
    """Regression on a normalised target; predictions in the original units."""

    def __init__(self, options: NumberOptions, in_dim: int, spec: TargetSpec) -> None:
        super().__init__()
        self.options = options
        self.mean, self.std = float(spec.mean), float(spec.std)
        self.labels: list[str] = []
        body, width = mlp(in_dim, options.hidden, options.dropout)
        self.net = nn.Sequential(body, nn.Linear(width, 1))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).squeeze(-1)

    def loss(self, predicted: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean loss over rows with a target."""
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return predicted.sum() * 0.0
        p, y = predicted[known].float(), target[known].float()
        if self.options.loss == "mae":
            return F.l1_loss(p, y)
        if self.options.loss == "huber":
            return F.huber_loss(p, y, delta=self.options.huber_delta)
        return F.mse_loss(p, y)

    @staticmethod
    def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
        """R² on the normalised scale (the training loop's higher-is-better score)."""
        known = ~torch.isnan(target)
        if int(known.sum()) < 2:
            return float("nan")
        p, y = predicted[known].detach().double(), target[known].double()
        sst = (y - y.mean()).square().sum()
        return float(1 - (y - p).square().sum() / sst) if sst > 0 else float("nan")

    def values(self, predicted: torch.Tensor) -> np.ndarray:
        """Predictions in the original units, clipped."""
        values = predicted.double().numpy() * self.std + self.mean
        if self.options.clip:
            low, high = self.options.clip
            values = np.clip(values, -np.inf if low is None else low,
                             np.inf if high is None else high)
        return values

    def describe(self) -> dict:
        """What ``GET /v1/model`` says about this output."""
        return {"clip": list(self.options.clip) if self.options.clip else None}

    def postprocess(self, predicted: torch.Tensor) -> list[dict]:
        """Per row: ``{"prediction": value}`` in the original units."""
        return [{"prediction": round(float(v), 6)} for v in self.values(predicted)]
