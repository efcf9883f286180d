"""What every section of the report reads: the model, the table, and one pass of predictions.

The table is encoded once and run through the model once (:class:`ReportData`); the sections
only read from it (modality importance runs its own altered passes). Each output's answers go
through its head's own ``postprocess``, the same step as ``mmfuse predict``, so the report shows
exactly what a user would get for the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.table import Table
from ..modalities.base import Preprocessor
from ..modalities.category import label_text
from ..modalities.text_target import TextTargetPreprocessor
from ..pipeline import EncodedTable

if TYPE_CHECKING:
    from ..api import Model


@dataclass
class Outcomes:
    """One output's answer for every row of the table.

    Attributes:
        predicted: the prediction as text (a label, or the best generated text).
        truth: the true value as the model would write it; None where the row has none.
        confidence: the top probability (category) or the best hypothesis' score (text).
        right: whether the prediction equals the truth (False where there is no truth).
    """

    name: str
    type: str
    predicted: list[str]
    truth: list[str | None]
    confidence: np.ndarray
    right: np.ndarray

    @property
    def known(self) -> np.ndarray:
        """Rows that have a true value."""
        return np.array([t is not None for t in self.truth], dtype=bool)


@dataclass
class ReportData:
    """A trained model and its predictions on one table, shared by every section."""

    run_dir: Path
    model: Model
    table: Table
    encoded: EncodedTable
    by: str | None
    groups: list[str] | None  # each row's value of the --by column, as text
    evaluation: dict  # Model.evaluate_encoded: {"n", "outputs", "groups"?}
    raw: dict[str, Any]  # pipeline.logits: category logits, generated {"tokens", "scores"}
    outcomes: dict[str, Outcomes]


def collect(model: Model, run_dir: Path, table: Table, by: str | None) -> ReportData:
    """Encode ``table``, evaluate the model on it and keep every output's answers."""
    encoded = model.pipeline.encode(table)
    raw = model.pipeline.logits(encoded)
    evaluation = model.evaluate_encoded(encoded, by, outputs=raw)
    outcomes = {name: outcomes_of(model, name, raw[name], table)
                for name in model.pipeline.outputs}
    groups = [str(v) for v in table.column(by)] if by else None
    return ReportData(run_dir, model, table, encoded, by, groups, evaluation, raw, outcomes)


def outcomes_of(model: Model, name: str, raw: Any, table: Table) -> Outcomes:
    """The answers of output ``name`` from its head's postprocess, judged against the table."""
    prep = model.pipeline.outputs[name]
    rows = model.pipeline.model.heads[name].postprocess(raw)
    output_type = next(o.type for o in model.config.outputs if o.name == name)
    confidence = np.array([confidence_of(r) for r in rows], dtype=np.float64)
    cells = table.column(prep.column)
    if output_type in ("number", "binary", "set"):
        # judged on the encoded targets: a number within 5% of the truth, a yes/no by its
        # meaning ("Yes" or true for "yes"), a set by its labels whatever their order
        targets = prep.targets(table)
        predicted = [" ".join(r["prediction"]) if isinstance(r["prediction"], list)
                     else str(r["prediction"]) for r in rows]
        truth = [None if c is None else label_text(c) if not isinstance(c, list)
                 else " ".join(map(str, c)) for c in cells]
        right = np.array([agrees(output_type, r["prediction"], targets[i], prep)
                          for i, r in enumerate(rows)], dtype=bool)
        return Outcomes(name, output_type, predicted, truth, confidence, right)
    predicted = [str(r["prediction"]) for r in rows]
    truth = [answer_text(prep, v) for v in cells]
    right = np.array([t is not None and p == t for p, t in zip(predicted, truth, strict=True)])
    return Outcomes(name, output_type, predicted, truth, confidence, right)


def agrees(output_type: str, prediction: Any, target: np.ndarray, prep: Preprocessor) -> bool:
    """Whether a number, binary or set answer matches its row's encoded target."""
    if output_type == "number":
        if np.isnan(target):
            return False
        truth = float(target) * prep.std + prep.mean
        return abs(float(prediction) - truth) <= 0.05 * max(abs(truth), 1e-9)
    if output_type == "binary":
        if np.isnan(target):
            return False
        positive = prediction is True or prediction == prep.labels[1]
        return positive == bool(target)
    chosen = set(prediction)
    return bool(np.array_equal(target > 0.5, [label in chosen for label in prep.labels]))


def confidence_of(row: dict) -> float:
    """How sure one answer is: a text's score, a label's probability (a binary output's: of
    the label it gave), NaN for a number."""
    if "score" in row:
        return row["score"]
    if "probability" in row:
        return max(row["probability"], 1 - row["probability"])
    probabilities = row.get("probabilities")
    return max(probabilities.values()) if probabilities else float("nan")


def answer_text(prep: Preprocessor, value: Any) -> str | None:
    """A true value as the model would write it: a text output's normalised text (as its
    exact match compares), otherwise the label as text (``3`` and ``"3"`` alike)."""
    if value is None:
        return None
    if isinstance(prep, TextTargetPreprocessor):
        return prep.normalize(str(value)) or None
    return label_text(value)
