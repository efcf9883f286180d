"""``sum`` and ``product``: element-wise fusion after projecting every input to one width.

The textbook ``F = I + T`` (or ``I * T``) only works once both sides have the same width, so each
input's pooled vector first goes through its own ``Linear(P_i, dim) + tanh``:
``F = sum_i tanh(W_i x_i + b_i)`` or ``F = prod_i tanh(W_i x_i + b_i)``. The product is the
multiplicative fusion used in early VQA models (Antol et al. 2015, "VQA: Visual Question
Answering"). An input missing in a row is left out of that row's sum (product).
An optional MLP follows.

Shapes: ``{name: Features}`` -> ``[B, dim]`` (or the last hidden width of the MLP).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..config_base import Options
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, PooledProjection, mlp


class ElementwiseOptions(Options):
    dim: int = Field(256, ge=1, description="common width every input is projected to")
    activation: Literal["tanh", "relu", "none"] = "tanh"
    hidden: list[int] = Field(default_factory=list, description="MLP widths after fusing")
    dropout: float = Field(0.0, ge=0, lt=1)


class ElementwiseFusion(Fusion):
    """Projects inputs to a common width and combines them element-wise."""

    def __init__(self, options: ElementwiseOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.project = PooledProjection(input_dims, options.dim, options.activation)
        self.mlp, self.out_dim = mlp(options.dim, options.hidden, options.dropout)

    def combine(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: dict) -> torch.Tensor:
        return self.mlp(self.combine(list(self.project(features).values())))


@FUSIONS.register("sum", ElementwiseOptions)
class SumFusion(ElementwiseFusion):
    """Element-wise sum of the inputs projected to one width."""

    def combine(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return sum(torch.where(present, x, 0.0) for x, present in parts)


@FUSIONS.register("product", ElementwiseOptions)
class ProductFusion(ElementwiseFusion):
    """Element-wise (Hadamard) product of the inputs projected to one width."""

    def combine(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        out = torch.ones_like(parts[0][0])
        for x, present in parts:
            out = out * torch.where(present, x, 1.0)  # a missing input multiplies by one
        return out
