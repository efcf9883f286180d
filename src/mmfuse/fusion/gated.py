"""``gated``: Gated Multimodal Unit (Arevalo et al. 2017, "Gated Multimodal Units for
Information Fusion").

``h_i = tanh(W_i x_i)``; gates come from the concatenation of all inputs. With two inputs this
is the paper's ``z = sigmoid(W_z [x_1; x_2])`` and ``h = z * h_1 + (1 - z) * h_2``; with more
inputs the gates are a softmax over inputs per dimension, ``z = softmax_i(W_z [x_1; ...; x_n])``
and ``h = sum_i z_i * h_i``. A missing input is zeroed in the gate's input and its gate is set
to zero (logit -inf), so the present inputs' gates renormalise. An optional MLP follows.

Shapes: ``{name: Features}`` with pooled ``[B, P_i]`` -> ``[B, dim]`` (or ``[B, hidden[-1]]``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, PooledProjection, mlp


class GatedOptions(Options):
    dim: int = Field(256, ge=1, description="width of each input's tanh projection h_i")
    hidden: list[int] = Field(default_factory=list, description="MLP widths after the gated sum")
    dropout: float = Field(0.0, ge=0, lt=1)


@FUSIONS.register("gated", GatedOptions)
class GatedFusion(Fusion):
    """Gated Multimodal Unit: per-dimension learned gates mix the inputs' tanh projections."""

    def __init__(self, options: GatedOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.names = list(input_dims)
        self.dim = options.dim
        self.project = PooledProjection(input_dims, options.dim, "tanh")
        # Two inputs need one sigmoid gate z (the other is 1 - z): a softmax over [logit, 0].
        self.gated_inputs = 1 if len(self.names) == 2 else len(self.names)
        width = sum(d.pooled_dim for d in input_dims.values())
        self.gate = nn.Linear(width, options.dim * self.gated_inputs)
        self.mlp, self.out_dim = mlp(options.dim, options.hidden, options.dropout)

    def gates(self, features: dict) -> torch.Tensor:
        """Gate values ``[B, dim, n_inputs]``: they sum to one over present inputs, and are zero
        for missing ones (uniform over inputs in a row where every input is missing)."""
        present = torch.stack([features[n].present for n in self.names], dim=-1)  # [B, n]
        x = torch.cat([torch.where(features[n].present.unsqueeze(-1), features[n].pooled, 0.0)
                       for n in self.names], dim=-1)
        logits = self.gate(x).unflatten(-1, (self.dim, self.gated_inputs))
        if self.gated_inputs == 1:
            logits = torch.cat([logits, torch.zeros_like(logits)], dim=-1)  # sigmoid(l) = z
        # Block missing inputs, unless a row has none present (softmax of all -inf is NaN).
        blocked = ~present & present.any(dim=-1, keepdim=True)
        return logits.masked_fill(blocked.unsqueeze(1), float("-inf")).softmax(dim=-1)

    def forward(self, features: dict) -> torch.Tensor:
        h = torch.stack([torch.where(present, x, 0.0)
                         for x, present in self.project(features).values()], dim=-1)
        return self.mlp((self.gates(features) * h).sum(dim=-1))
