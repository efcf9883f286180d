"""``audio_cnn``: a 2-D CNN over a spectrogram, giving one token per (downsampled) time step.

Conv -> batch norm -> ReLU blocks stride over frequency and time together, as in the VGG-style
audio classifiers of Hershey et al. 2017 ("CNN architectures for large-scale audio
classification"). The last map's channels and remaining frequency bins are flattened and
projected per time step, so each token keeps the spectral shape of its stretch of sound; the
pooled vector is the mean (or max) over the real steps. A clip's frame mask is downsampled
along with the time axis, so padding never reaches the pooled vector.

Shapes: features ``[B, C, F, T]``, mask ``[B, T]`` -> tokens ``[B, T', dim]``, pooled ``[B, dim]``
with ``T' ~ T / stride**len(channels)``. With ``temporal: gru`` (the default) a bidirectional GRU
then runs over the real time steps (Amodei et al. 2016's Deep Speech 2 pairs convolutions with
recurrent layers the same way), and the tokens are its states: pooling the CNN's tokens
directly (``temporal: none``) would be blind to the order of sounds.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config_base import Options
from ..features import Features, all_present, masked_max, masked_mean
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder


class AudioCNNOptions(Options):
    channels: list[int] = Field([32, 64, 64], min_length=1)
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(2, ge=1, description="stride over frequency and time in every block")
    dim: int = Field(128, ge=1, description="width of every token and of the pooled vector")
    pool: Literal["mean", "max"] = "mean"
    dropout: float = Field(0.0, ge=0, lt=1)
    temporal: Literal["none", "gru"] = Field(
        "gru", description="'gru' (default): a bidirectional GRU over the time tokens, so each "
        "token knows its context and the pooled vector knows the order of sounds; 'none' "
        "pools the CNN's tokens directly, which is blind to order ('rising' = 'falling')")

    @model_validator(mode="after")
    def _even_dim_for_gru(self) -> AudioCNNOptions:
        if self.temporal == "gru" and self.dim % 2:
            raise ValueError(f"temporal gru needs an even dim (half per direction), not "
                             f"{self.dim}")
        return self


@ENCODERS.register("audio_cnn", AudioCNNOptions)
class AudioCNNEncoder(Encoder):
    """Conv + batch-norm stack over (frequency, time); time tokens and a pooled vector."""

    traits = EncoderTraits(modalities=("audio",))

    def __init__(self, options: AudioCNNOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        blocks: list[nn.Module] = []
        in_ch, bins = spec.channels, spec.feature_dim
        self.kernel, self.stride, self.padding = (options.kernel_size, options.stride,
                                                  options.kernel_size // 2)
        for out_ch in options.channels:
            blocks += [nn.Conv2d(in_ch, out_ch, self.kernel, self.stride, self.padding,
                                 bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch, bins = out_ch, self._shrink(bins)
        self.body = nn.Sequential(*blocks)
        self.blocks = len(options.channels)
        self.project = nn.Sequential(nn.Linear(in_ch * bins, options.dim), nn.ReLU(inplace=True),
                                     nn.Dropout(options.dropout))
        self.token_dim = self.pooled_dim = options.dim
        self.pool = options.pool
        self.rnn = nn.GRU(options.dim, options.dim // 2, batch_first=True, bidirectional=True) \
            if options.temporal == "gru" else None
        self.token_features = nn.Identity()  # explain: attributions are taken here

    def _shrink(self, size):
        """Length of an axis after one block (works on ints and tensors)."""
        return (size + 2 * self.padding - self.kernel) // self.stride + 1

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> Features:
        grid = self.body(features)  # [B, C', F', T']
        tokens = self.token_features(self.project(grid.flatten(1, 2).transpose(1, 2)))  # [B,T',d]
        lengths = mask.sum(1)
        for _ in range(self.blocks):
            lengths = self._shrink(lengths)
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        token_mask = steps.unsqueeze(0) < lengths.clamp(min=1).unsqueeze(1)
        if self.rnn is not None:
            packed = pack_padded_sequence(tokens, lengths.clamp(min=1).cpu(), batch_first=True,
                                          enforce_sorted=False)
            tokens = pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                         total_length=tokens.shape[1])[0]
        pooled = (masked_mean if self.pool == "mean" else masked_max)(tokens, token_mask)
        return Features(tokens, token_mask, pooled, all_present(tokens.shape[0], tokens.device))
