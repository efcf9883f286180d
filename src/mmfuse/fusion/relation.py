"""``relation``: a relation network over the tokens of one input, conditioned on the others.

Santoro et al. 2017, "A simple neural network module for relational reasoning":
``RN(O, q) = f( sum_{i,j} g([o_i; o_j; q]) )`` over pairs of objects ``o`` (here the tokens of
the context input, e.g. the image grid cells with their (x, y) positions) and the query ``q``
(e.g. the question vector; several query inputs are concatenated).

The first layer of ``g`` is linear in the concatenation, so it splits as
``W [o_i; o_j; q] = A o_i + B o_j + C q``: ``A o`` and ``B o`` are computed once per object and
broadcast over the pairs, and ``C q`` once per row, instead of running the layer on every
concatenated pair (N^2 rows of width 2D+Q). Pairs that involve a padding token or a missing
input are left out of the sum.

``pairs: anchored`` is a cheaper variant for questions about one object ("the object closest to
the red one"): an attention over the objects, driven by ``q``, picks a soft anchor
``a = sum_i p_i o_i``, and only the N pairs ``(a, o_j)`` go through ``g``, not N^2.

Shapes: context tokens ``[B, N, D]``, query pooled ``[B, Q]`` -> ``[B, hidden_f[-1]]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..registry import FUSIONS
from .base import mlp, pick_query


class RelationOptions(Options):
    context: str | None = Field(None, description="input whose tokens are the objects "
                                "(default: the first input that is not the query)")
    query: str | None = Field(None, description="conditioning input (default: first text input)")
    pairs: Literal["all", "anchored"] = Field("all", description="all N^2 pairs, or N pairs "
                                              "with a question-driven soft anchor")
    object_dim: int = Field(0, ge=0, description="project object tokens to this width first "
                            "(0 = keep the encoder's width)")
    hidden_g: list[int] = Field([256, 256, 256, 256], min_length=1)
    hidden_f: list[int] = Field([256, 256], min_length=1)
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in f")
    pool: Literal["sum", "mean"] = Field("sum", description="how g's outputs are aggregated")


@FUSIONS.register("relation", RelationOptions)
class RelationFusion(nn.Module):
    """Relation network: g over pairs of tokens conditioned on the query, summed, then f."""

    def __init__(self, options: RelationOptions, input_dims: dict[str, dict]) -> None:
        super().__init__()
        self.query = pick_query(input_dims, options.query)
        others = [n for n in input_dims if n != self.query]
        self.context = options.context or others[0]
        self.conditions = [n for n in input_dims if n != self.context]
        token_dim = input_dims[self.context]["token_dim"]
        self.project = (nn.Linear(token_dim, options.object_dim) if options.object_dim
                        else nn.Identity())
        obj = options.object_dim or token_dim
        cond = sum(input_dims[n]["pooled_dim"] for n in self.conditions)
        width = options.hidden_g[0]
        self.first_i = nn.Linear(obj, width)
        self.first_j = nn.Linear(obj, width, bias=False)
        self.first_q = nn.Linear(cond, width, bias=False)
        self.g_rest, g_out = mlp(width, options.hidden_g[1:], 0.0)
        self.f, self.out_dim = mlp(g_out, options.hidden_f, options.dropout)
        self.anchored = options.pairs == "anchored"
        if self.anchored:  # bilinear (dot-product) scores learn "which object is X" quickly
            self.anchor_key = nn.Linear(obj, width)
            self.anchor_query = nn.Linear(cond, width)
        self.mean = options.pool == "mean"

    def forward(self, features: dict) -> torch.Tensor:
        ctx = features[self.context]
        objects = self.project(ctx.tokens)  # [B, N, O]
        mask = ctx.mask & ctx.present.unsqueeze(-1)  # [B, N]
        q = torch.cat([torch.where(features[n].present.unsqueeze(-1), features[n].pooled, 0.0)
                       for n in self.conditions], dim=-1)
        left = self.first_i(self.anchor(objects, mask, q) if self.anchored else objects)
        right = self.first_j(objects)  # [B, N, H]
        cond = self.first_q(q)[:, None, None, :]  # [B, 1, 1, H]
        pairs = torch.relu(left[:, :, None, :] + right[:, None, :, :] + cond)  # [B, L, N, H]
        g = self.g_rest(pairs)
        pair_mask = (self._left_mask(mask)[:, :, None] & mask[:, None, :]).unsqueeze(-1)
        summed = torch.where(pair_mask, g, 0.0).sum(dim=(1, 2))
        if self.mean:
            summed = summed / pair_mask.sum(dim=(1, 2)).clamp(min=1)
        return self.f(summed)

    def anchor(self, objects: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The soft anchor object ``[B, 1, O]``: attention over objects driven by the query."""
        keys = self.anchor_key(objects)  # [B, N, H]
        scores = (keys @ self.anchor_query(q).unsqueeze(-1)).squeeze(-1) / keys.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(scores.softmax(-1))  # all-masked rows give zeros, not NaN
        self.last_attention = weights.detach()
        return (weights.unsqueeze(-1) * objects).sum(1, keepdim=True)

    def _left_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.any(-1, keepdim=True) if self.anchored else mask
