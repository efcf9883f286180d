"""Shared pieces of the fusion modules: the :class:`Fusion` base class, query choice and
projections."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..specs import FusionTraits, InputDims


class Fusion(nn.Module):
    """Base of every fusion, a registered one from outside mmfuse included.

    A subclass is built with ``(options, input_dims)``, one :class:`~mmfuse.specs.InputDims`
    per input, sets ``out_dim``, and maps ``{name: Features}`` to the fused vectors
    ``[B, out_dim]`` in ``forward``.

    Attributes:
        traits: what it declares beside fusing (``serial``, ``attention_over``); a fusion that
            has one decides it once, in its ``__init__``.
        out_dim: width of the fused vector.
    """

    traits: FusionTraits = FusionTraits()
    out_dim: int


def mlp(in_dim: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout blocks; returns the module and its output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_dim = width
    return nn.Sequential(*layers), in_dim


def pick_query(input_dims: dict[str, InputDims], query: str | None) -> str:
    """The input that conditions the others: ``query`` if given, else the first input of a
    query modality (text), else the last input.

    Raises:
        ConfigError: ``query`` names no input.
    """
    if query is not None:
        if query not in input_dims:
            raise ConfigError(f"fusion option query={query!r} names no input; the inputs are: "
                              f"{', '.join(input_dims)}")
        return query
    queries = [name for name, d in input_dims.items() if d.query]
    return queries[0] if queries else list(input_dims)[-1]


class MultiHeadOptions(Options):
    """Width and head count of a multi-head attention fusion; the heads must divide the width."""

    dim: int = Field(128, ge=1, description="width every token is projected to")
    heads: int = Field(4, ge=1, description="attention heads; must divide dim")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> MultiHeadOptions:
        if self.dim % self.heads:
            raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
        return self


class SlotProjection(nn.Module):
    """Each input as a sequence of slots of one width: ``[W_s pooled; W_v token_1; ...]``.

    The pooled summary comes first (like a whole-image region). Padded tokens and missing rows
    are zeroed before projection, so their values cannot leak into the output.
    """

    def __init__(self, input_dims: dict[str, InputDims], dim: int) -> None:
        super().__init__()
        self.summaries = nn.ModuleDict(
            {n: nn.Linear(d.pooled_dim, dim) for n, d in input_dims.items()})
        self.values = nn.ModuleDict(
            {n: nn.Linear(d.token_dim, dim) for n, d in input_dims.items()})

    def forward(self, name: str, features) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots ``[B, 1 + N, dim]`` and which are real ``[B, 1 + N]`` (summary: if present)."""
        present = features.present.unsqueeze(-1)
        real = torch.cat([present, features.mask & present], dim=1)
        summary = self.summaries[name](torch.where(present, features.pooled, 0.0))
        tokens = self.values[name](torch.where(real[:, 1:].unsqueeze(-1), features.tokens, 0.0))
        return torch.cat([summary.unsqueeze(1), tokens], dim=1), real


class PooledProjection(nn.Module):
    """Projects each input's pooled vector to one common width ``dim`` (Linear + activation)."""

    def __init__(self, input_dims: dict[str, InputDims], dim: int,
                 activation: str = "tanh") -> None:
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU, "none": nn.Identity}[activation]
        self.proj = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(d.pooled_dim, dim), act())
             for name, d in input_dims.items()}
        )

    def forward(self, features: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Returns ``{name: (projected [B, dim], present [B, 1] bool)}``."""
        return {
            name: (proj(features[name].pooled), features[name].present.unsqueeze(-1))
            for name, proj in self.proj.items()
        }
