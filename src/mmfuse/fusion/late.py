"""``late``: late fusion (one representation per input, combined with learned weights), or its
``early`` counterpart (inputs joined before one shared encoder).

- ``mode: late`` (default): each input has its own network ``h_i = MLP_i(x_i)`` ending in a
  linear layer of width ``dim``, and ``out = sum_i w_i h_i`` with ``w = softmax(a)`` over one
  learned logit ``a_i`` per input, taken over the inputs present in the row (a missing input
  gets weight 0). Because the weights sum to one and the default head is linear
  (``W h + b``), ``head(out) = sum_i w_i head(h_i)``: this is one prediction head per input,
  combined with learned weights.
- ``mode: early``: each input's tokens are projected to ``dim`` and tagged with a learned
  per-input embedding, all inputs are concatenated along the sequence (a missing input's tokens
  are masked out), one shared ``nn.TransformerEncoderLayer`` runs over the joint sequence, and
  the output is the mean over real tokens. Here the inputs meet before the shared encoder.

See Baltrusaitis et al. 2019, "Multimodal Machine Learning: A Survey and Taxonomy".

Shapes: ``{name: Features}`` with pooled ``[B, P_i]`` (late) or tokens ``[B, N_i, D_i]``
(early) -> ``[B, dim]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, mlp


class LateOptions(Options):
    mode: Literal["late", "early"] = Field(
        "late", description="late: one network per input, weighted sum; early: one shared "
                            "transformer layer over all inputs' tokens")
    hidden: list[int] = Field([256], description="per-input MLP widths (late mode)")
    dim: int = Field(256, ge=1, description="output width")
    heads: int = Field(4, ge=1, description="attention heads of the shared layer (early mode)")
    dropout: float = Field(0.0, ge=0, lt=1)


@FUSIONS.register("late", LateOptions)
class LateFusion(Fusion):
    """Late fusion: per-input networks mixed by learned weights (or early: one shared encoder)."""

    def __init__(self, options: LateOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.names = list(input_dims)
        self.mode = options.mode
        self.out_dim = options.dim
        if self.mode == "late":
            self.nets = nn.ModuleDict({name: self._net(d.pooled_dim, options)
                                       for name, d in input_dims.items()})
            self.weight_logits = nn.Parameter(torch.zeros(len(self.names)))
            return
        if options.dim % options.heads:
            raise ConfigError(f"fusion 'late' with mode 'early': dim={options.dim} is not a "
                              f"multiple of heads={options.heads}; change dim or heads")
        self.proj = nn.ModuleDict({name: nn.Linear(d.token_dim, options.dim)
                                   for name, d in input_dims.items()})
        self.input_embedding = nn.Parameter(torch.randn(len(self.names), options.dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(
            options.dim, options.heads, dim_feedforward=4 * options.dim,
            dropout=options.dropout, batch_first=True)

    @staticmethod
    def _net(in_dim: int, options: LateOptions) -> nn.Module:
        body, width = mlp(in_dim, options.hidden, options.dropout)
        return nn.Sequential(body, nn.Linear(width, options.dim))

    def weights(self, present: torch.Tensor) -> torch.Tensor:
        """Input weights ``[B, n]`` from ``present`` ``[B, n]``: softmax over the present
        inputs, exactly zero for missing ones (all zero in a row with no input)."""
        logits = self.weight_logits.expand_as(present)
        none = ~present.any(dim=-1, keepdim=True)  # all -inf would give NaN: use 0 logits
        logits = torch.where(present | none, logits, float("-inf"))
        return logits.softmax(dim=-1) * present

    def forward(self, features: dict) -> torch.Tensor:
        return self._late(features) if self.mode == "late" else self._early(features)

    def _late(self, features: dict) -> torch.Tensor:
        present = torch.stack([features[n].present for n in self.names], dim=-1)
        h = torch.stack([net(torch.where(features[n].present.unsqueeze(-1),
                                         features[n].pooled, 0.0))
                         for n, net in self.nets.items()], dim=1)  # [B, n, dim]
        return (self.weights(present).unsqueeze(-1) * h).sum(dim=1)

    def _early(self, features: dict) -> torch.Tensor:
        tokens, masks = [], []
        for i, name in enumerate(self.names):
            f = features[name]
            present = f.present[:, None, None]
            tokens.append(self.proj[name](torch.where(present, f.tokens, 0.0))
                          + self.input_embedding[i])
            masks.append(f.mask & f.present.unsqueeze(-1))
        x, mask = torch.cat(tokens, dim=1), torch.cat(masks, dim=1)  # [B, N, dim], [B, N]
        # A row with no real token would attend to nothing (NaN): let it attend to everything;
        # its tokens hold no input values (zeroed) and the pooling below still gives zeros.
        attend = mask | ~mask.any(dim=1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=~attend)
        weight = mask.unsqueeze(-1).to(x.dtype)
        return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
