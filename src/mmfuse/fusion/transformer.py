"""``transformer``: one transformer encoder over the tokens of all inputs (single stream).

This is early fusion, as in Li et al. 2019, "VisualBERT: A Simple and Performant Baseline for
Vision and Language", and Chen et al. 2020, "UNITER: UNiversal Image-TExt Representation
Learning". Each input ``i`` becomes a sequence ``[W_s s_i; W_v v_i1; ...; W_v v_iN]``. Its
pooled summary ``s_i`` comes first, like ViLBERT's whole-image token. Every slot ``n`` gets a
learned modality vector ``e_i`` and a learned position ``p_{i,n}``. A learned CLS token goes in
front of all the inputs:

    H = TransformerEncoder([cls; X_1 + e_1 + P_1; X_2 + e_2 + P_2; ...])   (pre-norm)
    F = MLP(LayerNorm(H_cls))

Padded tokens and missing inputs are masked as keys, so they do not change ``F``.

Shapes: ``{name: Features}`` with tokens ``[B, N_i, D_i]`` (``N_i <= max_tokens``) and pooled
``[B, P_i]`` -> ``[B, dim]``, or ``[B, hidden[-1]]`` when ``hidden`` is set.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..features import Features
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, MultiHeadOptions, SlotProjection, mlp


class TransformerOptions(MultiHeadOptions):
    layers: int = Field(2, ge=1, description="transformer encoder layers")
    max_tokens: int = Field(64, ge=1, description="most tokens one input may have (positions)")
    hidden: list[int] = Field(default_factory=list, description="MLP widths after the CLS state")
    dropout: float = Field(0.1, ge=0, lt=1)


@FUSIONS.register("transformer", TransformerOptions)
class TransformerFusion(Fusion):
    """Single-stream transformer over a CLS token and every input's tokens; the CLS state out."""

    def __init__(self, options: TransformerOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.names = list(input_dims)
        self.max_tokens = options.max_tokens
        dim = options.dim
        self.slots = SlotProjection(input_dims, dim)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.modality = nn.Parameter(0.02 * torch.randn(len(self.names), 1, dim))
        # Position 0 of every input is its summary slot, then up to max_tokens tokens.
        self.position = nn.Parameter(0.02 * torch.randn(len(self.names), 1 + self.max_tokens, dim))
        layer = nn.TransformerEncoderLayer(
            dim, options.heads, 2 * dim, options.dropout, activation="gelu", batch_first=True,
            norm_first=True)
        # Without nested tensors the eval-mode fast path computes the same thing as training.
        self.encoder = nn.TransformerEncoder(layer, options.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp, self.out_dim = mlp(dim, options.hidden, options.dropout)

    def sequence(self, name: str, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``[summary; tokens]`` of one input ``[B, 1 + N, dim]`` and which slots are real.

        Raises:
            ConfigError: the input has more than ``max_tokens`` tokens.
        """
        count = features.tokens.shape[1]
        # An exported graph cannot raise (there, more tokens fail to add to the positions)
        if not torch.onnx.is_in_onnx_export() and count > self.max_tokens:
            raise ConfigError(
                f"fusion 'transformer': input {name!r} has {count} tokens but the fusion option "
                f"max_tokens is {self.max_tokens}; set max_tokens to at least {count}")
        return self.slots(name, features)

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        first = features[self.names[0]].pooled
        parts = [self.cls.expand(first.shape[0], -1, -1)]
        real = [torch.ones(first.shape[0], 1, dtype=torch.bool, device=first.device)]
        for i, name in enumerate(self.names):
            x, is_real = self.sequence(name, features[name])
            parts.append(x + self.modality[i] + self.position[i, : x.shape[1]])
            real.append(is_real)
        # The CLS slot is always real, so no row's softmax is left without a key.
        states = self.encoder(torch.cat(parts, dim=1), src_key_padding_mask=~torch.cat(real, 1))
        return self.mlp(self.norm(states[:, 0]))
