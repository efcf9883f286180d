"""Encoders of tabular inputs: ``numeric`` (number and binary inputs) and ``embedding``
(category inputs).

Each gives one vector per row, as its pooled vector and as a single token without position, so
that every pooled-vector fusion takes it and any fusion can use it as its query.

- ``numeric``, ``embedding: linear``: ``h = ReLU(W x + b)``.
- ``numeric``, ``embedding: periodic``: ``h = ReLU(W [sin(2 pi c x); cos(2 pi c x)] + b)`` with
  ``k`` learned frequencies ``c`` drawn from ``N(0, sigma^2)`` (periodic embeddings, Gorishniy
  et al. 2022, "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS,
  arXiv:2203.05556): a small MLP then fits a price that jumps at a threshold or repeats.
- ``embedding``: a learned vector per value, id 0 being the unknown bucket.

Shapes: values ``[U, W]`` or ids ``[U]`` -> tokens ``[U, 1, dim]``, pooled ``[U, dim]``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..features import Features, all_present
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder


class NumericOptions(Options):
    dim: int = Field(32, ge=1, description="width of the vector per value")
    embedding: Literal["linear", "periodic"] = Field(
        "linear", description="linear: a projection; periodic: sin/cos of learned frequencies, "
        "then a projection")
    frequencies: int = Field(16, ge=1, description="periodic: learned frequencies per value")
    sigma: float = Field(1.0, gt=0, description="periodic: std of the initial frequencies")


class TabularEncoder(Encoder):
    """One vector per row, given as the pooled vector and as a single token."""

    def _features(self, vectors: torch.Tensor) -> Features:
        tokens = self.token_features(vectors.unsqueeze(1))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, tokens[:, 0], all_present(tokens.shape[0], tokens.device))


@ENCODERS.register("numeric", NumericOptions)
class NumericEncoder(TabularEncoder):
    """A number (or yes/no) as a vector: a projection, or periodic embeddings."""

    traits = EncoderTraits(modalities=("number", "binary"))

    def __init__(self, options: NumericOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.periodic = options.embedding == "periodic"
        width = spec.width
        if self.periodic:
            self.frequencies = nn.Parameter(
                options.sigma * torch.randn(width, options.frequencies))
            width = 2 * width * options.frequencies
        self.project = nn.Sequential(nn.Linear(width, options.dim), nn.ReLU())
        self.token_features = nn.Identity()
        self.token_dim = self.pooled_dim = options.dim

    def forward(self, values: torch.Tensor) -> Features:
        if self.periodic:
            angles = 2 * math.pi * values.unsqueeze(-1) * self.frequencies  # [U, W, k]
            values = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
        return self._features(self.project(values))


class EmbeddingOptions(Options):
    dim: int = Field(16, ge=1, description="width of the vector per value")
    dropout: float = Field(0.0, ge=0, lt=1)


@ENCODERS.register("embedding", EmbeddingOptions)
class EmbeddingEncoder(TabularEncoder):
    """A category value as a learned vector (id 0: unknown)."""

    traits = EncoderTraits(modalities=("category",))

    def __init__(self, options: EmbeddingOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.embed = nn.Embedding(spec.vocab_size, options.dim)
        self.dropout = nn.Dropout(options.dropout)
        self.token_features = nn.Identity()
        self.token_dim = self.pooled_dim = options.dim

    def forward(self, ids: torch.Tensor) -> Features:
        return self._features(self.dropout(self.embed(ids)))
