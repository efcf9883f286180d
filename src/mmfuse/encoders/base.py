"""The common output of every encoder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


# --- Explanations ---------------------------------------------------------------------------
#
# Every encoder passes its per-token features through ``self.token_features = nn.Identity()``
# exactly once per forward, as a ``[B, N, D]`` tensor whose N positions are the N tokens it
# returns (cnn grid cells before their coordinates, word embeddings, audio time steps, video
# frame vectors, a Hugging Face model's last hidden states), and computes its tokens and
# pooled vector from them. ``mmfuse explain`` scales that tensor for integrated gradients
# (explain/attribution.py); ``tests/test_encoders.py`` checks the contract for every encoder.

# --- Pretrained encoders -------------------------------------------------------------------
#
# An encoder that starts from pretrained weights implements, beside ``forward``:
#
#   pretrained_parameters() -> list[nn.Parameter]
#       the parameters that came from the pretrained weights (``training.pretrained_lr_multiplier``
#       scales their learning rate);
#   default_preprocess(options) -> dict            (a classmethod / staticmethod)
#       preprocessing the weights were trained with (e.g. size, mean, std); it applies to every
#       key the config leaves out, and the resolved config (hence the bundle) records it;
#   cacheable: bool
#       True when the part run by ``frozen_features`` has no trainable parameter and is
#       deterministic (frozen weights, batch norm and dropout in eval mode), so its outputs can be
#       computed once per item and cached (``cache_features``);
#   frozen_features(**tensors) -> dict[str, Tensor]
#       the frozen part's outputs per item (each ``[U, ...]``);
#   from_frozen(**frozen) -> Features
#       the trainable rest; ``forward(**t) == from_frozen(**frozen_features(**t))``.
#
# While a bundle is loaded, its own weights replace the pretrained ones, so such an encoder
# builds its architecture without reading the pretrained files (``reading_bundle()``): a bundle
# loads without the package or folder that held the weights.

_BUNDLE_WEIGHTS = ContextVar("mmfuse_bundle_weights", default=False)


def reading_bundle() -> bool:
    """True while a bundle's model is built: its weights will come from the bundle."""
    return _BUNDLE_WEIGHTS.get()


@contextmanager
def weights_from_bundle() -> Iterator[None]:
    """Build models inside this block without reading pretrained weight files."""
    token = _BUNDLE_WEIGHTS.set(True)
    try:
        yield
    finally:
        _BUNDLE_WEIGHTS.reset(token)
