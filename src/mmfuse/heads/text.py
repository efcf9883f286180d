"""``text``: a decoder that writes the output text token by token, attending over the inputs.

The decoder reads a *memory* of ``dim``-wide slots: the fused vector ``m_0 = W_f f`` first,
then (``memory: inputs``, the default) every input's pooled summary and tokens
(``W_s s_i; W_v v_i1; ...``), each slot plus a learned vector for its input and a sinusoidal
position within it. So the decoder sees what the fusion made of the row as a whole and can
still look up details (which frame, which stretch of audio) as it writes.

Decoders (``decoder:``):

- ``gru``: Luong et al. 2015 ("Effective Approaches to Attention-based Neural Machine
  Translation"), global attention with the "general" score. ``h_0 = tanh(W_0 m_0)``;
  ``h_t = GRU(E y_{t-1}, h_{t-1})``; ``a_t = softmax(h_t W_a M^T / sqrt(d))`` over the real
  slots; ``c_t = a_t M``; ``p(y_t) = softmax(W_o tanh(W_c [h_t; c_t]))``. The attention reads
  the GRU state but does not feed back into it, so training runs the GRU over the whole target
  at once.
- ``transformer``: Vaswani et al. 2017, a pre-norm transformer decoder: causal self-attention
  over the tokens written so far (learned positions), cross-attention over the memory.

Training uses teacher forcing: the decoder reads ``[BOS] y_1 .. y_n`` and is trained with
cross-entropy to write ``y_1 .. y_n [EOS]`` (padding is left out of the loss). Generation is
greedy search, sampling or beam search (:mod:`.decoding`).

Shapes: fused ``[B, D]`` and the inputs' Features -> teacher-forced logits ``[B, T, V]``, or
generated ``{"tokens": [B, H, max_length + 1], "scores": [B, H]}``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..config_base import Options
from ..fusion.base import SlotProjection
from ..outputs.text import PAD_ID, decode_ids
from ..registry import HEADS
from ..specs import InputDims, TargetSpec
from .base import Head, HeadTraits
from .control import listener_for, options_for
from .decoding import beam_search, greedy, sampler


class TextHeadOptions(Options):
    decoder: Literal["gru", "transformer"] = "gru"
    dim: int = Field(256, ge=8, description="width of the decoder and its memory slots")
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1, description="transformer: attention heads; must divide dim")
    dropout: float = Field(0.1, ge=0, lt=1)
    memory: Literal["inputs", "fused"] = Field(
        "inputs", description="attend over the fused vector and every input's tokens, or over "
        "the fused vector alone")
    decoding: Literal["greedy", "beam", "sample"] = "greedy"
    beam_width: int = Field(4, ge=1)
    temperature: float = Field(1.0, gt=0, description="sample: divides the log-probabilities")
    top_p: float = Field(1.0, gt=0, le=1, description="sample: nucleus (1 keeps every token)")
    top_k: int = Field(0, ge=0, description="sample: 0 keeps every token")
    seed: int | None = Field(None, description="sample: the generator's seed per call")
    min_tokens: int = Field(0, ge=0, description="hold the end token back for this many "
                            "tokens (greedy and sample)")
    max_length: int = Field(48, ge=1, description="most tokens generated (and kept per "
                            "training target)")
    length_penalty: float = Field(0.0, ge=0, description="beam: GNMT alpha; 0 ranks by "
                                  "log-probability")
    hypotheses: int = Field(3, ge=1, description="beam: hypotheses returned per row")

    @model_validator(mode="after")
    def _consistent(self) -> TextHeadOptions:
        if self.decoder == "transformer" and self.dim % self.heads:
            raise ValueError(f"heads={self.heads} must divide dim={self.dim}")
        if self.decoding == "beam" and self.hypotheses > self.beam_width:
            raise ValueError(f"hypotheses={self.hypotheses} is more than beam_width="
                             f"{self.beam_width} can give; lower it or widen the beam")
        return self


def sinusoid(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed positions ``[length, dim]`` (Vaswani et al. 2017), for memories of any length,
    made on ``device`` (in fp32)."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                     * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table


class Memory(nn.Module):
    """The slots the decoder attends over: fused vector first, then each input's slots."""

    def __init__(self, in_dim: int, input_dims: dict[str, InputDims], dim: int,
                 use_inputs: bool) -> None:
        super().__init__()
        self.fused = nn.Linear(in_dim, dim)
        self.names = list(input_dims) if use_inputs else []
        self.slots = SlotProjection({n: input_dims[n] for n in self.names}, dim) \
            if self.names else None
        self.source = nn.Parameter(0.02 * torch.randn(len(self.names), 1, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, fused: torch.Tensor, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots ``[B, M, dim]`` and which are real ``[B, M]``."""
        parts = [self.fused(fused).unsqueeze(1)]
        real = [torch.ones(fused.shape[0], 1, dtype=torch.bool, device=fused.device)]
        for i, name in enumerate(self.names):
            x, is_real = self.slots(name, features[name])
            position = sinusoid(x.shape[1], x.shape[2], x.device).to(x.dtype)
            parts.append(x + self.source[i] + position)
            real.append(is_real)
        return self.norm(torch.cat(parts, dim=1)), torch.cat(real, dim=1)


class GRUDecoder(nn.Module):
    """GRU with Luong "general" attention over the memory (see the module docstring)."""

    def __init__(self, vocab: int, options: TextHeadOptions) -> None:
        super().__init__()
        dim, self.layers = options.dim, options.layers
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD_ID)
        self.init = nn.Linear(dim, options.layers * dim)
        self.gru = nn.GRU(dim, dim, options.layers, batch_first=True,
                          dropout=options.dropout if options.layers > 1 else 0.0)
        self.query = nn.Linear(dim, dim, bias=False)
        self.combine = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(options.dropout)
        self.out = nn.Linear(dim, vocab)

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.init(memory[:, 0]))  # from the fused slot
        return h.view(-1, self.layers, h.shape[-1] // self.layers).transpose(0, 1).contiguous()

    def logits(self, states: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        scores = self.query(states) @ memory.transpose(1, 2) / math.sqrt(memory.shape[-1])
        weights = scores.masked_fill(~mask.unsqueeze(1), -torch.inf).softmax(-1)
        attended = torch.tanh(self.combine(torch.cat([states, weights @ memory], dim=-1)))
        return self.out(self.drop(attended))

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """Teacher forcing: logits ``[B, T, V]`` for decoder inputs ``ids [B, T]``."""
        states, _ = self.gru(self.drop(self.embed(ids)), self.start(memory, mask))
        return self.logits(states, memory, mask)

    def step(self, h: torch.Tensor, last: torch.Tensor, memory: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, h = self.gru(self.embed(last).unsqueeze(1), h)
        return self.logits(state, memory, mask)[:, 0].log_softmax(-1), h

    @staticmethod
    def reorder(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return h[:, index]


class TransformerDecoder(nn.Module):
    """Pre-norm transformer decoder over the tokens so far, cross-attending to the memory."""

    def __init__(self, vocab: int, options: TextHeadOptions) -> None:
        super().__init__()
        dim = options.dim
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD_ID)
        self.position = nn.Parameter(0.02 * torch.randn(options.max_length + 2, dim))
        layer = nn.TransformerDecoderLayer(dim, options.heads, 2 * dim, options.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, options.layers)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """Teacher forcing: logits ``[B, T, V]`` for decoder inputs ``ids [B, T]``."""
        length = ids.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), 1)
        x = self.embed(ids) + self.position[:length]
        states = self.decoder(x, memory, tgt_mask=causal, memory_key_padding_mask=~mask)
        return self.out(self.norm(states))

    def start(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(memory.shape[0], 0, dtype=torch.long, device=memory.device)

    def step(self, prefix: torch.Tensor, last: torch.Tensor, memory: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = torch.cat([prefix, last.unsqueeze(1)], dim=1)
        return self(prefix, memory, mask)[:, -1].log_softmax(-1), prefix

    @staticmethod
    def reorder(prefix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return prefix[index]


DECODERS = {"gru": GRUDecoder, "transformer": TransformerDecoder}


@HEADS.register("text", TextHeadOptions)
class TextHead(Head):
    """Generates text: GRU or transformer decoder over the fused row and the inputs' tokens."""

    # the model passes it the inputs' features and the targets; evaluation also scores its
    # teacher-forced logits
    traits = HeadTraits(generates=True, needs_teacher=True)

    def __init__(self, options: TextHeadOptions, in_dim: int, spec: TargetSpec,
                 input_dims: dict[str, InputDims] | None = None) -> None:
        super().__init__()
        self.options = options
        labels = list(spec.labels)
        self.labels = labels  # the output vocabulary, in id order
        self.memory = Memory(in_dim, input_dims or {}, options.dim, options.memory == "inputs")
        self.decoder = DECODERS[options.decoder](len(labels), options)

    def forward(self, fused: torch.Tensor, features: dict, target: torch.Tensor | None = None):
        """Teacher-forced logits ``[B, T - 1, V]`` for ``target [B, T]``, or, without a
        target, the generated ``{"tokens", "scores"}``."""
        memory, mask = self.memory(fused, features)
        if target is not None:
            return self.decoder(target[:, :-1], memory, mask)
        o = options_for(self)  # with this call's updates (heads/control.py)
        if o.decoding == "beam":
            tokens, scores = beam_search(self.decoder, memory, mask, o.max_length,
                                         o.beam_width, o.length_penalty, o.hypotheses)
        else:
            pick = None
            if o.decoding == "sample":
                generator = torch.Generator()
                if o.seed is not None:
                    generator.manual_seed(o.seed)
                else:
                    generator.seed()
                pick = sampler(o.temperature, o.top_p, o.top_k, generator)
            tokens, scores = greedy(self.decoder, memory, mask, o.max_length, pick,
                                    listener_for(self), o.min_tokens)
        return {"tokens": tokens, "scores": scores}

    def decode(self, ids: list[int]) -> str:
        """Output ids (up to ``[EOS]``) as text."""
        return decode_ids(self.labels, ids)

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
        """Mean cross-entropy per target token (``[EOS]`` included, padding left out)."""
        gold = target[:, 1:]
        if not bool((gold != PAD_ID).any()):
            return logits.sum() * 0.0  # no row of the batch has a target
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                               ignore_index=PAD_ID, label_smoothing=label_smoothing)

    @staticmethod
    def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
        """Teacher-forced token accuracy: the share of target tokens predicted right."""
        gold = target[:, 1:]
        real = gold != PAD_ID
        if not bool(real.any()):
            return float("nan")
        return (logits.argmax(-1) == gold)[real].float().mean().item()

    def texts(self, generated: dict) -> list[list[tuple[str, float]]]:
        """Per row, the hypotheses as ``(text, score)``, best first."""
        rows = []
        for ids, scores in zip(generated["tokens"].tolist(), generated["scores"].tolist(),
                               strict=True):
            rows.append([(decode_ids(self.labels, h), s)
                         for h, s in zip(ids, scores, strict=True) if s > -math.inf])
        return rows

    def describe(self) -> dict:
        """What ``GET /v1/model`` says about this output (its labels are the vocabulary)."""
        o = self.options
        return {"vocabulary_size": len(self.labels), "decoder": o.decoder,
                "decoding": o.decoding, "max_length": o.max_length}

    def postprocess(self, generated: dict) -> list[dict]:
        """Per row: the text, its score, and with beam search the top hypotheses."""
        rows = []
        for hypotheses in self.texts(generated):
            row = {"prediction": hypotheses[0][0], "score": round(hypotheses[0][1], 6)}
            if options_for(self).decoding == "beam":
                row["hypotheses"] = [{"text": t, "score": round(s, 6)} for t, s in hypotheses]
            rows.append(row)
        return rows
