"""``cross_attention``: every input's tokens attend to the tokens of all the other inputs.

This is the co-attention of two-stream models: Lu et al. 2019, "ViLBERT: Pretraining
Task-Agnostic Visiolinguistic Representations for Vision-and-Language Tasks", and Tan & Bansal
2019, "LXMERT: Learning Cross-Modality Encoder Representations from Transformers". Each input
``i`` becomes a sequence ``X_i = [W_s s_i; W_v v_i1; ...]`` of width ``dim``. Its pooled summary
``s_i`` comes first, like ViLBERT's whole-image token. Every layer updates all streams at once:

    Y_i = LayerNorm(X_i + MultiHead(X_i, [X_j]_{j != i}, [X_j]_{j != i}))
    X_i <- LayerNorm(Y_i + FFN(Y_i))

Then ``F = MLP([mean_i; ...; m_1; ...])``. Here ``mean_i`` is the masked mean of stream ``i``
and ``m_i`` is its presence flag. Padded tokens and missing inputs are hidden from the others as
keys. A missing input's mean is zeroed, as in ``concat``.

Shapes: ``{name: Features}`` with tokens ``[B, N_i, D_i]`` and pooled ``[B, P_i]`` ->
``[B, hidden[-1]]``, or ``[B, n_inputs * (dim + 1)]`` when ``hidden`` is empty.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..features import Features
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, MultiHeadOptions, SlotProjection, mlp


class CrossAttentionOptions(MultiHeadOptions):
    layers: int = Field(1, ge=1, description="cross-attention layers")
    hidden: list[int] = Field([256], description="MLP widths after pooling")
    dropout: float = Field(0.1, ge=0, lt=1)


class CrossLayer(nn.Module):
    """One stream of one layer: attend to the other inputs, then a feed-forward (post-norm)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attend = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.feed = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(2 * dim, dim))
        self.norm_attend = nn.LayerNorm(dim)
        self.norm_feed = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, others: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``x`` [B, N, dim] attends to ``others`` [B, M, dim]; ``real`` marks their real keys."""
        has_key = real.any(dim=-1, keepdim=True)
        # A row where every other input is missing has no key: it attends to all of them instead,
        # so the softmax stays finite, and the result is then dropped.
        ignore = ~real & has_key
        attended, _ = self.attend(x, others, others, key_padding_mask=ignore, need_weights=False)
        x = self.norm_attend(x + self.drop(torch.where(has_key.unsqueeze(-1), attended, 0.0)))
        return self.norm_feed(x + self.drop(self.feed(x)))


@FUSIONS.register("cross_attention", CrossAttentionOptions)
class CrossAttentionFusion(Fusion):
    """Co-attention: each input's tokens attend to the other inputs' tokens, then pool + MLP."""

    def __init__(self, options: CrossAttentionOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.names = list(input_dims)
        dim = options.dim
        self.slots = SlotProjection(input_dims, dim)
        self.layers = nn.ModuleList(
            nn.ModuleDict({n: CrossLayer(dim, options.heads, options.dropout) for n in self.names})
            for _ in range(options.layers)
        )
        width = len(self.names) * (dim + 1)
        self.mlp, self.out_dim = mlp(width, options.hidden, options.dropout)

    def sequence(self, name: str, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``[summary; tokens]`` of one input ``[B, 1 + N, dim]`` and which slots are real.

        Padded tokens and missing rows are zeroed before projection, so their values cannot leak.
        """
        return self.slots(name, features)

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        streams, real = {}, {}
        for name in self.names:
            streams[name], real[name] = self.sequence(name, features[name])
        for layer in self.layers:
            streams = {
                name: layer[name](
                    x,
                    torch.cat([streams[o] for o in self.names if o != name], dim=1),
                    torch.cat([real[o] for o in self.names if o != name], dim=1),
                )
                for name, x in streams.items()
            }
        pooled, flags = [], []
        for name in self.names:
            weights = real[name].unsqueeze(-1).float()
            mean = (streams[name] * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            present = features[name].present.unsqueeze(-1)
            pooled.append(torch.where(present, mean, 0.0))
            flags.append(present.float())
        return self.mlp(torch.cat(pooled + flags, dim=-1))
