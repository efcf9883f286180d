"""``category`` inputs: a value from a set (brand, country, colour), learned as an embedding.

The vocabulary is the training split's values seen at least ``min_frequency`` times, sorted;
id 0 is the unknown bucket, which takes rarer values and values never seen in training. So that
its vector is learned too (every training value may be frequent enough to have its own),
training batches hand ``unknown_rate`` of their values to the bucket: the model learns what an
unfamiliar brand is worth instead of guessing from an untrained vector. ``3`` in a JSON table
and ``"3"`` in a CSV are the same value. Shapes: a batch gives ``ids [U]`` (int64).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from pydantic import Field

from ..config_base import StrictModel
from ..data.table import Table
from ..errors import DataError
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .kind import check_length
from .tabular import TabularModality, TabularPreprocessor, label_text

UNKNOWN = "[UNK]"  # id 0: rare and unseen values


class CategoryInputOptions(StrictModel):
    """Category input preprocessing: the vocabulary of values learned from training."""

    min_frequency: int = Field(1, ge=1, description="rarer values go to the unknown bucket")
    max_values: int | None = Field(None, ge=1, description="keep at most this many of the most "
                                   "frequent values; the rest go to the unknown bucket")
    lowercase: bool = Field(False, description="treat 'Acme' and 'acme' as one value")
    unknown_rate: float = Field(0.05, ge=0, lt=1, description="training: the share of values "
                                "replaced by the unknown bucket, which so learns what an "
                                "unseen value is worth")


class CategoryInputPreprocessor(TabularPreprocessor):
    """Values -> ids in the training vocabulary (0: unknown)."""

    what = "a category value (text or a number)"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.options = CategoryInputOptions.model_validate(config.preprocess)
        self.values: list[str] = []
        self.lookup: dict[str, int] = {}

    def parse(self, value: Any) -> str:
        if isinstance(value, dict | list | bytes):
            raise ValueError(f"a {type(value).__name__}, not a single value")
        text = label_text(value)
        return text.lower() if self.options.lowercase else text

    def fit(self, table: Table) -> None:
        counts = Counter(v for v in self.parsed(table) if v is not None)
        if not counts:
            raise DataError(f"{table.source}: column {self.column!r} has no values to learn "
                            "from; fill some cells or remove this input")
        kept = [v for v, n in counts.most_common(self.options.max_values)
                if n >= self.options.min_frequency]
        self._set_values(sorted(kept))

    def _set_values(self, values: list[str]) -> None:
        self.values = values
        self.lookup = {v: i + 1 for i, v in enumerate(values)}

    def items(self, unique: list[Any]) -> np.ndarray:
        return np.array([self.lookup.get(v, 0) for v in unique], dtype=np.int64)

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        ids = torch.from_numpy(np.array(items, dtype=np.int64))
        if train and self.options.unknown_rate:
            hide = torch.rand(len(ids), generator=generator) < self.options.unknown_rate
            ids[hide] = 0
        return {"ids": ids}

    def augments(self) -> bool:
        return self.options.unknown_rate > 0

    def spec(self) -> EncoderSpec:
        return EncoderSpec("category", vocab_size=len(self.values) + 1)

    def state(self) -> dict:
        return {"values": self.values}

    def load_state(self, state: dict) -> None:
        self._set_values(list(state["values"]))


@MODALITIES.register("category", CategoryInputOptions)
class CategoryModality(TabularModality):
    """category: one value of a set (brand, country), learned as an embedding."""

    name = "category"
    preprocessor = CategoryInputPreprocessor
    default_encoder = "embedding"
    value = "category"
    variable_axes = {"ids": {}}

    def example_items(self, prep: CategoryInputPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, len(prep.values) + 1, len(sizes), dtype=np.int64)

    def schema(self, prep: CategoryInputPreprocessor, limits: Any, json_body: bool) -> dict:
        schema: dict = {"type": "string", "maxLength": limits.max_text_chars,
                        "description": "a value seen in training, else the unknown bucket"}
        if prep.values:
            schema["examples"] = prep.values[:20]
        return schema

    def request_value(self, value: Any, prep: CategoryInputPreprocessor, limits: Any) -> Any:
        if isinstance(value, str):
            check_length(value, limits)
        return super().request_value(value, prep, limits)

    def describe(self, prep: CategoryInputPreprocessor) -> dict:
        return {"values": prep.values[:500]}
