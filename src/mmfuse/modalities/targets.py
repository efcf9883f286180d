"""Targets of number, binary and set outputs: parsed from the table with every bad cell named
by its row, and encoded as floats, NaN where a row has no target (left out of the loss and
the metrics).

- ``number``: the value normalised with the training split's mean and standard deviation.
- ``binary``: 1.0 for the positive label, 0.0 for the other. The two labels are learned from
  the training split; when both are spellings of true and false (``yes``/``no``, ``1``/``0``,
  JSON booleans), a cell is read by its meaning, so ``Yes`` and ``yes`` are one label.
- ``set``: a multi-hot row over the training split's labels; labels never seen in training
  are dropped (they cannot be predicted).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from ..data.table import Table
from ..errors import DataError
from ..specs import TargetSpec
from .binary import FALSE, TRUE, parse_binary
from .category import label_text
from .number import parse_number
from .tabular import TabularPreprocessor, missing_cell


class NumberTargetPreprocessor(TabularPreprocessor):
    """Numbers -> ``(y - mean) / std`` of the training split."""

    what = "a number"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.mean, self.std = 0.0, 1.0

    def parse(self, value: Any) -> float:
        return parse_number(value)

    def fit(self, table: Table) -> None:
        values = self.training_values(table, "output")
        self.mean, self.std = float(values.mean()), float(values.std() or 1.0)

    def targets(self, table: Table) -> np.ndarray:
        values = np.array([np.nan if v is None else v for v in self.parsed(table)],
                          dtype=np.float64)
        return ((values - self.mean) / self.std).astype(np.float32)


    def target_spec(self) -> TargetSpec:
        return TargetSpec(mean=self.mean, std=self.std)

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])


class BinaryTargetPreprocessor(TabularPreprocessor):
    """Two labels -> 0.0 (negative) / 1.0 (positive)."""

    what = "one of the two labels"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.positive = config.head.get("positive")
        self.labels: list[str] = []  # [negative, positive]
        self.counts: dict[str, int] = {}
        self.boolean = False  # the labels are spellings of true and false
        self.json_bool = False  # ... written as JSON booleans
        self.calibration: dict[str, float] = {}

    def parse(self, value: Any) -> float:
        if isinstance(value, dict | list):
            raise ValueError(f"a {type(value).__name__}, not a label")
        if self.boolean:
            try:
                return float(parse_binary(value))
            except ValueError:
                raise ValueError(f"not {self.labels[1]!r} or {self.labels[0]!r}") from None
        text = label_text(value)
        if text not in self.labels:
            raise ValueError(f"not {self.labels[1]!r} or {self.labels[0]!r}, the labels of the "
                             "training split")
        return float(self.labels.index(text))

    def fit(self, table: Table) -> None:
        cells = [v for v in table.column(self.column) if not missing_cell(v)]
        texts = Counter(label_text(v) for v in cells)
        if len(texts) == 0:
            raise DataError(f"{table.source}: column {self.column!r} has no labels to learn from")
        spelled = all(t.lower() in TRUE + FALSE for t in texts)
        if spelled and self.positive is None:
            self.boolean = True
            self.json_bool = all(isinstance(v, bool) for v in cells)
            first = {truth: next((t for t in texts if (t.lower() in TRUE) == truth),
                                 "true" if truth else "false") for truth in (False, True)}
            self.labels = ["false", "true"] if self.json_bool else [first[False], first[True]]
            counts = Counter(t.lower() in TRUE for t in texts.elements())
            self.counts = {self.labels[1]: counts[True], self.labels[0]: counts[False]}
            return
        if len(texts) != 2:
            raise DataError(f"{table.source}: a binary output has two labels, and column "
                            f"{self.column!r} has {len(texts)}: "
                            f"{', '.join(sorted(texts)[:10])}; use type: category for more")
        if self.positive is None or self.positive not in texts:
            hint = f"positive: {self.positive!r} is not one of them; " if self.positive else ""
            raise DataError(f"{table.source}: column {self.column!r} has labels "
                            f"{' and '.join(map(repr, sorted(texts)))}; {hint}name the positive "
                            "one with positive: LABEL in the output's config")
        negative = next(t for t in texts if t != self.positive)
        self.labels, self.counts = [negative, self.positive], dict(texts)

    def targets(self, table: Table) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in self.parsed(table)],
                        dtype=np.float32)


    def target_spec(self) -> TargetSpec:
        return TargetSpec(labels=self.labels, counts=self.counts, calibration=self.calibration,
                          json_bool=self.json_bool)

    def state(self) -> dict:
        return {"labels": self.labels, "counts": self.counts, "boolean": self.boolean,
                "json_bool": self.json_bool, "calibration": self.calibration}

    def load_state(self, state: dict) -> None:
        self.labels, self.counts = list(state["labels"]), dict(state["counts"])
        self.boolean, self.json_bool = bool(state["boolean"]), bool(state["json_bool"])
        self.calibration = dict(state.get("calibration", {}))


class SetTargetPreprocessor(TabularPreprocessor):
    """Label sets -> multi-hot rows over the training labels."""

    what = "labels separated by the separator, or a JSON list of labels"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.separator = config.head.get("separator")
        self.labels: list[str] = []
        self.counts: dict[str, int] = {}
        self.top_set: list[str] = []  # the most frequent label set of the training split

    def parse(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, list | tuple):
            if any(isinstance(v, dict | list) for v in value):
                raise ValueError("a list may hold only labels")
            labels = [label_text(v) for v in value]
        elif isinstance(value, dict):
            raise ValueError("an object, not labels")
        else:
            labels = label_text(value).split(self.separator)
        return tuple(sorted({label.strip() for label in labels if label.strip()}))

    def parsed(self, table: Table) -> list[Any]:
        # an empty cell is the empty set, not a missing target
        return [() if v is None else v for v in super().parsed(table)]

    def fit(self, table: Table) -> None:
        sets = self.parsed(table)
        self.counts = dict(Counter(label for s in sets for label in s))
        if not self.counts:
            raise DataError(f"{table.source}: column {self.column!r} has no labels to learn "
                            "from (every cell is empty)")
        self.labels = sorted(self.counts)
        self.top_set = list(Counter(sets).most_common(1)[0][0])

    def targets(self, table: Table) -> np.ndarray:
        position = {label: i for i, label in enumerate(self.labels)}
        sets = self.parsed(table)
        out = np.zeros((len(sets), len(self.labels)), dtype=np.float32)
        for row, labels in enumerate(sets):
            for label in labels:
                if label in position:
                    out[row, position[label]] = 1.0
        return out


    def target_tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values))

    def target_spec(self) -> TargetSpec:
        return TargetSpec(labels=self.labels, counts=self.counts, top_set=self.top_set)

    def state(self) -> dict:
        return {"labels": self.labels, "counts": self.counts, "top_set": self.top_set}

    def load_state(self, state: dict) -> None:
        self.labels, self.counts = list(state["labels"]), dict(state["counts"])
        self.top_set = list(state["top_set"])
