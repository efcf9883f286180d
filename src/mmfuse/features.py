"""What every encoder gives the fusion stage: :class:`Features`, and the helpers that build,
expand and pool them.

Shared by encoders (which make them), the model (which expands them from unique items to rows
and fills in missing rows) and fusions (which read them), so it lives with none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """What an encoder gives the fusion stage.

    Attributes:
        tokens: ``[B, N, D]`` token states (spatial cells, words, frames).
        mask: ``[B, N]`` bool, True where a token is real (not padding).
        pooled: ``[B, P]`` one vector per row.
        present: ``[B]`` bool, False for rows where this input is missing.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    present: torch.Tensor

    def select(self, index: torch.Tensor) -> Features:
        """Rows ``index`` of every field: expands features of unique items back to rows."""
        return Features(
            self.tokens[index], self.mask[index], self.pooled[index], self.present[index]
        )


def all_present(batch_size: int, device: torch.device) -> torch.Tensor:
    """A ``present`` vector for a batch where no row misses the input."""
    return torch.ones(batch_size, dtype=torch.bool, device=device)


def expand_rows(features: Features | None, index: torch.Tensor, token_dim: int,
                pooled_dim: int) -> Features:
    """Features per row from the features of the unique items, with missing rows filled in.

    Row ``b`` gets the features of item ``index[b]``; a row whose index is -1 lacks the input
    (empty cell, absent field, or hidden by modality dropout) and gets zero tokens and a zero
    pooled vector with ``present`` False. Every fusion masks such rows out: attention never
    attends to them, sums and gates renormalise over the inputs that are there, and ``concat``
    appends a presence flag per input, whose first-layer weights are the learned stand-in for a
    missing input.

    Args:
        features: features of the unique items, or None when no row of the batch has the input.
        index: ``[B]`` item of each row, -1 for a missing row.
    """
    present = index >= 0
    if features is None:
        batch = index.shape[0]
        tokens = torch.zeros(batch, 1, token_dim, device=index.device)
        mask = torch.ones(batch, 1, dtype=torch.bool, device=index.device)
        return Features(tokens, mask, torch.zeros(batch, pooled_dim, device=index.device),
                        present)
    # No shortcut for a batch where every row has the input: a branch on tensor values would
    # be frozen into an exported graph, and the masking below leaves such a batch unchanged.
    rows = features.select(index.clamp(min=0))
    tokens = rows.tokens * present.view(-1, 1, 1)
    first = torch.zeros_like(rows.mask)
    first[:, 0] = True  # a missing row keeps one (zero) token, so token pools stay defined
    here = present.unsqueeze(-1)
    mask = (rows.mask & here) | (first & ~here)  # a bool where(); onnxruntime has none
    pooled = rows.pooled * present.unsqueeze(-1)
    return Features(tokens, mask, pooled, present & rows.present)


class Placeholder(nn.Module):
    """A learned stand-in for a missing input (``missing: placeholder``).

    Rows that lack the input get a learned token (their one real token) and a learned pooled
    vector, and count as present, so the fusion combines them like data: the model learns what
    "no audio" should contribute, rather than having the input left out.
    """

    def __init__(self, token_dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(0.02 * torch.randn(token_dim))
        self.pooled = nn.Parameter(0.02 * torch.randn(pooled_dim))

    def forward(self, features: Features) -> Features:
        """``features`` from :func:`expand_rows`, with the absent rows filled in."""
        absent = ~features.present  # no early return when none is absent (see expand_rows)
        tokens = torch.where(absent.view(-1, 1, 1), self.token, features.tokens)
        pooled = torch.where(absent.unsqueeze(-1), self.pooled, features.pooled)
        present = torch.ones_like(features.present)
        return Features(tokens, features.mask, pooled, present)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B, N, D]`` over the real positions of ``mask [B, N]``."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_max(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximum of ``tokens [B, N, D]`` over the real positions of ``mask [B, N]``."""
    return tokens.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
