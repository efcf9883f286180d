"""``gru`` and ``lstm``: token embedding (text) or a linear map of each audio frame's features
(audio), followed by an (optionally bidirectional) RNN.

Padding is packed away (``pack_padded_sequence``), so padded positions never change the final
state. Tokens are the per-step states; the pooled vector is the final hidden state (both
directions concatenated when bidirectional; see :func:`final_states`), or the mean or max of
the real steps' states (``pool: max`` picks out key words such as a colour wherever they stand).

Shapes: ids ``[B, L]`` (or audio features ``[B, C, F, L]``), mask ``[B, L]`` ->
tokens ``[B, L, H*dirs]``, pooled ``[B, H*dirs]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config_base import Options
from ..features import Features, all_present, masked_max, masked_mean
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder


class RNNOptions(Options):
    embedding_dim: int = Field(64, ge=1)
    hidden_size: int = Field(128, ge=1)
    num_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    pool: Literal["last", "mean", "max"] = Field(
        "last", description="pooled vector: the final state, or the mean / max over real steps")


class RNNEncoder(Encoder):
    """Embedding (text) or frame projection (audio) + GRU/LSTM over a padded sequence."""

    traits = EncoderTraits(modalities=("text", "audio"))
    cell: type[nn.Module] = nn.GRU

    def __init__(self, options: RNNOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        if self.modality == "audio":
            self.embed = nn.Linear(spec.channels * spec.feature_dim, options.embedding_dim)
        else:
            self.embed = nn.Embedding(spec.vocab_size, options.embedding_dim,
                                      padding_idx=spec.pad_id)
        self.rnn = self.cell(
            options.embedding_dim, options.hidden_size, num_layers=options.num_layers,
            batch_first=True, bidirectional=options.bidirectional,
            dropout=options.dropout if options.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(options.dropout)
        dirs = 2 if options.bidirectional else 1
        self.token_dim = self.pooled_dim = options.hidden_size * dirs
        self.dirs = dirs
        self.pool = options.pool
        self.token_features = nn.Identity()  # explain: attributions are taken here

    def forward(self, ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> Features:
        """Encode text ``ids`` or audio ``features``; ``mask`` marks the real steps."""
        if features is not None:  # audio [B, C, F, T] -> one vector per frame [B, T, C*F]
            steps = self.embed(features.flatten(1, 2).transpose(1, 2))
        else:
            steps = self.embed(ids)
        steps = self.token_features(steps)
        lengths = mask.sum(1).clamp(min=1)
        packed = pack_padded_sequence(self.dropout(steps), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.rnn(packed)
        tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=mask.shape[1])
        if self.pool == "last":
            pooled = final_states(tokens, lengths, self.dirs)
        elif self.pool == "mean":
            pooled = masked_mean(tokens, mask)
        else:
            pooled = masked_max(tokens, mask)
        return Features(tokens, mask, pooled, all_present(mask.shape[0], mask.device))


def final_states(tokens: torch.Tensor, lengths: torch.Tensor, directions: int = 1
                 ) -> torch.Tensor:
    """The last layer's final hidden state ``[B, H*dirs]``, read off its per-step states
    ``tokens [B, L, H*dirs]``: the forward direction's at the last real step, the backward
    direction's at step 0 (the same values as the RNN's ``h_n``).

    Reading them off the outputs keeps the padded outputs in use, which torch's ONNX exporter
    needs to turn a packed sequence into ONNX's GRU / LSTM with sequence lengths.
    """
    last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, tokens.shape[-1])
    final = tokens.gather(1, last).squeeze(1)
    if directions == 1:
        return final
    width = tokens.shape[-1] // directions
    return torch.cat([final[:, :width], tokens[:, 0, width:]], dim=-1)


@ENCODERS.register("gru", RNNOptions)
class GRUEncoder(RNNEncoder):
    """Embedding + GRU (Cho et al. 2014); token states and the final hidden state."""

    cell = nn.GRU


@ENCODERS.register("lstm", RNNOptions)
class LSTMEncoder(RNNEncoder):
    """Embedding + LSTM (Hochreiter & Schmidhuber 1997); token states and the final state."""

    cell = nn.LSTM
