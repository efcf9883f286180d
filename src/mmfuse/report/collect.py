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
from ..outputs import output_type
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
    """The answers of output ``name`` from its head's postprocess, judged against the table by
    its output type (a label by its text, a number within 5%, a yes/no by its meaning...)."""
    prep = model.pipeline.outputs[name]
    rows = model.pipeline.model.heads[name].postprocess(raw)
    kind = next(o.type for o in model.config.outputs if o.name == name)
    confidence = np.array([confidence_of(r) for r in rows], dtype=np.float64)
    predicted, truth, right = output_type(kind).judge(prep, rows, table)
    return Outcomes(name, kind, predicted, truth, confidence, right)


def confidence_of(row: dict) -> float:
    """How sure one answer is: a text's score, a label's probability (a binary output's: of
    the label it gave), NaN for a number."""
    if "score" in row:
        return row["score"]
    if "probability" in row:
        return max(row["probability"], 1 - row["probability"])
    probabilities = row.get("probabilities")
    return max(probabilities.values()) if probabilities else float("nan")
