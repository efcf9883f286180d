"""Tests for output heads (mmfuse.heads)."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.heads.category import CategoryHead, CategoryOptions
from mmfuse.outputs.category import IGNORE_INDEX
from mmfuse.registry import HEADS
from mmfuse.specs import TargetSpec

LABELS = ["blue", "green", "red", "yellow"]
LOGITS = torch.tensor([
    [2.0, 0.5, -1.0, 0.0],
    [0.0, 0.0, 3.0, 1.0],
    [-2.0, 4.0, 0.0, 1.0],
])


def head(in_dim: int = 5, labels: list[str] = LABELS, **options) -> CategoryHead:
    return CategoryHead(CategoryOptions.model_validate(options), in_dim,
                        TargetSpec(labels=labels))


def test_category_head_is_registered():
    entry = HEADS.get("category")
    assert entry.builder is CategoryHead and entry.options is CategoryOptions


@pytest.mark.parametrize("hidden", [[], [7, 6]])
def test_forward_gives_one_logit_per_label(hidden):
    out = head(hidden=hidden)(torch.randn(3, 5))
    assert out.shape == (3, len(LABELS))


def test_loss_is_mean_negative_log_softmax_of_the_target():
    target = torch.tensor([0, 2, 3])
    log_probs = LOGITS.log_softmax(-1)
    expected = -(log_probs[0, 0] + log_probs[1, 2] + log_probs[2, 3]) / 3
    torch.testing.assert_close(head().loss(LOGITS, target), expected)


def test_loss_known_number():
    # Two equal logits: -log(1/2) = log 2 whichever label is right.
    loss = head(labels=["no", "yes"]).loss(torch.zeros(2, 2), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(2))


def test_rows_with_unknown_label_are_left_out_of_the_loss():
    target = torch.tensor([IGNORE_INDEX, 2, IGNORE_INDEX])
    expected = -LOGITS.log_softmax(-1)[1, 2]
    torch.testing.assert_close(head().loss(LOGITS, target), expected)
    assert IGNORE_INDEX == -100


def test_label_smoothing_changes_the_loss():
    target = torch.tensor([0, 2, 3])
    plain = head().loss(LOGITS, target)
    smoothed = head().loss(LOGITS, target, label_smoothing=0.1)
    log_probs = LOGITS.log_softmax(-1)
    picked = log_probs[torch.arange(3), target]
    expected = -(0.9 * picked + 0.1 * log_probs.mean(-1)).mean()
    torch.testing.assert_close(smoothed, expected)
    assert not torch.isclose(plain, smoothed)


def test_loss_gradient_flows_to_logits():
    logits = LOGITS.clone().requires_grad_()
    head().loss(logits, torch.tensor([0, IGNORE_INDEX, 1])).backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0
    assert logits.grad[1].abs().sum() == 0


@pytest.mark.parametrize("report_top", [1, 2, 4, 10])
def test_postprocess_report_top_sorted_probabilities(report_top):
    rows = head(report_top=report_top).postprocess(LOGITS)

    assert len(rows) == 3
    probs = LOGITS.softmax(-1)
    for i, row in enumerate(rows):
        assert set(row) == {"prediction", "probabilities"}
        assert row["prediction"] == LABELS[int(LOGITS[i].argmax())]
        values = list(row["probabilities"].values())
        assert len(values) == min(report_top, len(LABELS))
        assert values == sorted(values, reverse=True)
        assert sum(values) <= 1.0 + 1e-6
        assert next(iter(row["probabilities"])) == row["prediction"]
        for label, p in row["probabilities"].items():
            assert p == pytest.approx(probs[i, LABELS.index(label)].item(), abs=1e-6)


def test_postprocess_all_labels_sum_to_one():
    rows = head(report_top=10).postprocess(LOGITS)
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_postprocess_known_numbers():
    rows = head(labels=["no", "yes"]).postprocess(torch.tensor([[0.0, math.log(3.0)]]))
    assert rows == [{"prediction": "yes", "probabilities": {"yes": 0.75, "no": 0.25}}]


def test_postprocess_accepts_half_precision():
    rows = head().postprocess(LOGITS.half())
    assert [r["prediction"] for r in rows] == ["blue", "red", "green"]
