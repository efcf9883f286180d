"""Text preprocessing: a tokenizer fitted on the training split, max length and padding mask.

The word-level tokenizer (the ``tokenizers`` library) normalises like BERT's basic tokenizer:
Unicode clean-up, optional lower-casing, and a space around every CJK ideograph, so Chinese text
becomes one token per character; punctuation is split off; words unseen in training map to
``[UNK]``. With a pretrained encoder (``minilm``, ``hf_text``) the encoder's own tokenizer is
used: loaded from its folder when fitted, and kept in the state, so a bundle needs no folder.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..config_base import StrictModel
from ..data.table import Table
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .base import Column, Preprocessor, unique_values
from .kind import BadValue, Modality, blank, check_length

if TYPE_CHECKING:
    from ..config import InputConfig

PAD, UNK = "[PAD]", "[UNK]"


class TextOptions(StrictModel):
    """Text preprocessing: a tokenizer fitted on the training split."""

    tokenizer: Literal["word", "pretrained"] | None = Field(
        None, description="'word' (fitted on training text) or the pretrained encoder's own"
    )
    lowercase: bool = True
    max_length: int = Field(32, gt=0)
    min_frequency: int = Field(1, ge=1)
    max_vocab: int | None = Field(None, gt=2)


def word_tokenizer(lowercase: bool):
    """An untrained word-level tokenizer with BERT-style normalisation and pre-tokenisation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


class TextPreprocessor(Preprocessor):
    """Strings -> token ids ``[U, L]`` with lengths; batches get ids and a padding mask."""

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = TextOptions.model_validate(config.preprocess)
        self.kind = self.options.tokenizer or "word"
        self.encoder = dict(config.encoder)  # a pretrained tokenizer is the encoder's
        self._lock = threading.Lock()
        self.tokenizer = None  # fitted, loaded from the state, or read from the encoder's folder
        self.pad_token, self.unk_token = PAD, UNK

    def fit(self, table: Table) -> None:
        if self.kind == "pretrained":
            self._read_pretrained()
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

    def _read_pretrained(self) -> None:
        """The pretrained encoder's tokenizer, from its folder: every encoder with
        ``tokenizer = "pretrained"`` has ``load_tokenizer(encoder) -> PretrainedTokenizer``."""
        from ..registry import ENCODERS

        loaded = ENCODERS.get(self.encoder["type"]).builder.load_tokenizer(self.encoder)
        self.tokenizer = loaded.tokenizer
        self.pad_token, self.unk_token = loaded.pad_token, loaded.unk_token

    def encode(self, table: Table) -> Column:
        values = table.column(self.column)  # an empty cell is a missing input
        unique, index = unique_values([None if v is None else str(v) for v in values])
        return Column(self.tokenize(unique), index)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[U, L]`` (padded with the pad id) and lengths ``[U]``."""
        if self.tokenizer is None and self.kind == "pretrained":
            self._read_pretrained()  # nothing to fit: usable without fit()
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
        """The padding token's id (0 for a tokenizer without one: padding is masked out)."""
        found = self.tokenizer.token_to_id(self.pad_token) if self.pad_token else None
        return 0 if found is None else found

    @property
    def unk_id(self) -> int:
        """The unknown token's id (the pad id for a tokenizer without one)."""
        found = self.tokenizer.token_to_id(self.unk_token) if self.unk_token else None
        return self.pad_id if found is None else found

    def spec(self) -> EncoderSpec:
        return EncoderSpec("text", vocab_size=self.tokenizer.get_vocab_size(),
                           pad_id=self.pad_id)

    def state(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str(), "pad_token": self.pad_token,
                "unk_token": self.unk_token}

    def load_state(self, state: dict) -> None:
        from tokenizers import Tokenizer

        if "tokenizer" in state:
            self.tokenizer = Tokenizer.from_str(state["tokenizer"])
        else:  # a bundle from before tokenizers were saved: its encoder (minilm) has one
            self._read_pretrained()
        self.pad_token, self.unk_token = state.get("pad_token", PAD), state.get("unk_token", UNK)

    def tensors(self, items: tuple[np.ndarray, np.ndarray], train: bool,
                generator: torch.Generator) -> dict:
        ids, lengths = items
        width = int(lengths.max(initial=1))
        ids = torch.from_numpy(np.ascontiguousarray(ids[:, :width]))
        mask = torch.arange(width).unsqueeze(0) < torch.from_numpy(lengths).unsqueeze(1)
        return {"ids": ids, "mask": mask}


@MODALITIES.register("text", TextOptions)
class TextModality(Modality):
    """text: a string, tokenised by a tokenizer fitted on the training split (or a pretrained
    encoder's own)."""

    name = "text"
    preprocessor = TextPreprocessor
    default_encoder = "gru"
    value = "text"
    query = True  # a question conditions the other inputs (FiLM, attention, relation)
    variable_axes = {"ids": {1: "tokens"}, "mask": {1: "tokens"}}

    def resolve_options(self, options: TextOptions, encoder: dict, builder: Any) -> TextOptions:
        needed = builder.tokenizer
        if options.tokenizer not in (None, needed):
            raise ValueError(f"preprocess.tokenizer: encoder {encoder['type']!r} needs "
                             f"tokenizer {needed!r}, not {options.tokenizer!r}")
        options.tokenizer = needed
        return options

    def request_value(self, value: Any, prep: Preprocessor, limits: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            got = "a file upload" if isinstance(value, bytes) else type(value).__name__
            raise BadValue(f"expected text, got {got}")
        check_length(value, limits)
        return None if blank(value) else value

    def example_items(self, prep: TextPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> Any:
        spec = prep.spec()
        lengths = np.asarray(sizes, dtype=np.int64)
        ids = rng.integers(0, spec.vocab_size, (len(sizes), max(sizes)), dtype=np.int64)
        ids[np.arange(max(sizes)) >= lengths[:, None]] = spec.pad_id
        return ids, lengths

    def limits(self, limits: Any) -> dict:
        return {"max_chars": limits.max_text_chars}

    def schema(self, prep: Preprocessor, limits: Any, json_body: bool) -> dict:
        return {"type": "string", "maxLength": limits.max_text_chars}
