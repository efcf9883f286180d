"""Projectors: an input's tokens ``[B, N, D]`` -> tokens in the LM's embedding space
``[B, N', H]``, with which of them are real ``[B, N']``.

- ``linear``: ``W x`` per token (LLaVA, Liu et al. 2023).
- ``mlp``: ``W_2 GELU(W_1 x)`` per token (LLaVA-1.5, Liu et al. 2024).
- ``pixel_shuffle``: nanoVLM's (and Idefics3's) token merge: each ``s x s`` block of a square
  grid of tokens becomes one token of ``s^2 D`` channels, then ``W x``; a sequence that is not
  a square grid merges ``s^2`` consecutive tokens. ``N' = N / s^2``.
- ``resampler``: ``tokens`` learned queries cross-attend to the input's tokens (a one-layer
  Perceiver resampler / Q-Former, Alayrac et al. 2022; Li et al. 2023), then an MLP:
  ``q = Q + Attn(LN(Q), LN(x W_in))``, ``out = W_out (q + MLP(LN(q)))``. ``N' = tokens``,
  whatever ``N``; a row whose tokens are all padding gets none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, **_: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        return self.proj(tokens), mask


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, **_: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(),
                                  nn.Linear(out_dim, out_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        return self.proj(tokens), mask


class PixelShuffleProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, scale: int = 2, grid: bool = True,
                 **_: int) -> None:
        super().__init__()
        self.scale, self.grid = scale, grid
        self.proj = nn.Linear(in_dim * scale * scale, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        b, n, d = tokens.shape
        s = self.scale
        side = math.isqrt(n)
        if self.grid and side * side == n and side > 1:  # a square grid: merge s x s blocks
            # an odd side (efficientnet's 7 x 7) is padded with masked zeros to a multiple of s
            pad = -side % s
            grid = F.pad((tokens * mask.unsqueeze(-1)).view(b, side, side, d),
                         (0, 0, 0, pad, 0, pad))
            keep = F.pad(mask.view(b, side, side), (0, pad, 0, pad))
            cells = (side + pad) // s
            grid = grid.view(b, cells, s, cells, s, d).permute(0, 1, 3, 2, 4, 5)
            merged = grid.reshape(b, cells * cells, s * s * d)
            keep = keep.view(b, cells, s, cells, s).permute(0, 1, 3, 2, 4)
            keep = keep.reshape(b, cells * cells, s * s).any(-1)
        else:  # a sequence: merge s^2 consecutive tokens (padded with masked zeros)
            group = s * s
            pad = -n % group
            tokens = F.pad(tokens * mask.unsqueeze(-1), (0, 0, 0, pad))
            merged = tokens.view(b, (n + pad) // group, group * d)
            keep = F.pad(mask, (0, pad)).view(b, -1, group).any(-1)
        return self.proj(merged), keep


class Resampler(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, tokens: int = 16, heads: int = 8,
                 **_: int) -> None:
        super().__init__()
        width = 256 if in_dim < 256 else in_dim
        heads = math.gcd(heads, width)
        self.inp = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(0.02 * torch.randn(tokens, width))
        self.norm_q, self.norm_x, self.norm_o = (nn.LayerNorm(width) for _ in range(3))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor):
        x = self.norm_x(self.inp(tokens))
        any_real = mask.any(1)
        # a row without tokens attends to its first (masked) one, then is dropped by `keep`
        key_mask = ~mask.clone()
        key_mask[~any_real, 0] = False
        q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        q = q + self.attn(self.norm_q(q), x, x, key_padding_mask=key_mask,
                          need_weights=False)[0]
        q = q + self.mlp(self.norm_o(q))
        keep = any_real.unsqueeze(1).expand(-1, q.shape[1])
        return self.out(q), keep


PROJECTORS = {"linear": LinearProjector, "mlp": MLPProjector,
              "pixel_shuffle": PixelShuffleProjector, "resampler": Resampler}
