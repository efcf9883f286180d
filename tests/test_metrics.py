"""Tests for the shared metric maths (mmfuse.training.metrics, mmfuse.outputs.category)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmfuse.outputs.category import (
    IGNORE_INDEX,
    accuracy,
    category_metrics,
    category_scorer,
    majority_baseline,
)
from mmfuse.training.metrics import RunningMean, evaluate_outputs


def test_running_mean_weights_batches_by_rows():
    mean = RunningMean()
    mean.update(1, loss=2.0, accuracy=1.0)
    mean.update(3, loss=6.0, accuracy=0.0)
    assert mean.count == 4
    assert mean.means() == {"loss": pytest.approx(5.0), "accuracy": pytest.approx(0.25)}


def test_running_mean_accepts_tensors_and_starts_empty():
    mean = RunningMean()
    assert mean.means() == {}
    mean.update(2, loss=torch.tensor(1.5))
    assert mean.means() == {"loss": pytest.approx(1.5)}


def test_examples_per_second_counts_rows(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("mmfuse.training.metrics.time.perf_counter", lambda: next(clock))
    mean = RunningMean()
    mean.update(10, loss=1.0)
    mean.update(30, loss=1.0)
    assert mean.examples_per_second() == pytest.approx(20.0)


def test_accuracy_counts_unknown_labels_as_wrong():
    predicted = torch.tensor([0, 1, 2, 1])
    target = torch.tensor([0, 1, IGNORE_INDEX, 2])
    assert accuracy(predicted, target) == pytest.approx(0.5)


def test_accuracy_of_no_rows_is_nan():
    assert math.isnan(accuracy(torch.tensor([]), torch.tensor([])))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(["a", "b", "a"], 2 / 3), (["x"], 1.0), (["a", "b", "c", "d"], 0.25), ([], 0.0)],
)
def test_majority_baseline(labels, expected):
    assert majority_baseline(labels) == pytest.approx(expected)


LOGITS = torch.tensor([
    [2.0, 0.0],  # predicts 0
    [0.0, 1.0],  # predicts 1
    [3.0, 0.0],  # predicts 0
    [0.0, 2.0],  # predicts 1
])
TARGET = np.array([0, 0, IGNORE_INDEX, 1])
TRUTH = ["no", "no", "maybe", "yes"]


def test_category_metrics_known_numbers():
    metrics = category_metrics(LOGITS, torch.from_numpy(TARGET), TRUTH, k=1)
    known = torch.tensor([0, 1, 3])
    loss = torch.nn.functional.cross_entropy(LOGITS[known], torch.from_numpy(TARGET)[known])
    assert metrics == {
        "accuracy": 0.5,  # rows 0 and 3 right; row 2 (unknown label) counts as wrong
        "top_k_accuracy": 0.5,  # k = 1: the same as accuracy
        "loss": round(loss.item(), 6),
        "majority_baseline": 0.5,
    }


def test_category_metrics_without_known_labels_has_nan_loss():
    target = torch.full((2,), IGNORE_INDEX)
    metrics = category_metrics(LOGITS[:2], target, ["x", "y"])
    assert math.isnan(metrics["loss"]) and metrics["accuracy"] == 0.0


def test_evaluate_outputs_without_groups():
    result = evaluate_outputs({"answer": category_scorer(LOGITS, TARGET, TRUTH)}, 4)
    assert set(result) == {"n", "outputs"}
    assert result["n"] == 4
    assert set(result["outputs"]) == {"answer"}
    assert result["outputs"]["answer"]["accuracy"] == 0.5


def test_evaluate_outputs_with_groups():
    groups = ["relational", "plain", "plain", "relational"]
    result = evaluate_outputs({"answer": category_scorer(LOGITS, TARGET, TRUTH)}, 4,
                              groups=groups)

    assert result["n"] == 4
    assert list(result["groups"]) == ["plain", "relational"]
    plain, relational = result["groups"]["plain"], result["groups"]["relational"]
    assert plain["n"] == 2 and relational["n"] == 2
    # plain = rows 1, 2: both wrong; relational = rows 0, 3: both right
    assert plain["outputs"]["answer"]["accuracy"] == 0.0
    assert relational["outputs"]["answer"]["accuracy"] == 1.0
    assert plain["outputs"]["answer"]["majority_baseline"] == 0.5
    assert relational["outputs"]["answer"]["majority_baseline"] == 0.5
    assert set(relational["outputs"]["answer"]) == {"accuracy", "top_k_accuracy", "loss",
                                                  "majority_baseline"}


def test_evaluate_outputs_with_two_outputs():
    logits = {"a": LOGITS, "b": LOGITS.flip(-1)}
    targets = {"a": np.array([0, 1, 0, 1]), "b": np.array([0, 1, 0, 1])}
    result = evaluate_outputs({n: category_scorer(logits[n], targets[n], TRUTH)
                               for n in logits}, 4)
    assert result["outputs"]["a"]["accuracy"] == 1.0
    assert result["outputs"]["b"]["accuracy"] == 0.0
