"""Category targets: the label set is learned from the training split, sorted."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..data.table import Table
from ..errors import DataError
from ..heads.category import IGNORE_INDEX
from ..specs import TargetSpec
from .base import Column, Preprocessor


def missing(value: object) -> bool:
    """An empty cell, or a NaN (how pandas and Parquet write a gap): no label."""
    return value is None or (isinstance(value, float) and value != value)


def label_text(value: object) -> str:
    """A label as text: ``3`` in JSON and ``"3"`` in CSV are the same label."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


class CategoryPreprocessor(Preprocessor):
    """Label strings <-> class indices; labels unseen in training map to IGNORE_INDEX."""

    def __init__(self, config) -> None:
        self.name, self.column = config.name, config.column
        self.labels: list[str] = []
        self.counts: dict[str, int] = {}
        self.calibration: dict[str, float] = {}  # fitted on validation after training

    def fit(self, table: Table) -> None:
        values = [label_text(v) for v in table.column(self.column) if not missing(v)]
        if not values:
            raise DataError(f"{table.source}: column {self.column!r} has no labels to learn from")
        self.counts = dict(Counter(values))
        self.labels = sorted(self.counts)

    def encode(self, table: Table) -> Column:
        lookup = {label: i for i, label in enumerate(self.labels)}
        values = table.column(self.column)
        index = np.array(
            [IGNORE_INDEX if missing(v) else lookup.get(label_text(v), IGNORE_INDEX)
             for v in values], dtype=np.int64)
        return Column(None, index)

    def target_spec(self) -> TargetSpec:
        return TargetSpec(labels=self.labels, counts=self.counts, calibration=self.calibration)

    def state(self) -> dict:
        return {"labels": self.labels, "counts": self.counts, "calibration": self.calibration}

    def load_state(self, state: dict) -> None:
        self.labels, self.counts = list(state["labels"]), dict(state["counts"])
        self.calibration = dict(state.get("calibration", {}))
