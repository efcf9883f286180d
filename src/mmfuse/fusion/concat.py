"""``concat``: concatenate the pooled vectors of all inputs, then an MLP.

``F = MLP([x_1; x_2; ...; m_1; m_2; ...])``, where ``m_i`` is 1 when input i is present in the
row and 0 when it is missing (its vector is zeroed); the flags let the MLP tell a missing input
from a zero one. This is the "CNN+MLP" baseline of Santoro et al. 2017.

Shapes: ``{name: Features}`` with pooled ``[B, P_i]`` -> ``[B, hidden[-1]]``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..config_base import Options
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, mlp


class ConcatOptions(Options):
    hidden: list[int] = Field([256, 256], description="MLP widths after concatenation")
    dropout: float = Field(0.0, ge=0, lt=1)


@FUSIONS.register("concat", ConcatOptions)
class ConcatFusion(Fusion):
    """Concatenation of the pooled vectors followed by an MLP."""

    def __init__(self, options: ConcatOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.names = list(input_dims)
        width = sum(d.pooled_dim for d in input_dims.values()) + len(self.names)
        self.mlp, self.out_dim = mlp(width, options.hidden, options.dropout)

    def forward(self, features: dict) -> torch.Tensor:
        present = [features[n].present.unsqueeze(-1) for n in self.names]
        vectors = [torch.where(p, features[n].pooled, 0.0)
                   for n, p in zip(self.names, present, strict=True)]
        return self.mlp(torch.cat(vectors + [p.float() for p in present], dim=-1))
