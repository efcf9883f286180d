"""``frame_cnn``: one image CNN shared by every frame, then a temporal model over the frames.

The per-frame CNN is the ``cnn`` encoder (its pooled vector per frame: by default a projection
of the flattened grid, which keeps where things are in the frame); the temporal model is
``mean`` (order-free average, as the late-fusion baselines of Karpathy et al. 2014), ``gru``
(a recurrent pass over the frames, as Donahue et al. 2015's LRCN) or ``transformer`` (self-
attention over frames with learned frame positions). The default, ``pool: flatten`` with
``temporal: gru``, sees where things are and the order of frames, so motion and the order of
events can be learned; ``mean`` over mean-pooled frames sees neither. Only real frames go
through the CNN, so a short clip costs less and its padding never reaches batch norm. Tokens
are frames.

Shapes: pixels ``[B, K, 3, H, W]``, mask ``[B, K]`` -> tokens ``[B, K, dim]``, pooled ``[B, dim]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import ConfigError
from ..registry import ENCODERS
from .base import Features, all_present, masked_mean
from .cnn import CNNEncoder, CNNOptions
from .rnn import final_states


class FrameCNNOptions(CNNOptions):
    """The per-frame ``cnn`` options (``pool`` pools each frame's grid), then the temporal
    model."""

    channels: list[int] = Field([32, 64, 64], min_length=1)
    pool: Literal["flatten", "mean", "max"] = Field(
        "flatten", description="per frame: 'flatten' keeps where things are in the frame; "
        "'mean' / 'max' cannot tell left from right, so they cannot see motion")
    dim: int = Field(128, ge=1, description="width of frame vectors, tokens and pooled vector")
    temporal: Literal["mean", "gru", "transformer"] = Field(
        "gru", description="over frames: 'gru' and 'transformer' (learned frame positions) see "
        "their order; 'mean' is blind to it (no motion, no order of events)")
    layers: int = Field(1, ge=1, description="gru / transformer layers")
    heads: int = Field(4, ge=1, description="transformer heads; must divide dim")


@ENCODERS.register("frame_cnn", FrameCNNOptions)
class FrameCNNEncoder(nn.Module):
    """A CNN per frame, then mean / GRU / transformer over time; frame tokens."""

    modality = "video"

    def __init__(self, options: FrameCNNOptions, spec: dict) -> None:
        super().__init__()
        if options.temporal == "transformer" and options.dim % options.heads:
            raise ConfigError(f"frame_cnn: heads={options.heads} must divide dim={options.dim}")
        frame = CNNOptions(**{k: getattr(options, k) for k in CNNOptions.model_fields})
        self.frame = CNNEncoder(frame, {"channels": spec["channels"], "size": spec["size"]})
        self.temporal = options.temporal
        if options.temporal == "gru":
            self.rnn = nn.GRU(options.dim, options.dim, num_layers=options.layers,
                              batch_first=True)
        elif options.temporal == "transformer":
            self.position = nn.Parameter(0.02 * torch.randn(spec["frames"], options.dim))
            layer = nn.TransformerEncoderLayer(options.dim, options.heads, 2 * options.dim,
                                               options.dropout, batch_first=True)
            self.attend = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.token_dim = self.pooled_dim = options.dim

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> Features:
        batch, frames = mask.shape
        real = self.frame(pixels[mask]).pooled  # [real frames, dim]
        vectors = real.new_zeros(batch, frames, real.shape[-1])
        vectors[mask] = real
        if self.temporal == "mean":
            tokens, pooled = vectors, masked_mean(vectors, mask)
        elif self.temporal == "gru":
            lengths = mask.sum(1).clamp(min=1)
            packed = pack_padded_sequence(vectors, lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.rnn(packed)
            tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=frames)
            pooled = final_states(tokens, lengths)
        else:
            tokens = self.attend(vectors + self.position[:frames], src_key_padding_mask=~mask)
            pooled = masked_mean(tokens, mask)
        return Features(tokens, mask, pooled, all_present(batch, mask.device))
