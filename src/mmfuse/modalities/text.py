"""Text preprocessing: a tokenizer fitted on the training split, max length and padding mask.

The word-level tokenizer (the ``tokenizers`` library) normalises like BERT's basic tokenizer:
Unicode clean-up, optional lower-casing, and a space around every CJK ideograph, so Chinese text
becomes one token per character; punctuation is split off; words unseen in training map to
``[UNK]``. With a pretrained encoder (``minilm``) the encoder's own WordPiece tokenizer is used.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..config import InputConfig, TextOptions
from ..data.table import Table
from .base import Column, Preprocessor, unique_values

PAD, UNK = "[PAD]", "[UNK]"


def word_tokenizer(lowercase: bool):
    """An untrained word-level tokenizer with BERT-style normalisation and pre-tokenisation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def pretrained_tokenizer():
    """The WordPiece tokenizer shipped with the offline MiniLM model."""
    from tokenizers import Tokenizer

    from ..encoders.minilm import minilm_path

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped file pads to 128; batches pad to their longest text
    return tokenizer


class TextPreprocessor(Preprocessor):
    """Strings -> token ids ``[U, L]`` with lengths; batches get ids and a padding mask."""

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = TextOptions.model_validate(config.preprocess)
        self.kind = self.options.tokenizer or "word"
        self._lock = threading.Lock()
        self.tokenizer = pretrained_tokenizer() if self.kind == "pretrained" else None

    def fit(self, table: Table) -> None:
        if self.kind == "pretrained":
            return
        from tokenizers import trainers

        tokenizer = word_tokenizer(self.options.lowercase)
        trainer = trainers.WordLevelTrainer(
            vocab_size=self.options.max_vocab or 10_000_000,
            min_frequency=self.options.min_frequency,
            special_tokens=[PAD, UNK],
            show_progress=False,
        )
        texts = [t for t in table.column(self.column) if t is not None]
        tokenizer.train_from_iterator((str(t) for t in texts), trainer=trainer)
        self.tokenizer = tokenizer

    def encode(self, table: Table) -> Column:
        values = table.column(self.column)  # an empty cell is a missing input
        unique, index = unique_values([None if v is None else str(v) for v in values])
        return Column(self.tokenize(unique), index)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[U, L]`` (padded with the pad id) and lengths ``[U]``."""
        if self.tokenizer is None:
            raise RuntimeError("the text preprocessor must be fitted or loaded before use")
        # The tokenizer is shared by threads (the server's forward workers): setting its
        # truncation while another thread encodes fails ("Already borrowed"), so one at a time.
        with self._lock:
            # truncation inside the tokenizer keeps special tokens such as a final [SEP]
            if (self.tokenizer.truncation or {}).get("max_length") != self.options.max_length:
                self.tokenizer.enable_truncation(self.options.max_length)
            encodings = self.tokenizer.encode_batch(texts)
        lengths = np.array([max(1, len(e.ids)) for e in encodings], dtype=np.int64)
        ids = np.full((len(texts), int(lengths.max(initial=1))), self.pad_id, dtype=np.int64)
        for i, enc in enumerate(encodings):
            row = enc.ids or [self.unk_id]
            ids[i, : len(row)] = row
        return ids, lengths

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(PAD)

    @property
    def unk_id(self) -> int:
        return self.tokenizer.token_to_id(UNK)

    def spec(self) -> dict:
        return {"vocab_size": self.tokenizer.get_vocab_size(), "pad_id": self.pad_id,
                "modality": "text"}

    def state(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str()}

    def load_state(self, state: dict) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(state["tokenizer"])

    def tensors(self, items: tuple[np.ndarray, np.ndarray], train: bool,
                generator: torch.Generator) -> dict:
        ids, lengths = items
        width = int(lengths.max(initial=1))
        ids = torch.from_numpy(np.ascontiguousarray(ids[:, :width]))
        mask = torch.arange(width).unsqueeze(0) < torch.from_numpy(lengths).unsqueeze(1)
        return {"ids": ids, "mask": mask}
