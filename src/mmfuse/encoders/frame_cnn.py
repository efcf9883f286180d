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

``backbone: {type: efficientnet_lite0}`` (any image encoder) runs a pretrained network on each
frame instead: its pooled vector per frame is projected to ``dim``. When that backbone is frozen,
its frame vectors are what ``cache_features`` stores, and only the projection and the temporal
model train.

Shapes: pixels ``[B, K, 3, H, W]``, mask ``[B, K]`` -> tokens ``[B, K, dim]``, pooled ``[B, dim]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..features import Features, all_present, masked_mean
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder
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
    coords: bool = Field(False, description="CoordConv input channels per frame (pool: "
                         "flatten keeps where things are already)")
    temporal: Literal["mean", "gru", "transformer"] = Field(
        "gru", description="over frames: 'gru' and 'transformer' (learned frame positions) see "
        "their order; 'mean' is blind to it (no motion, no order of events)")
    layers: int = Field(1, ge=1, description="gru / transformer layers")
    heads: int = Field(4, ge=1, description="transformer heads; must divide dim")
    backbone: Any = Field(
        None, description="an image encoder run on every frame instead of the small CNN, e.g. "
        "{type: efficientnet_lite0} (its pooled vector per frame, projected to dim)")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> FrameCNNOptions:
        if self.temporal == "transformer" and self.dim % self.heads:
            raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
        return self

    @field_validator("backbone", mode="after")
    @classmethod
    def _resolve_backbone(cls, value: Any) -> dict | None:
        if value is None:
            return None
        from ..config import encoder_modalities, resolve_component

        spec = resolve_component(ENCODERS, value)
        if "image" not in encoder_modalities(ENCODERS.get(spec["type"]).builder):
            images = [n for n in ENCODERS.names()
                      if "image" in encoder_modalities(ENCODERS.get(n).builder)]
            raise ValueError(f"{spec['type']!r} is not an image encoder; choose one of: "
                             f"{', '.join(images)}")
        if spec.get("dim") is not None and spec["type"] != "cnn":
            raise ValueError("leave the backbone's dim out: frame_cnn projects each frame to "
                             "its own dim")
        return spec


@ENCODERS.register("frame_cnn", FrameCNNOptions)
class FrameCNNEncoder(Encoder):
    """A CNN per frame, then mean / GRU / transformer over time; frame tokens."""

    traits = EncoderTraits(modalities=("video",))  # cacheable: set in __init__

    @classmethod
    def cacheable_with(cls, options: FrameCNNOptions) -> bool:
        """A backbone with nothing to train: its frame vectors can be cached."""
        if options.backbone is None:
            return False
        backbone = ENCODERS.get(options.backbone["type"]).builder
        return backbone.frozen_with(ENCODERS.options(options.backbone))

    def __init__(self, options: FrameCNNOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        image_spec = EncoderSpec("image", channels=spec.channels, size=spec.size)
        if options.backbone is None:
            frame = CNNOptions(**{k: getattr(options, k) for k in CNNOptions.model_fields})
            self.frame = CNNEncoder(frame, image_spec)
        else:
            self.backbone = ENCODERS.build(options.backbone, image_spec)
            self.traits = replace(self.traits, cacheable=self.cacheable_with(options))
            self.frame_project = nn.Sequential(
                nn.Linear(self.backbone.pooled_dim, options.dim), nn.ReLU(inplace=True),
                nn.Dropout(options.dropout))
        self.temporal = options.temporal
        if options.temporal == "gru":
            self.rnn = nn.GRU(options.dim, options.dim, num_layers=options.layers,
                              batch_first=True)
        elif options.temporal == "transformer":
            self.position = nn.Parameter(0.02 * torch.randn(spec.frames, options.dim))
            layer = nn.TransformerEncoderLayer(options.dim, options.heads, 2 * options.dim,
                                               options.dropout, batch_first=True)
            self.attend = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.token_dim = self.pooled_dim = options.dim
        self.token_features = nn.Identity()  # explain: attributions are taken here

    @classmethod
    def default_preprocess(cls, encoder: dict) -> dict:
        """A backbone's own preprocessing (size, mean, std), if it has one."""
        if encoder.get("backbone") is None:
            return {}
        return ENCODERS.get(encoder["backbone"]["type"]).builder.default_preprocess(
            encoder["backbone"])

    def frozen_features(self, pixels: torch.Tensor, mask: torch.Tensor) -> dict:
        """The backbone's pooled vector of every real frame: ``frames [B, K, P]``, ``mask``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.traits.cacheable):
            real = self.backbone(pixels[mask]).pooled
        frames = real.new_zeros(*mask.shape, real.shape[-1])
        frames[mask] = real
        return {"frames": frames, "mask": mask}

    def from_frozen(self, frames: torch.Tensor, mask: torch.Tensor) -> Features:
        """Project the backbone's frame vectors, then the temporal model."""
        vectors = self.frame_project(frames) * mask.unsqueeze(-1)
        return self._over_time(vectors, mask)

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> Features:
        if hasattr(self, "backbone"):
            return self.from_frozen(**self.frozen_features(pixels, mask))
        batch, frames = mask.shape
        real = self.frame(pixels[mask]).pooled  # [real frames, dim]
        vectors = real.new_zeros(batch, frames, real.shape[-1])
        vectors[mask] = real
        return self._over_time(vectors, mask)

    def _over_time(self, vectors: torch.Tensor, mask: torch.Tensor) -> Features:
        """The temporal model over frame vectors ``[B, K, dim]``: frame tokens and a pooled
        vector."""
        batch, frames = mask.shape
        vectors = self.token_features(vectors)
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
