"""An output type as one registered unit.

Each output type is one module of this package that registers an :class:`OutputType` subclass
with ``@OUTPUTS.register(NAME, OPTIONS)``, ``OPTIONS`` being the pydantic model of its
``preprocess:`` settings (:class:`NoOptions` when it has none). The class declares everything
the rest of mmfuse asks about the type, so adding a type touches no other module:

- ``preprocessor``: the target preprocessor, fitted on the training split (labels, statistics,
  an output tokenizer), that turns cells into the targets the head's loss takes;
- :meth:`build_head`: its head, the one registered in ``heads/`` under the type's name;
- :meth:`scorer`: its metrics on any subset of rows, beside their baselines;
- ``main_metric`` (higher is better: what modality importance and the report lead with) and
  ``report_metrics`` (the columns of its report table);
- ``predictors``: the classic predictors that fit it (``predictors.py``) and how their answers
  map to the head's output space (:meth:`predictor_targets`, :meth:`predictor_answer`);
- :meth:`answer_schema`: the OpenAPI schema of one answer;
- :meth:`judge`: its answers set beside the truth, for the report's gallery;
- :meth:`report_section` and :meth:`report_stats`: its report's own sections, if any;
- :meth:`explain_score`: what integrated gradients explain (the predicted class's logit...).

Config validation, training, the server, the exporter, the report and explain ask
:func:`output_type` and never test an output's type by name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config_base import StrictModel
from ..modalities.tabular import label_text
from ..registry import HEADS, OUTPUTS

if TYPE_CHECKING:
    from torch import nn

    from ..data.table import Table
    from ..modalities.base import Preprocessor
    from ..specs import InputDims, TargetSpec

Score = Callable[[np.ndarray], dict]  # the metrics of an output on a subset of rows
PROBABILITIES = {"type": "object", "additionalProperties": {"type": "number"}}


class NoOptions(StrictModel):
    """An output type without ``preprocess:`` settings (any key given is an error)."""


def missing(value: object) -> bool:
    """An empty cell, or a NaN (how pandas and Parquet write a gap): no target."""
    return value is None or (isinstance(value, float) and value != value)


def label_schema(labels: list[str]) -> dict:
    """A label as a string, one of ``labels`` when they are known."""
    return {"type": "string", **({"enum": labels} if labels else {})}


class OutputType:
    """What mmfuse knows about one output type (subclassed once per type)."""

    preprocessor: type[Preprocessor]
    main_metric: str = ""
    report_metrics: tuple[str, ...] = ()
    predictors: tuple[str, ...] = ()  # classic predictor types that fit it
    regression: bool = False  # its predictors are regressors (else classifiers)
    confidence: str = "probability"  # what the report's gallery calls an answer's confidence
    causal_lm_head: str | None = None  # its head on a causal LM (decoder: causal_lm), if any

    def build_head(self, output: Any, in_dim: int, spec: TargetSpec,
                   dims: dict[str, InputDims]) -> nn.Module:
        """The output's head, reading the fused vector of width ``in_dim``; a head that also
        reads the inputs' features (a causal LM scoring the labels) gets their ``dims``."""
        if HEADS.get(output.head["type"]).builder.needs_input_dims:
            return HEADS.build(output.head, in_dim, spec, dims)
        return HEADS.build(output.head, in_dim, spec)

    def scorer(self, head: nn.Module, raw: Any, target: np.ndarray, column: list,
               prep: Preprocessor) -> Score:
        """The metrics of this output on any subset of rows.

        Args:
            head: the output's head (labels, statistics, thresholds).
            raw: the head's outputs for every row (logits, values, generated texts).
            target: the encoded targets of every row.
            column: the table's cells of the output's column.
            prep: the output's fitted target preprocessor.
        """
        raise NotImplementedError

    def answer_schema(self, info: dict) -> dict:
        """The OpenAPI schema of one answer (``info``: the head's ``describe()``)."""
        return {"type": "object", "required": ["prediction"],
                "properties": {"prediction": label_schema(info.get("labels") or []),
                               "probabilities": PROBABILITIES}}

    def judge(self, prep: Preprocessor, rows: list[dict], table: Table
              ) -> tuple[list[str], list[str | None], np.ndarray]:
        """Each row's answer and truth as text, and whether the answer is right (by default the
        label texts must be equal)."""
        predicted = [str(r["prediction"]) for r in rows]
        truth = [None if missing(v) else label_text(v) for v in table.column(prep.column)]
        right = np.array([t is not None and p == t for p, t in zip(predicted, truth,
                                                                    strict=True)], dtype=bool)
        return predicted, truth, right

    def report_section(self, report: Any, name: str) -> Any:
        """The report's section of this output, or None for the shared one: ``report_metrics``
        beside the baseline's, overall and per group (``report/outputs.py``)."""
        return None

    def report_stats(self, report: Any, name: str) -> list[str]:
        """HTML parts for the report's data section (e.g. the label distribution)."""
        return []

    def explain_score(self, predicted: Any) -> tuple[Callable[[Any], torch.Tensor], Any]:
        """Toward this row's prediction: a function of a batch of the head's outputs giving
        each copy's score, and the target the forward pass needs (None, but for teacher-forced
        text). By default the output itself (a number's value, a binary's positive logit)."""
        return (lambda out: out), None

    def predictor_targets(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows with a target and a classic predictor's targets for them."""
        rows = np.flatnonzero(~np.isnan(targets))
        return rows, targets[rows].astype(np.float64 if self.regression else np.int64)

    def predictor_answer(self, answer: np.ndarray, classes: np.ndarray | None,
                         labels: int) -> np.ndarray:
        """A classic predictor's answer (a regressor's values, a classifier's probabilities
        over label indices ``classes``) in the head's output space."""
        return np.asarray(answer, dtype=np.float32)


@cache
def output_type(name: str) -> OutputType:
    """The registered output type ``name``.

    Raises:
        ConfigError: no output type has that name (the message lists them).
    """
    return OUTPUTS.get(name).builder()


def output_type_names() -> list[str]:
    """Every registered output type."""
    return OUTPUTS.names()
