"""``binary`` inputs: a yes/no cell (in stock, handmade), fed to the encoder as 0 or 1.

Accepted, in any letter case: ``true``/``false``, ``yes``/``no``, ``y``/``n``, ``t``/``f``,
``1``/``0``, ``on``/``off``, JSON booleans and the numbers 1 and 0. Anything else is an error
naming the row; a blank cell is a missing input. Shapes: a batch gives ``values [U, 1]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config_base import StrictModel
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .tabular import TabularModality, TabularPreprocessor

TRUE = ("true", "yes", "y", "t", "1", "on", "1.0")
FALSE = ("false", "no", "n", "f", "0", "off", "0.0")


class BinaryInputOptions(StrictModel):
    """Binary inputs have no preprocessing options."""


def parse_binary(value: Any) -> bool:
    """A cell as a boolean.

    Raises:
        ValueError: the cell is not one of the accepted spellings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError("not true/false, yes/no or 1/0")


class BinaryInputPreprocessor(TabularPreprocessor):
    """Yes/no cells -> 1.0 / 0.0."""

    what = "true/false, yes/no or 1/0"

    def parse(self, value: Any) -> bool:
        return parse_binary(value)

    def items(self, unique: list[Any]) -> np.ndarray:
        return np.asarray(unique, dtype=np.float32).reshape(-1)

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        return {"values": torch.from_numpy(np.asarray(items, dtype=np.float32)).view(-1, 1)}

    def spec(self) -> EncoderSpec:
        return EncoderSpec("binary", width=1)


@MODALITIES.register("binary", BinaryInputOptions)
class BinaryModality(TabularModality):
    """binary: a yes/no cell (true/false, yes/no, 1/0)."""

    name = "binary"
    preprocessor = BinaryInputPreprocessor
    default_encoder = "numeric"
    value = "binary"
    variable_axes = {"values": {}}

    def example_items(self, prep: BinaryInputPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> np.ndarray:
        return (np.arange(len(sizes)) % 2).astype(np.float32)

    def schema(self, prep: Any, limits: Any, json_body: bool) -> dict:
        if json_body:
            return {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(TRUE + FALSE)}]}
        return {"type": "string", "enum": ["true", "false"]}
