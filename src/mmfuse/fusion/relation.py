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
``a = sum_i p_i o_i``, and only the N pairs ``(a, o_j)`` go through ``g``, not N^2. ``f`` then
also sees ``a`` and ``q`` themselves, so questions about the anchor alone need no pair at all.

``relative_position: true`` adds the geometry of each pair to the first layer of ``g``:
``W_r [dx, dy, |d|]`` with ``d = pos_j - pos_i``, read from the last two channels of the
object tokens (the ``cnn`` encoder puts each cell's (x, y) there). "Closest" and "furthest" then
become a threshold on one learned feature instead of a distance the MLP must build from
coordinates (relative geometry features as in Hu et al. 2018, "Relation Networks for Object
Detection").

``pool`` lists how g's outputs are aggregated over pairs; several are concatenated. ``sum``
(the paper) and ``mean`` count, ``max`` detects, and ``attention`` (``softmax_j(w . g_j)``
weights) selects one pair, as "the shape of the closest object" needs.

Shapes: context tokens ``[B, N, D]``, query pooled ``[B, Q]`` -> ``[B, hidden_f[-1]]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..registry import FUSIONS
from ..specs import FusionTraits, InputDims
from .base import Fusion, mlp, pick_query


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
    relative_position: bool = Field(False, description="add [dx, dy, distance] of each pair, "
                                    "from the tokens' last two channels, to g's first layer")
    pool: list[Literal["sum", "mean", "max", "attention"]] = Field(
        ["sum"], min_length=1, description="aggregations of g over pairs, concatenated")

    @field_validator("pool", mode="before")
    @classmethod
    def _one_pool(cls, value):
        return [value] if isinstance(value, str) else value


@FUSIONS.register("relation", RelationOptions)
class RelationFusion(Fusion):
    """Relation network: g over pairs of tokens conditioned on the query, summed, then f."""

    def __init__(self, options: RelationOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.query = pick_query(input_dims, options.query)
        others = [n for n in input_dims if n != self.query]
        positioned = [n for n in others if not input_dims[n].tabular]
        self.context = options.context or (positioned or others)[0]
        if input_dims[self.context].tabular:
            raise ConfigError(
                f"fusion relation: its context input {self.context!r} is tabular (one value per "
                "row, a single token without position), and relations are computed between "
                "pairs of positioned tokens (image cells, words, frames); set context: to such "
                "an input, or use a pooled-vector fusion (concat, gated, bilinear, ...) for "
                "tabular inputs")
        self.conditions = [n for n in input_dims if n != self.context]
        token_dim = input_dims[self.context].token_dim
        self.project = (nn.Linear(token_dim, options.object_dim) if options.object_dim
                        else nn.Identity())
        obj = options.object_dim or token_dim
        cond = sum(input_dims[n].pooled_dim for n in self.conditions)
        width = options.hidden_g[0]
        self.first_i = nn.Linear(obj, width)
        self.first_j = nn.Linear(obj, width, bias=False)
        self.first_q = nn.Linear(cond, width, bias=False)
        if options.relative_position and not input_dims[self.context].token_positions:
            raise ConfigError(
                f"fusion relation: relative_position needs tokens that end with their (x, y) "
                f"position, and the encoder of input {self.context!r} does not give them; use "
                "the cnn encoder for that input or set relative_position: false")
        self.first_r = nn.Linear(3, width, bias=False) if options.relative_position else None
        self.g_rest, g_out = mlp(width, options.hidden_g[1:], 0.0)
        self.pools = list(dict.fromkeys(options.pool))
        self.pair_score = nn.Linear(g_out, 1) if "attention" in self.pools else None
        self.anchored = options.pairs == "anchored"
        # the anchor's attention over the context's tokens is what ``mmfuse explain`` can show
        self.traits = FusionTraits(attention_over=self.context if self.anchored else None)
        f_in = g_out * len(self.pools) + ((obj + cond) if self.anchored else 0)
        self.f, self.out_dim = mlp(f_in, options.hidden_f, options.dropout)
        if self.anchored:  # bilinear (dot-product) scores learn "which object is X" quickly
            self.anchor_key = nn.Linear(obj, width)
            self.anchor_query = nn.Linear(cond, width)

    def forward(self, features: dict) -> torch.Tensor:
        ctx = features[self.context]
        objects = self.project(ctx.tokens)  # [B, N, O]
        mask = ctx.mask & ctx.present.unsqueeze(-1)  # [B, N]
        q = torch.cat([torch.where(features[n].present.unsqueeze(-1), features[n].pooled, 0.0)
                       for n in self.conditions], dim=-1)
        positions = ctx.tokens[..., -2:]  # [B, N, 2], used by relative_position
        if self.anchored:
            weights = self.anchor_weights(objects, mask, q)  # [B, N]
            lefts = (weights.unsqueeze(1) @ objects)  # [B, 1, O]: the soft anchor object
            left_positions = weights.unsqueeze(1) @ positions  # its mean position [B, 1, 2]
        else:
            lefts, left_positions = objects, positions  # [B, N, O], [B, N, 2]
        first = (self.first_i(lefts)[:, :, None, :] + self.first_j(objects)[:, None, :, :]
                 + self.first_q(q)[:, None, None, :])  # [B, L, N, H]
        if self.first_r is not None:
            first = first + self.first_r(geometry(left_positions, positions))
        g = self.g_rest(torch.relu(first)).flatten(1, 2)  # [B, L*N, G]
        pair_mask = (self._left_mask(mask)[:, :, None] & mask[:, None, :]).flatten(1)  # [B, L*N]
        pooled = [self.aggregate(how, g, pair_mask) for how in self.pools]
        if self.anchored:
            pooled += [lefts.squeeze(1), q]
        return self.f(torch.cat(pooled, dim=-1))

    def aggregate(self, how: str, g: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """One aggregation ``[B, G]`` of the pair outputs ``g`` ``[B, P, G]`` over real pairs."""
        real = pair_mask.unsqueeze(-1)
        if how == "max":
            return torch.where(real, g, float("-inf")).amax(1).clamp(min=0.0)  # none: zeros
        if how == "attention":
            scores = self.pair_score(g).masked_fill(~real, float("-inf"))
            return torch.nan_to_num(scores.softmax(1)).mul(g).sum(1)
        summed = torch.where(real, g, 0.0).sum(1)
        return summed / real.sum(1).clamp(min=1) if how == "mean" else summed

    def anchor_weights(self, objects: torch.Tensor, mask: torch.Tensor,
                       q: torch.Tensor) -> torch.Tensor:
        """Which object is the anchor ``[B, N]``: attention over objects driven by the query."""
        keys = self.anchor_key(objects)  # [B, N, H]
        scores = (keys @ self.anchor_query(q).unsqueeze(-1)).squeeze(-1) / keys.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.nan_to_num(scores.softmax(-1))  # all-masked rows give zeros, not NaN
        self.last_attention = weights.detach()
        return weights

    def _left_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.any(-1, keepdim=True) if self.anchored else mask


def geometry(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``[dx, dy, distance]`` ``[B, L, N, 3]`` from positions ``[B, L, 2]`` to ``[B, N, 2]``."""
    delta = right[:, None, :, :] - left[:, :, None, :]
    # the epsilon keeps the distance's gradient finite where two positions coincide
    distance = (delta.square().sum(-1, keepdim=True) + 1e-6).sqrt()
    return torch.cat([delta, distance], dim=-1)
