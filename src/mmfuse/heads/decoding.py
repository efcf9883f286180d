"""Turning a decoder into text: greedy search, sampling and beam search.

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
from collections.abc import Callable

import torch

from ..outputs.text import BOS_ID, EOS_ID, PAD_ID
from .control import OnStep


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha``."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def greedy(decoder, memory: torch.Tensor, mask: torch.Tensor, max_length: int,
           pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
           on_step: OnStep | None = None, min_tokens: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely token at every step (or ``pick``'s choice from the step's
    log-probabilities ``[B, V]``: :func:`sampler`); the score is the text's log-probability.

    ``on_step`` (:mod:`.control`) hears each step's tokens and may end rows early; the end
    token is not picked before ``min_tokens`` tokens."""
    batch, device = memory.shape[0], memory.device
    tokens = torch.full((batch, 1, max_length + 1), PAD_ID, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, dtype=torch.float32, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    state = decoder.start(memory, mask)
    last = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    for t in range(max_length + 1):
        log_probs, state = decoder.step(state, last, memory, mask)
        if t == max_length:  # out of room: end every text here
            best = torch.full_like(last, EOS_ID)
        else:
            allowed = log_probs
            if t < min_tokens:
                allowed = log_probs.clone()
                allowed[:, EOS_ID] = -math.inf
            best = allowed.argmax(-1) if pick is None else pick(allowed)
        best_lp = log_probs.gather(1, best.unsqueeze(1)).squeeze(1).float()
        best = torch.where(done, PAD_ID, best)
        scores[:, 0] += torch.where(done, 0.0, best_lp)
        tokens[:, 0, t] = best
        ended = set()
        if on_step is not None and t < max_length:
            ended = on_step([None if d or i == EOS_ID else i
                             for d, i in zip(done.tolist(), best.tolist(), strict=True)])
        done |= best == EOS_ID
        for row in ended:  # ended from outside: the text stops after this token
            done[row] = True
        last = best
        if bool(done.all()):
            break
    return tokens, scores


def sampler(temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
            generator: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Draw each step's token from ``softmax(log_probs / temperature)``, kept to the ``top_k``
    most likely tokens (0: all) and to the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020)."""

    def pick(log_probs: torch.Tensor) -> torch.Tensor:
        logits = log_probs.float() / temperature
        if top_k:
            kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if top_p < 1.0:
            ordered, order = logits.sort(-1, descending=True)
            before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)
            ordered = ordered.masked_fill(before >= top_p, -math.inf)  # the first always stays
            logits = torch.full_like(logits, -math.inf).scatter(-1, order, ordered)
        probs = logits.softmax(-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(
            log_probs.device)

    return pick


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
