"""``attention``: stacked, query-guided attention over the other inputs' tokens.

From Yang et al. 2016, "Stacked Attention Networks for Image Question Answering". The query input's
pooled vector gives the starting state ``u_0 = W_q q``. Every other (context) input ``i`` offers
memory slots ``V_i = [W_s s_i; W_v v_i1; ...; W_v v_iN]`` of width ``dim``. The first slot is
the input's pooled summary ``s_i``, as a whole-image region. Each of the ``hops`` rounds ``k``
does this for every context input:

    h = tanh(W_I V_i + W_Q u_k)      p = softmax(w_p h)  over real slots only
    u_{k+1} = u_k + sum_i  sum_n p_n V_in

The output is ``MLP(u_K)``. Padded tokens get a weight of exactly zero. A missing context input
adds nothing to its row, and a missing query starts from ``u_0 = W_q 0``.

Shapes: ``{name: Features}`` with tokens ``[B, N_i, D_i]`` and pooled ``[B, P_i]`` ->
``[B, hidden[-1]]``, or ``[B, dim]`` when ``hidden`` is empty.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..features import Features
from ..registry import FUSIONS
from ..specs import InputDims
from .base import Fusion, SlotProjection, mlp, pick_query


class AttentionOptions(Options):
    dim: int = Field(256, ge=1, description="width of the state u and of every memory slot")
    hops: int = Field(2, ge=1, description="attention layers stacked (the paper uses 2)")
    attention_dim: int = Field(128, ge=1, description="width of the layer h that scores a slot")
    hidden: list[int] = Field([256], description="MLP widths after the last hop")
    dropout: float = Field(0.0, ge=0, lt=1)
    query: str | None = Field(
        None, description="input whose pooled vector guides the attention; default: first text")


class Glimpse(nn.Module):
    """One hop over one input's memory: ``p = softmax(w_p tanh(W_I V + W_Q u))``, ``sum p V``."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.memory = nn.Linear(dim, attention_dim, bias=False)  # W_I
        self.state = nn.Linear(dim, attention_dim)  # W_Q
        self.score = nn.Linear(attention_dim, 1, bias=False)  # w_p; a bias cancels in softmax

    def forward(self, memory: torch.Tensor, real: torch.Tensor,
                state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the weighted memory ``[B, dim]`` and the weights ``[B, M]``."""
        hidden = torch.tanh(self.memory(memory) + self.state(state).unsqueeze(1))
        scores = self.score(hidden).squeeze(-1).masked_fill(~real, float("-inf"))
        weights = scores.softmax(dim=-1)
        return (weights.unsqueeze(1) @ memory).squeeze(1), weights


@FUSIONS.register("attention", AttentionOptions)
class AttentionFusion(Fusion):
    """Stacked attention: the query input's vector attends over the other inputs' tokens."""

    def __init__(self, options: AttentionOptions, input_dims: dict[str, InputDims]) -> None:
        super().__init__()
        self.query = pick_query(input_dims, options.query)
        self.context = [name for name in input_dims if name != self.query]
        if not self.context:
            raise ConfigError("fusion 'attention' needs at least two inputs: one query and one "
                              "to attend over; use fusion 'concat' for a single input")
        dim = options.dim
        self.start = nn.Linear(input_dims[self.query].pooled_dim, dim)
        self.slots = SlotProjection({n: input_dims[n] for n in self.context}, dim)
        self.hops = nn.ModuleList(
            nn.ModuleDict({n: Glimpse(dim, options.attention_dim) for n in self.context})
            for _ in range(options.hops)
        )
        self.mlp, self.out_dim = mlp(dim, options.hidden, options.dropout)
        # For inspection: the last hop's weights per context input, [B, 1 + N]; slot 0 = summary.
        self.last_attention: dict[str, torch.Tensor] = {}

    def memory(self, name: str, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots ``[B, 1 + N, dim]`` of one input and which of them are real ``[B, 1 + N]``.

        Padded tokens and missing rows are zeroed before projection, so their values cannot leak.
        The summary slot always counts as real, so a softmax never sees a row without any slot.
        """
        slots, real = self.slots(name, features)
        real = real.clone()
        real[:, 0] = True  # the (zeroed) summary of a missing input is still a valid key
        return slots, real

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        query = features[self.query]
        state = self.start(torch.where(query.present.unsqueeze(-1), query.pooled, 0.0))
        memories = {name: self.memory(name, features[name]) for name in self.context}
        for hop in self.hops:
            update = torch.zeros_like(state)
            for name, (slots, real) in memories.items():
                glimpse, weights = hop[name](slots, real, state)
                present = features[name].present.unsqueeze(-1)
                update = update + torch.where(present, glimpse, 0.0)
                self.last_attention[name] = weights.detach()
            state = state + update
        return self.mlp(state)
