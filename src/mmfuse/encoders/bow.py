"""``bow``: a neural bag of words: word embeddings pooled over the real tokens, then projected.

Order is ignored, so every word reaches the pooled vector by one linear path, however far from
the end of the sentence it stands; for short templated questions ("what is the shape of the red
object?") this learns which word matters many times faster than a recurrent encoder, whose final
state must first learn to carry the word to the end. ``norm: batch`` standardises each feature
of the pooled vector over the batch: the words every question shares (the template) cancel, and
the words that tell questions apart (the colour) come out at unit scale.

    pooled = Norm(W pool_{t: mask_t} E[x_t] + b)      tokens = E[x_t]

Shapes: ids ``[B, L]``, mask ``[B, L]`` -> tokens ``[B, L, embedding_dim]``, pooled ``[B, dim]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..features import Features, all_present
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder


class BagOfWordsOptions(Options):
    embedding_dim: int = Field(64, ge=1)
    dim: int = Field(64, ge=1, description="width of the pooled vector")
    pool: Literal["mean", "sum", "max"] = "mean"
    norm: Literal["batch", "layer", "none"] = Field(
        "batch", description="normalisation of the pooled vector")
    dropout: float = Field(0.0, ge=0, lt=1)


class _BatchNorm(nn.BatchNorm1d):
    """Batch norm that falls back to its running statistics for a batch of one text (a batch
    whose rows all ask the same question), where batch statistics are undefined."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                            self.bias, False, 0.0, self.eps)
        return super().forward(x)


@ENCODERS.register("bow", BagOfWordsOptions)
class BagOfWordsEncoder(Encoder):
    """Embedding, masked mean / sum / max over tokens, linear projection and normalisation."""

    traits = EncoderTraits(modalities=("text",))

    def __init__(self, options: BagOfWordsOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.embed = nn.Embedding(spec.vocab_size, options.embedding_dim,
                                  padding_idx=spec.pad_id)
        self.project = nn.Linear(options.embedding_dim, options.dim)
        self.norm = {"batch": _BatchNorm, "layer": nn.LayerNorm,
                     "none": lambda _: nn.Identity()}[options.norm](options.dim)
        self.dropout = nn.Dropout(options.dropout)
        self.pool = options.pool
        self.token_dim = options.embedding_dim
        self.pooled_dim = options.dim
        self.token_features = nn.Identity()  # explain: attributions are taken here

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Features:
        tokens = self.token_features(self.embed(ids))
        real = mask.unsqueeze(-1)
        if self.pool == "max":
            bag = tokens.masked_fill(~real, float("-inf")).amax(1)
            bag = torch.where(mask.any(1, keepdim=True), bag, 0.0)  # an empty text gives zeros
        else:
            bag = torch.where(real, tokens, 0.0).sum(1)
            if self.pool == "mean":
                bag = bag / real.sum(1).clamp(min=1)
        pooled = self.norm(self.project(self.dropout(bag)))
        return Features(tokens, mask, pooled, all_present(ids.shape[0], ids.device))
