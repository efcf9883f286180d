"""Text targets: an output tokenizer fitted on the training split, and its exact inverse.

A generated text must come back exactly as written, spaces included: "312" is three digit
tokens and no spaces, "三百一十二" five characters and no spaces, "trois cent douze" three words
with a space before each but the first. So every token records whether a space came before it,
SentencePiece-style: ``"▁cent"`` is "cent" after a space, ``"cent"`` the same word glued to the
previous token. Joining the tokens and turning ``▁`` back into spaces rebuilds the text (runs
of whitespace become one space, and the ends are stripped: see :func:`normalize`).

Tokenizers (``preprocess.tokenizer``):

- ``word``: a run of letters is one token; each digit, each CJK character (ideographs, kana,
  hangul) and each other symbol is a token of its own. Numbers and Chinese are then spelt from a
  small vocabulary, and a number never seen in training can still be written.
- ``char``: every character is a token.

Ids: 0 ``[PAD]``, 1 ``[UNK]`` (a token rarer than ``min_frequency`` or unseen in training),
2 ``[BOS]`` (starts every decoder input), 3 ``[EOS]`` (ends every target), then the vocabulary
by falling frequency. Targets are stored as ``[N, L]`` ids ``[BOS] t_1 .. t_n [EOS]`` padded
with ``[PAD]``; the head's ``max_length`` caps ``n`` (longer targets are cut, and the count of
cut rows is kept in the fitted state).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from ..config import TextTargetOptions
from ..data.table import Table
from ..errors import DataError
from .base import Column, Preprocessor

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
SPACE = "▁"  # U+2581, marks a token that follows a space

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"(\s*)([{_CJK}]|\d|[^\W\d_{_CJK}]+|\S)")
_CHAR = re.compile(r"(\s*)(\S)")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK character (ideograph, kana or hangul)."""
    return re.search(f"[{_CJK}]", text) is not None


def normalize(text: str, lowercase: bool = False) -> str:
    """The form a generated text takes: whitespace runs become one space, ends stripped."""
    text = " ".join(str(text).split())
    return text.lower() if lowercase else text


def split_tokens(text: str, kind: str = "word") -> list[str]:
    """``text`` as token strings, each marked with ``▁`` if a space came before it."""
    pattern = _WORD if kind == "word" else _CHAR
    tokens = []
    for space, piece in pattern.findall(normalize(text)):
        tokens.append(SPACE + piece if space and tokens else piece)
    return tokens


def join_tokens(tokens: list[str]) -> str:
    """The inverse of :func:`split_tokens`."""
    return "".join(tokens).replace(SPACE, " ").strip()


def decode_ids(vocabulary: list[str], ids: list[int]) -> str:
    """Generated ids (up to ``[EOS]``) back to text; ``[UNK]`` is written as a word of its
    own (whether a space came before the unknown token is not known)."""
    tokens = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            tokens.append(SPACE + UNK if i == UNK_ID else vocabulary[i])
    return join_tokens(tokens)


class TextTargetPreprocessor(Preprocessor):
    """Target strings <-> id sequences; the vocabulary is learned from the training split."""

    def __init__(self, config) -> None:
        self.name, self.column = config.name, config.column
        self.options = TextTargetOptions.model_validate(config.preprocess)
        self.max_length = int(config.head["max_length"])
        self.labels: list[str] = list(SPECIAL)  # the vocabulary, in id order
        self.truncated = 0

    def normalize(self, text: str) -> str:
        """A reference text as the model would write it (for exact match)."""
        return normalize(text, self.options.lowercase)

    def tokens(self, text: str) -> list[str]:
        return split_tokens(self.normalize(text), self.options.tokenizer)

    def fit(self, table: Table) -> None:
        texts = [v for v in table.column(self.column) if v is not None and str(v).strip()]
        if not texts:
            raise DataError(f"{table.source}: column {self.column!r} has no target texts to "
                            "learn from")
        counts = Counter(t for text in texts for t in self.tokens(str(text)))
        kept = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if c >= self.options.min_frequency]
        if self.options.max_vocab is not None:
            kept = kept[: self.options.max_vocab - len(SPECIAL)]
        self.labels = list(SPECIAL) + kept
        self.truncated = sum(len(self.tokens(str(t))) > self.max_length for t in texts)

    def encode(self, table: Table) -> Column:
        """Ids ``[N, L]``; a row without a target is all ``[PAD]`` (left out of the loss)."""
        lookup = {t: i for i, t in enumerate(self.labels)}
        rows = []
        for value in table.column(self.column):
            if value is None or not str(value).strip():
                rows.append([])
                continue
            ids = [lookup.get(t, UNK_ID) for t in self.tokens(str(value))][: self.max_length]
            rows.append([BOS_ID, *ids, EOS_ID])
        ids = np.full((len(rows), max(2, *(len(r) for r in rows))), PAD_ID, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return Column(None, ids)

    def target_tensor(self, ids: np.ndarray) -> torch.Tensor:
        """The rows' ids, cut to the longest of them (batches hold no all-pad columns)."""
        width = max(2, int((ids != PAD_ID).sum(1).max(initial=0)))
        return torch.from_numpy(np.ascontiguousarray(ids[:, :width]))

    def state(self) -> dict:
        return {"vocabulary": self.labels, "truncated": self.truncated}

    def load_state(self, state: dict) -> None:
        self.labels, self.truncated = list(state["vocabulary"]), int(state["truncated"])
