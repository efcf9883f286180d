"""``tensor`` and ``low_rank_tensor``: outer-product fusion of ``[x_i; 1]`` vectors.

- ``tensor`` (Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis"):
  each pooled vector is projected to a small width ``dim`` (``z_i = tanh(W_i x_i)``), a 1 is
  appended, and the outer product ``[z_1; 1] (x) [z_2; 1] (x) ...`` is flattened (width
  ``prod_i (dim + 1)``, which holds every unimodal, bimodal, ... interaction) and fed to an MLP.
- ``low_rank_tensor`` (Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with
  Modality-Specific Factors"): the same tensor times a weight tensor of rank ``r``, computed
  without building it: ``h = sum_r w_r prod_i (A_ir [x_i; 1]) + b``. A ``Linear`` with bias is
  exactly a factor applied to ``[x; 1]`` (``A [x; 1] = W x + bias``).

A missing input's ``[x; 1]`` becomes ``[0 ... 0; 1]``, so only the constant term remains.

Shapes: ``{name: Features}`` with pooled ``[B, P_i]`` -> ``[B, hidden[-1]]`` (``tensor``, or
``[B, prod_i (dim + 1)]`` with no MLP) or ``[B, dim]`` (``low_rank_tensor``).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, PooledProjection, mlp


class TensorOptions(Options):
    dim: int = Field(32, ge=1, description="width each input is projected to before the "
                                           "outer product (its size grows as (dim + 1)^inputs)")
    hidden: list[int] = Field([256], description="MLP widths after the outer product")
    dropout: float = Field(0.0, ge=0, lt=1)


@FUSIONS.register("tensor", TensorOptions)
class TensorFusion(Fusion):
    """Tensor Fusion Network: MLP on the outer product of the [projection; 1] vectors."""

    def __init__(self, options: TensorOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.project = PooledProjection(input_dims, options.dim, "tanh")
        self.tensor_dim = (options.dim + 1) ** len(input_dims)
        self.mlp, self.out_dim = mlp(self.tensor_dim, options.hidden, options.dropout)

    def outer(self, features: dict) -> torch.Tensor:
        """The flattened outer product ``[B, prod_i (dim + 1)]``."""
        out = None
        for z, present in self.project(features).values():
            z = torch.cat([torch.where(present, z, 0.0), torch.ones_like(z[:, :1])], dim=-1)
            out = z if out is None else (out.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
        return out

    def forward(self, features: dict) -> torch.Tensor:
        return self.mlp(self.outer(features))


class LowRankTensorOptions(Options):
    rank: int = Field(4, ge=1, description="r: rank of the fusion weight tensor")
    dim: int = Field(256, ge=1, description="output width")


@FUSIONS.register("low_rank_tensor", LowRankTensorOptions)
class LowRankTensorFusion(Fusion):
    """Low-rank Multimodal Fusion: rank-r modality factors, multiplied across inputs."""

    def __init__(self, options: LowRankTensorOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.rank = options.rank
        self.factors = nn.ModuleDict({
            name: nn.Linear(d.pooled_dim, options.rank * options.dim)
            for name, d in input_dims.items()})
        self.rank_weights = nn.Parameter(torch.randn(options.rank) / math.sqrt(options.rank))
        self.bias = nn.Parameter(torch.zeros(options.dim))
        self.out_dim = options.dim

    def forward(self, features: dict) -> torch.Tensor:
        product = None
        for name, factor in self.factors.items():
            present = features[name].present.unsqueeze(-1)
            value = factor(torch.where(present, features[name].pooled, 0.0))  # A_ir [x_i; 1]
            product = value if product is None else product * value
        product = product.unflatten(-1, (self.rank, self.out_dim))  # [B, r, dim]
        return torch.einsum("r,brd->bd", self.rank_weights, product) + self.bias
