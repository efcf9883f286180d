"""What follows neural training, on the best weights: calibration on the validation split, then
the classic predictors on the fused vectors of the training split.

- Calibration: a category output with ``calibrate: true`` fits its softmax temperature, a binary
  output with ``threshold: auto`` its F1-best threshold (heads ``calibrate``). Without a
  validation split they are fitted on the training split, which flatters the model: the
  summary says which split was used.
- Predictors: the fused vectors of every training row are computed once, in eval mode, and each
  output with ``predictor:`` fits its scikit-learn estimator on them
  (``training/predictors.py``).

The results live in the output's preprocessor state (calibration) and in the pipeline's
``predictors``, both saved in the bundle.
"""

from __future__ import annotations

import time

import torch

from ..model import FUSED
from ..pipeline import EncodedTable, Pipeline
from .predictors import fit_predictor


def calibrate(pipeline: Pipeline, data: EncodedTable, batch_size: int) -> dict:
    """Fit every head's calibration on ``data``; returns ``{output: calibration}`` of those
    that fitted one."""
    heads = {name: head for name, head in pipeline.model.heads.items()
             if hasattr(head, "calibrate")}
    if not heads or not len(data):
        return {}
    logits = pipeline.logits(data, batch_size, predictors=False)
    fitted = {}
    for name, head in heads.items():
        target = pipeline.outputs[name].target_tensor(data.targets[name])
        values = head.calibrate(logits[name], target)
        if values:
            prep = pipeline.outputs[name]
            prep.calibration = {**prep.calibration, **values}
            fitted[name] = values
    return fitted


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
    """Calibrate, then fit the predictors; the summary of both for the training summary."""
    summary: dict = {}
    calibration = calibrate(pipeline, valid_data if valid_data is not None else train_data,
                            batch_size)
    if calibration:
        summary["calibration"] = {"split": "valid" if valid_data is not None else "train",
                                  **calibration}
    seconds = fit_predictors(pipeline, train_data, batch_size, seed)
    if seconds:
        summary["predictor_seconds"] = seconds
    return summary
