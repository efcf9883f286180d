"""What follows neural training, on the best weights: the classic predictors on the fused
vectors of the training split, then calibration on the validation split.

- Predictors: the fused vectors of every training row are computed once, in eval mode, and each
  output with ``predictor:`` fits its scikit-learn estimator on them
  (``training/predictors.py``).
- Calibration, of what is served: a binary output with ``threshold: auto`` fits its F1-best
  threshold on the answers it serves (its predictor's, when one serves it); a category output
  with ``calibrate: true`` fits the softmax temperature of its head (not when a predictor
  serves it: the temperature scales the head's logits, and the predictor's probabilities are
  its own). Without a validation split they are fitted on the training split, which flatters
  the model: the summary says which split was used.

The results live in the output's preprocessor state (calibration) and in the pipeline's
``predictors``, both saved in the bundle.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import DataError
from ..model import FUSED
from ..outputs import output_type
from ..pipeline import EncodedTable, Pipeline
from ..predictors import fit_predictor


def calibrate(pipeline: Pipeline, data: EncodedTable, batch_size: int) -> dict:
    """Fit every head's calibration on ``data``; returns ``{output: calibration}`` of those
    that fitted one."""
    served = set(pipeline.served)
    heads = {name: head for name, head in pipeline.model.heads.items()
             if head.traits.needs_calibration
             and not (name in served and head.traits.calibrates_logits)}
    if not heads or not len(data):
        return {}
    logits = pipeline.logits(data, batch_size)  # what is served: a predictor's answers too
    fitted = {}
    for name, head in heads.items():
        target = pipeline.outputs[name].target_tensor(data.targets[name])
        values = head.calibrate(logits[name], target)
        if values:
            prep = pipeline.outputs[name]
            prep.calibration = {**prep.calibration, **values}
            fitted[name] = values
    return fitted


def check_predictor_targets(pipeline: Pipeline, data: EncodedTable) -> None:
    """Before training: a classifier predictor needs two classes among the training rows.

    Raises:
        DataError: naming the output, its column and the fix.
    """
    for output in pipeline.config.outputs:
        kind = output_type(output.type)
        if output.predictor and not kind.regression:
            rows, y = kind.predictor_targets(data.targets[output.name])
            if len(np.unique(y)) < 2:
                raise DataError(
                    f"{data.table.source}: output {output.name!r} (column {output.column!r}) "
                    f"holds {'one class' if len(rows) else 'no label'} among the training rows; "
                    f"its predictor {output.predictor['type']!r} needs two. Drop the "
                    "predictor, or train on rows with both")


def fit_predictors(pipeline: Pipeline, data: EncodedTable, batch_size: int, seed: int) -> dict:
    """Fit the classic predictor of every output that names one on the fused vectors of
    ``data``; returns ``{output: seconds}`` (the fused vectors' time is counted once, under
    ``"fused_vectors"``)."""
    wanted = [o for o in pipeline.config.outputs if o.predictor]
    if not wanted:
        return {}
    began = time.perf_counter()
    fused = pipeline.logits(data, batch_size, fused=True, predictors=False)[FUSED].numpy()
    seconds = {"fused_vectors": round(time.perf_counter() - began, 3)}
    for output in wanted:
        began = time.perf_counter()
        labels = len(pipeline.outputs[output.name].target_spec().labels)
        pipeline.predictors[output.name] = fit_predictor(
            output.predictor, output.type, labels, fused, data.targets[output.name], seed)
        seconds[output.name] = round(time.perf_counter() - began, 3)
    return seconds


@torch.no_grad()
def finish(pipeline: Pipeline, train_data: EncodedTable, valid_data: EncodedTable | None,
           batch_size: int, seed: int) -> dict:
    """Fit the predictors, then calibrate; the summary of both for the training summary."""
    summary: dict = {}
    seconds = fit_predictors(pipeline, train_data, batch_size, seed)
    if seconds:
        summary["predictor_seconds"] = seconds
    calibration = calibrate(pipeline, valid_data if valid_data is not None else train_data,
                            batch_size)
    if calibration:
        summary["calibration"] = {"split": "valid" if valid_data is not None else "train",
                                  **calibration}
    return summary
