"""``film``: serial interaction — one input modulates the encoder of another (FiLM).

Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer". The query input
(e.g. the question) produces, for every block ``l`` of the target's encoder (e.g. the image
CNN), a per-channel scale and shift: ``x_l <- (1 + gamma_l(q)) * BN(conv(x_l)) + beta_l(q)``
(``1 + gamma`` so that an untrained generator starts at the identity). The target is therefore
encoded once per *row*, not once per shared file: the question changes how the image is seen.
The fused vector is ``MLP([pooled target; pooled query])``.

The model runs the other encoders first, asks :meth:`FiLMFusion.modulation` for the
``(gamma, beta)`` pairs, then runs the target encoder with them (see ``model.py``).

A row without the query gets the modulation of the *average* query: during training the fusion
keeps a running mean of the query's pooled vector (like batch norm's running statistics), and
the generator is linear, so ``generator(mean q)`` is the mean modulation. A model that never
saw the query missing then sees the target as it usually does, not unmodulated, and an input
it learned to ignore does not matter when it is removed (``mmfuse explain``'s ``drop``). The
fused MLP reads the same mean for a missing query. (A bundle saved before the running mean
existed keeps the identity modulation and zeros.)

Shapes: query pooled ``[B, Q]`` -> ``(gamma, beta)`` ``[B, C_l]`` per block;
``{name: Features}`` -> ``[B, hidden[-1]]``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..registry import FUSIONS
from ..specs import FusionTraits, InputDims
from .base import Fusion, mlp, pick_query

MOMENTUM = 0.1  # of the query's running mean, as batch norm's


class FiLMOptions(Options):
    target: str | None = Field(None, description="input whose encoder is modulated (default: "
                               "the first input whose encoder supports FiLM, e.g. cnn)")
    query: str | None = Field(None, description="conditioning input (default: first text input)")
    hidden: list[int] = Field([256], description="MLP widths after joining the inputs")
    dropout: float = Field(0.0, ge=0, lt=1)


@FUSIONS.register("film", FiLMOptions)
class FiLMFusion(Fusion):
    """FiLM: the query input scales and shifts the channels of the target encoder's blocks."""

    def __init__(self, options: FiLMOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.query = pick_query(input_dims, options.query)
        capable = [n for n, d in input_dims.items() if d.film_channels and n != self.query]
        target = options.target or (capable[0] if capable else None)
        if target in input_dims and input_dims[target].tabular:
            raise ConfigError(
                f"fusion 'film' cannot modulate input {target!r}: it is tabular (one value per "
                "row, encoded without channels or positions); FiLM's target is an image encoded "
                "by cnn, and a tabular input can be its query or one of the other inputs")
        if target not in capable:
            raise ConfigError(
                f"fusion 'film' needs a target input whose encoder supports FiLM (cnn); "
                f"got target={target!r}, capable inputs: {capable or 'none'}")
        self.target = target
        # the one place FiLM's serial pair is decided: MultimodalModel encodes the query first,
        # then the target per row (data/features.py therefore never caches the target)
        self.traits = FusionTraits(serial=(target, self.query))
        self.others = [n for n in input_dims if n != target]
        self.channels = list(input_dims[target].film_channels)
        self.generator = nn.Linear(input_dims[self.query].pooled_dim, 2 * sum(self.channels))
        nn.init.zeros_(self.generator.weight)  # start as the identity modulation
        nn.init.zeros_(self.generator.bias)
        self.register_buffer("query_mean", torch.zeros(input_dims[self.query].pooled_dim))
        self.register_buffer("query_tracked", torch.zeros(()))  # 1 once the mean has data
        width = input_dims[target].pooled_dim + sum(
            input_dims[n].pooled_dim for n in self.others)
        self.mlp, self.out_dim = mlp(width, options.hidden, options.dropout)

    def modulation(self, query) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per target block, ``(gamma, beta)`` of shape ``[B, C]``; a row where q is missing
        gets the mean query's (see the module docstring)."""
        if self.training and not torch.onnx.is_in_onnx_export() and bool(query.present.any()):
            self._track(query.pooled.detach()[query.present].mean(0))
        params = self.generator(query.pooled)
        stand_in = self.generator(self.query_mean) * self.query_tracked
        params = torch.where(query.present.unsqueeze(-1), params, stand_in)
        out, start = [], 0
        for c in self.channels:
            out.append((params[:, start:start + c], params[:, start + c:start + 2 * c]))
            start += 2 * c
        return out

    @torch.no_grad()
    def _track(self, mean: torch.Tensor) -> None:
        """Update the running mean of the query's pooled vector (the first batch sets it)."""
        weight = MOMENTUM if bool(self.query_tracked) else 1.0
        self.query_mean.lerp_(mean.to(self.query_mean.dtype), weight)  # fp32 under autocast
        self.query_tracked.fill_(1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a bundle from before the running mean: keep its behaviour (identity, zeros)
        state_dict.setdefault(prefix + "query_mean", torch.zeros_like(self.query_mean))
        state_dict.setdefault(prefix + "query_tracked", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: dict) -> torch.Tensor:
        parts = [features[self.target].pooled]
        for n in self.others:
            stand_in = self.query_mean * self.query_tracked if n == self.query else 0.0
            parts.append(torch.where(features[n].present.unsqueeze(-1), features[n].pooled,
                                     stand_in))
        return self.mlp(torch.cat(parts, dim=-1))
