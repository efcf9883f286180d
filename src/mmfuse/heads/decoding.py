"""Turning a decoder into text: greedy search and beam search.

A decoder offers ``start(memory, mask) -> state``, ``step(state, last, memory, mask) ->
(log_probs [B, V], state)`` and ``reorder(state, index) -> state``; these functions only pick
tokens. Both return ``tokens [B, H, max_length + 1]`` (ids ending in ``[EOS]``, then
``[PAD]``) and ``scores [B, H]``, best hypothesis first.

Beam search keeps the ``width`` best partial hypotheses of every row. At each step every live
hypothesis is extended by every token; of the ``2 * width`` best extensions, those that end with
``[EOS]`` and rank within the first ``width`` are finished, and the best ``width`` others stay
live. A row is done when it has ``width`` finished hypotheses; at ``max_length`` every live one
is ended. Finished hypotheses are ranked by the length-normalised log-probability of Wu et al.
2016 ("Google's Neural Machine Translation System", eq. 14):

    score(Y) = log P(Y | X) / lp(Y),    lp(Y) = ((5 + |Y|) / 6) ** alpha

with ``|Y|`` the generated tokens including ``[EOS]``. ``alpha = 0`` ranks by log-probability
(which favours short outputs); larger ``alpha`` favours longer ones.

Every tensor is made on the memory's device; scores add up in fp32 whatever the precision the
decoder runs in (autocast), so a long text's log-probability keeps its digits.
"""

from __future__ import annotations

import math

import torch

from ..outputs.text import BOS_ID, EOS_ID, PAD_ID


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha``."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def greedy(decoder, memory: torch.Tensor, mask: torch.Tensor, max_length: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely token at every step; the score is the text's log-probability."""
    batch, device = memory.shape[0], memory.device
    tokens = torch.full((batch, 1, max_length + 1), PAD_ID, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, dtype=torch.float32, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    state = decoder.start(memory, mask)
    last = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    for t in range(max_length + 1):
        log_probs, state = decoder.step(state, last, memory, mask)
        if t == max_length:  # out of room: end every text here
            best, best_lp = torch.full_like(last, EOS_ID), log_probs[:, EOS_ID]
        else:
            best_lp, best = log_probs.max(-1)
        best = torch.where(done, PAD_ID, best)
        scores[:, 0] += torch.where(done, 0.0, best_lp)
        tokens[:, 0, t] = best
        done |= best == EOS_ID
        last = best
        if bool(done.all()):
            break
    return tokens, scores


@torch.no_grad()
def beam_search(decoder, memory: torch.Tensor, mask: torch.Tensor, max_length: int,
                width: int, alpha: float, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best of ``width``-wide beam search per row, by length-normalised score."""
    batch, k, device = memory.shape[0], width, memory.device
    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    state = decoder.start(memory, mask)
    live = torch.zeros(batch, k, dtype=torch.float32, device=device)
    live[:, 1:] = -torch.inf  # all beams start equal: keep one until the first step
    sequences = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    last = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    rows = torch.arange(batch, device=device).unsqueeze(1)
    for t in range(max_length + 1):
        log_probs, state = decoder.step(state, last, memory, mask)
        total = live.view(-1, 1) + log_probs  # [B * K, V]
        if t == max_length:  # out of room: every live hypothesis ends here
            ended = total[:, EOS_ID].view(batch, k)
            for b in range(batch):
                if len(finished[b]) < k:
                    for j in range(k):
                        if torch.isfinite(ended[b, j]):
                            _finish(finished[b], ended[b, j].item(), sequences[b * k + j],
                                    alpha)
            break
        vocab = total.shape[1]
        top, index = total.view(batch, k * vocab).topk(2 * k, dim=1)
        origin, token = index // vocab, index % vocab
        is_eos = token == EOS_ID
        # finished: an [EOS] extension among the first k; at most k extensions end with [EOS]
        for b, j in (is_eos[:, :k] & torch.isfinite(top[:, :k])).nonzero().tolist():
            if len(finished[b]) < k:
                _finish(finished[b], top[b, j].item(), sequences[b * k + origin[b, j]], alpha)
        if all(len(f) >= k for f in finished):
            break
        # live: the k best extensions that do not end
        rank = (~is_eos).cumsum(1) - 1
        chosen = (~is_eos & (rank < k)).nonzero()[:, 1].view(batch, k)
        live = top[rows, chosen]
        flat = (rows * k + origin[rows, chosen]).view(-1)
        last = token[rows, chosen].view(-1)
        sequences = torch.cat([sequences[flat], last.unsqueeze(1)], dim=1)
        state = decoder.reorder(state, flat)
    return _pack(finished, keep, max_length, device)


def _finish(hypotheses: list, log_prob: float, sequence: torch.Tensor, alpha: float) -> None:
    ids = [*sequence.tolist(), EOS_ID]
    hypotheses.append((log_prob / length_penalty(len(ids), alpha), ids))


def _pack(finished: list[list[tuple[float, list[int]]]], keep: int, max_length: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best hypotheses of every row as ``tokens`` and ``scores`` on ``device``
    (filled in as lists, then copied over once)."""
    tokens = [[[PAD_ID] * (max_length + 1) for _ in range(keep)] for _ in finished]
    scores = [[-math.inf] * keep for _ in finished]
    for b, hypotheses in enumerate(finished):
        best = sorted(hypotheses, key=lambda h: -h[0])[:keep]
        for j, (score, ids) in enumerate(best):
            tokens[b][j][: len(ids)] = ids
            scores[b][j] = score
    return (torch.tensor(tokens, dtype=torch.long, device=device),
            torch.tensor(scores, dtype=torch.float32, device=device))
