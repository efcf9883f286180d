"""``number``: a value per row (regression head, ``heads/number.py``).

- Targets: the value normalised with the training split's mean and standard deviation, NaN
  where a row has none (left out of the loss and the metrics).
- Metrics: MAE, RMSE and R² in the original units, beside those of always predicting the
  training mean.
- Predictors: ridge regression (``linear``), random forest, gradient boosting, fitted on the
  normalised targets.
- Report: an answer within 5% of the truth counts as right in the gallery.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.table import Table
from ..modalities.number import parse_number
from ..modalities.tabular import TabularPreprocessor, label_text
from ..registry import OUTPUTS
from ..specs import TargetSpec
from .kind import NoOptions, OutputType, Score

CLOSE = 0.05  # an answer this close to the truth (relative) counts as right in the report


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


def number_metrics(predicted: np.ndarray, truth: np.ndarray, loss: float,
                   baseline: float) -> dict:
    """MAE, RMSE and R² of predictions in the original units, the head's loss, and the same
    errors of always predicting ``baseline`` (the training mean). Rows without a target (NaN)
    are left out; R² is 1 - SSE / SST over those rows (0 for the mean of the rows themselves,
    negative when worse)."""
    known = ~np.isnan(truth)
    p, y = predicted[known].astype(np.float64), truth[known].astype(np.float64)
    if not len(y):
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "r2": nan, "loss": nan,
                "baseline": {"mae": nan, "rmse": nan, "r2": nan}}

    def errors(guess: np.ndarray) -> dict:
        sse = float(np.square(y - guess).sum())
        sst = float(np.square(y - y.mean()).sum())
        return {"mae": round(float(np.abs(y - guess).mean()), 6),
                "rmse": round(float(np.sqrt(sse / len(y))), 6),
                "r2": round(1.0 - sse / sst, 6) if sst > 0 else float("nan")}

    return {**errors(p), "loss": round(loss, 6),
            "baseline": errors(np.full_like(y, baseline))}


@OUTPUTS.register("number", NoOptions)
class NumberOutput(OutputType):
    """A value (regression)."""

    preprocessor = NumberTargetPreprocessor
    main_metric = "r2"
    report_metrics = ("r2", "mae", "rmse")
    predictors = ("linear", "random_forest", "gradient_boosting")
    regression = True

    def scorer(self, head, raw: torch.Tensor, target: np.ndarray, column: list,
               prep: Any) -> Score:
        values = head.values(raw)
        truth = target.astype(np.float64) * head.std + head.mean
        target_t = torch.from_numpy(target)

        def score(rows: np.ndarray) -> dict:
            loss = float(head.loss(raw[rows], target_t[rows]))
            return number_metrics(values[rows], truth[rows], loss, head.mean)

        return score

    def answer_schema(self, info: dict) -> dict:
        return {"type": "object", "required": ["prediction"],
                "properties": {"prediction": {"type": "number"}}}

    def judge(self, prep: Any, rows: list[dict], table: Table) -> tuple:
        """A number is right within 5% of the truth."""
        targets = prep.targets(table).astype(np.float64) * prep.std + prep.mean
        predicted = [str(r["prediction"]) for r in rows]
        truth = [None if c is None else label_text(c) for c in table.column(prep.column)]
        right = [not np.isnan(t) and abs(float(r["prediction"]) - t) <= CLOSE * max(abs(t), 1e-9)
                 for r, t in zip(rows, targets, strict=True)]
        return predicted, truth, np.array(right, dtype=bool)
