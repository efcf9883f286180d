"""``mlb``, ``mfb`` and ``mutan``: low-rank bilinear pooling of the pooled vectors.

Each input is mapped to factors that are multiplied element-wise across inputs (more than two
inputs: all factors are multiplied). A missing input's factor is set to ones, neutral for the
product, and its vector is zeroed first so no large or non-finite value reaches the maths.

- ``mlb`` (Kim et al. 2017, "Hadamard Product for Low-rank Bilinear Pooling"):
  ``z = P^T (tanh(U_1 x_1) * tanh(U_2 x_2) * ...) + b``.
- ``mfb`` (Yu et al. 2017, "Multi-modal Factorized Bilinear Pooling with Co-Attention Learning
  for Visual Question Answering"): ``z = SumPool_k(Dropout(U_1 x_1 * U_2 x_2 * ...))`` with each
  ``U_i x_i`` of width ``k * o``, then ``z = sign(z) sqrt(|z|)`` and ``z = z / ||z||_2``.
- ``mutan`` (Ben-younes et al. 2017, "MUTAN: Multimodal Tucker Fusion for Visual Question
  Answering"): ``q_i = tanh(W_i x_i)`` of width ``input_dim``; the Tucker core of rank ``R`` is
  ``z = sum_r prod_i tanh(M_ir q_i)``.

Shapes: ``{name: Features}`` with pooled ``[B, P_i]`` -> ``[B, dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion


def hadamard(factors: nn.ModuleDict, features: dict) -> torch.Tensor:
    """``prod_i factors[i](x_i)``, where a missing input's factor is ones."""
    out = None
    for name, factor in factors.items():
        present = features[name].present.unsqueeze(-1)
        value = torch.where(present, factor(torch.where(present, features[name].pooled, 0.0)), 1.0)
        out = value if out is None else out * value
    return out


class MLBOptions(Options):
    joint_dim: int = Field(1200, ge=1, description="width d of the Hadamard product (the rank)")
    dim: int = Field(256, ge=1, description="output width after the projection P")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the Hadamard product")


@FUSIONS.register("mlb", MLBOptions)
class MLBFusion(Fusion):
    """Multimodal Low-rank Bilinear pooling: projection of the product of tanh projections."""

    def __init__(self, options: MLBOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.factors = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(d.pooled_dim, options.joint_dim), nn.Tanh())
            for name, d in input_dims.items()})
        self.dropout = nn.Dropout(options.dropout)
        self.out = nn.Linear(options.joint_dim, options.dim)
        self.out_dim = options.dim

    def forward(self, features: dict) -> torch.Tensor:
        return self.out(self.dropout(hadamard(self.factors, features)))


class MFBOptions(Options):
    factor: int = Field(5, ge=1, description="k: the product is sum-pooled over k factors")
    dim: int = Field(256, ge=1, description="o: output width")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the product before pooling")


@FUSIONS.register("mfb", MFBOptions)
class MFBFusion(Fusion):
    """Multi-modal Factorized Bilinear pooling, power- and L2-normalised."""

    def __init__(self, options: MFBOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.factor = options.factor
        self.factors = nn.ModuleDict({
            name: nn.Linear(d.pooled_dim, options.factor * options.dim)
            for name, d in input_dims.items()})
        self.dropout = nn.Dropout(options.dropout)
        self.out_dim = options.dim

    def forward(self, features: dict) -> torch.Tensor:
        z = self.dropout(hadamard(self.factors, features))
        # Normalised in fp32 under autocast: fp16 rounds the eps below to 0 (and the norm of
        # an all-zero row to a division by 0).
        z = z.unflatten(-1, (self.out_dim, self.factor)).sum(dim=-1).float()
        # The eps keeps the gradient of sqrt finite at z = 0 (sign(0) = 0 keeps the value 0).
        z = z.sign() * (z.abs() + 1e-12).sqrt()
        return F.normalize(z, dim=-1)


class MutanOptions(Options):
    input_dim: int = Field(310, ge=1, description="width every input is projected to first")
    rank: int = Field(5, ge=1, description="R: rank slices of the Tucker core, summed")
    dim: int = Field(256, ge=1, description="output width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the first projections")


@FUSIONS.register("mutan", MutanOptions)
class MutanFusion(Fusion):
    """MUTAN: Tucker fusion with a rank-R core, a sum of R Hadamard products."""

    def __init__(self, options: MutanOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.rank = options.rank
        self.factors = nn.ModuleDict({
            name: nn.Sequential(
                nn.Linear(d.pooled_dim, options.input_dim), nn.Tanh(),
                nn.Dropout(options.dropout),
                nn.Linear(options.input_dim, options.rank * options.dim), nn.Tanh())
            for name, d in input_dims.items()})
        self.out_dim = options.dim

    def forward(self, features: dict) -> torch.Tensor:
        z = hadamard(self.factors, features)  # [B, R * dim]: the R slices side by side
        return z.unflatten(-1, (self.rank, self.out_dim)).sum(dim=1)
