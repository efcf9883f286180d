"""``number`` inputs: a numeric cell, scaled with statistics of the training split.

Scaling (``preprocess.scaling``), fitted on the training split's values:

- ``zscore`` (default): ``(x - mean) / std``;
- ``minmax``: ``(x - min) / (max - min)``, so training values lie in [0, 1];
- ``log1p``: ``log(1 + x)``, then z-scored (for skewed positive values: prices, counts);
  a value of -1 or less is an error naming its row;
- ``none``: the value as it is.

A blank cell is a missing input; text that is not a number is an error naming the row, the
column and the value. Scaled values are clipped to +-1000, so an absurd cell cannot overflow
the network. Shapes: a batch gives ``values [U, 1]`` (float32).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..config_base import StrictModel
from ..data.table import Table
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .tabular import TabularModality, TabularPreprocessor

CLIP = 1000.0  # scaled values are clipped to +-CLIP (standard deviations, with zscore)


class NumberOptions(StrictModel):
    """Number preprocessing: parse, then scale with the training split's statistics."""

    scaling: Literal["zscore", "minmax", "log1p", "none"] = Field(
        "zscore", description="zscore, minmax, log1p (then z-scored) or none; fitted on the "
        "training split")


def parse_number(value: Any) -> float:
    """A cell as a finite float: a JSON number, or text such as ``12``, ``-3.5``, ``1e3``.

    Raises:
        ValueError: booleans, text that is not a number, infinities.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean, not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            raise ValueError("not a finite number") from None
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError("not a number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


class NumberPreprocessor(TabularPreprocessor):
    """Numbers -> ``(x - shift) / scale`` after the optional log1p."""

    what = "a number"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.options = NumberOptions.model_validate(config.preprocess)
        self.shift, self.scale = 0.0, 1.0

    def parse(self, value: Any) -> float:
        number = parse_number(value)
        if self.options.scaling == "log1p" and number <= -1:
            raise ValueError("scaling log1p needs values above -1")
        return number

    def fit(self, table: Table) -> None:
        values = self.training_values(table, "input")
        scaling = self.options.scaling
        if scaling == "log1p":
            values = np.log1p(values)
        if scaling in ("zscore", "log1p"):
            self.shift, self.scale = float(values.mean()), float(values.std() or 1.0)
        elif scaling == "minmax":
            low, high = float(values.min()), float(values.max())
            self.shift, self.scale = low, (high - low) or 1.0

    def items(self, unique: list[Any]) -> np.ndarray:
        return np.asarray(unique, dtype=np.float64).reshape(-1)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Raw values as the encoder sees them."""
        values = np.asarray(values, dtype=np.float64)
        if self.options.scaling == "log1p":
            values = np.log1p(values)
        return (values - self.shift) / self.scale

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        # clipped: a cell of 1e200 (a typo, an attack) must not overflow the network to NaN
        scaled = np.clip(self.scaled(items), -CLIP, CLIP).astype(np.float32)
        return {"values": torch.from_numpy(scaled).view(-1, 1)}

    def spec(self) -> EncoderSpec:
        return EncoderSpec("number", width=1)

    def state(self) -> dict:
        return {"shift": self.shift, "scale": self.scale}

    def load_state(self, state: dict) -> None:
        self.shift, self.scale = float(state["shift"]), float(state["scale"])


@MODALITIES.register("number", NumberOptions)
class NumberModality(TabularModality):
    """number: a numeric cell (price, age, weight), scaled with training statistics."""

    name = "number"
    preprocessor = NumberPreprocessor
    default_encoder = "numeric"
    value = "number"
    variable_axes = {"values": {}}

    def example_items(self, prep: NumberPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> np.ndarray:
        values = prep.shift + prep.scale * rng.standard_normal(len(sizes))
        return np.expm1(values) if prep.options.scaling == "log1p" else values

    def schema(self, prep: Any, limits: Any, json_body: bool) -> dict:
        return {"type": "number"}
