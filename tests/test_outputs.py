"""Number, binary and set outputs, and the category output's class weights, top-k and
calibration: targets parsed from tables, losses, postprocessing and metrics (checked against
scikit-learn's)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfuse.config import load_config
from mmfuse.data.table import Table
from mmfuse.errors import ConfigError, DataError
from mmfuse.outputs import build_output_preprocessor
from mmfuse.outputs.binary import best_f1_threshold, binary_metrics
from mmfuse.outputs.category import category_metrics
from mmfuse.outputs.number import number_metrics
from mmfuse.outputs.set import set_metrics
from mmfuse.registry import HEADS

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def output(kind: str, **options) -> object:
    return load_config({"inputs": [{"name": "x", "type": "number"}],
                        "outputs": [{"name": "y", "type": kind, **options}]}).outputs[0]


def table(values: list) -> Table:
    return Table([{"y": v} for v in values], Path.cwd(), "t.csv")


def fitted(kind: str, values: list, **options):
    """(target preprocessor, head of width 4) fitted on ``values``."""
    spec = output(kind, **options)
    prep = build_output_preprocessor(spec)
    prep.fit(table(values))
    return prep, HEADS.build(spec.head, 4, prep.target_spec())


# --- number


def test_number_targets_are_normalised_and_predictions_come_back_in_units():
    prep, head = fitted("number", ["10", 20, "", "30"], clip=[0, 25])
    targets = prep.targets(table(["10", 20, "", "30"]))
    assert prep.mean == 20 and prep.std == pytest.approx(np.std([10, 20, 30]))
    np.testing.assert_allclose(targets[[0, 1, 3]], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    assert math.isnan(targets[2])
    rows = head.postprocess(torch.tensor([-1.2247449, 0.0, 1.2247449]))
    assert [r["prediction"] for r in rows] == pytest.approx([10.0, 20.0, 25.0])  # clipped


@pytest.mark.parametrize("loss, reference", [
    ("mse", F.mse_loss), ("mae", F.l1_loss), ("huber", F.huber_loss)])
def test_number_losses_skip_rows_without_a_target(loss, reference):
    _, head = fitted("number", [1, 2, 3], loss=loss)
    predicted, target = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([1.0, float("nan"), 1.5])
    expected = reference(predicted[[0, 2]], target[[0, 2]])
    torch.testing.assert_close(head.loss(predicted, target), expected)


def test_number_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth, predicted = rng.normal(5, 2, 50), rng.normal(5, 2, 50)
    truth[7] = np.nan
    m = number_metrics(predicted, truth, 0.1, baseline=4.0)
    known = ~np.isnan(truth)
    assert m["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(truth[known],
                                                                         predicted[known]), 1e-5)
    assert m["rmse"] == pytest.approx(math.sqrt(sklearn_metrics.mean_squared_error(
        truth[known], predicted[known])), 1e-5)
    assert m["r2"] == pytest.approx(sklearn_metrics.r2_score(truth[known], predicted[known]),
                                    abs=1e-5)
    assert m["baseline"]["mae"] == pytest.approx(np.abs(truth[known] - 4.0).mean(), 1e-5)


def test_a_bad_number_target_is_named_by_row():
    with pytest.raises(DataError, match="row 2: 'n/a'"):
        fitted("number", ["1", "n/a"])


def test_clip_must_be_ordered():
    with pytest.raises(ConfigError, match="clip: low 5.0 is above high 1.0"):
        output("number", clip=[5, 1])


# --- binary


@pytest.mark.parametrize("values, labels", [
    (["yes", "no", "Yes"], ["no", "yes"]), (["1", "0"], ["0", "1"]),
    ([True, False, True], ["false", "true"]), (["TRUE", "false"], ["false", "TRUE"])])
def test_binary_labels_and_the_default_positive(values, labels):
    prep, head = fitted("binary", values)
    assert prep.labels == labels
    assert prep.targets(table(values)).tolist() == [
        1.0 if str(v).lower() in ("yes", "1", "true") else 0.0 for v in values]


def test_binary_json_booleans_are_predicted_as_booleans():
    _, head = fitted("binary", [True, False])
    rows = head.postprocess(torch.tensor([2.0, -2.0]))
    assert rows[0]["prediction"] is True and rows[1]["prediction"] is False
    assert rows[0]["probability"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), 1e-5)
    assert set(rows[0]["probabilities"]) == {"true", "false"}


def test_binary_other_labels_need_positive():
    with pytest.raises(DataError, match="name the positive one with positive"):
        fitted("binary", ["spam", "ham"])
    prep, head = fitted("binary", ["spam", "ham", "spam"], positive="spam")
    assert prep.labels == ["ham", "spam"]
    assert head.postprocess(torch.tensor([3.0]))[0]["prediction"] == "spam"
    with pytest.raises(DataError, match=r"row 2: 'eggs'.*not 'spam' or 'ham'"):
        prep.targets(table(["spam", "eggs"]))


def test_binary_with_three_labels_suggests_category():
    with pytest.raises(DataError, match="use type: category"):
        fitted("binary", ["a", "b", "c"], positive="a")


def test_binary_loss_is_weighted_cross_entropy_on_logits():
    _, head = fitted("binary", ["yes", "no"], positive_class_weight=3.0)
    logits, target = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, float("nan")])
    expected = F.binary_cross_entropy_with_logits(logits[:2], target[:2],
                                                  pos_weight=torch.tensor(3.0))
    torch.testing.assert_close(head.loss(logits, target), expected)


def test_threshold_auto_maximises_f1_on_validation():

    rng = np.random.default_rng(1)
    truth = rng.random(200) < 0.2
    scores = np.clip(truth * 0.3 + rng.random(200) * 0.7, 0, 1)
    threshold = best_f1_threshold(scores, truth.astype(float))
    f1 = sklearn_metrics.f1_score(truth, scores >= threshold)
    best = max(sklearn_metrics.f1_score(truth, scores >= t) for t in np.unique(scores))
    assert f1 == pytest.approx(best)
    _, head = fitted("binary", ["yes", "no"], threshold="auto")
    fitted_values = head.calibrate(torch.logit(torch.tensor(scores)), torch.tensor(truth * 1.0))
    assert fitted_values["threshold"] == pytest.approx(threshold)
    assert head.describe()["threshold"] == pytest.approx(threshold, abs=1e-6)


def test_binary_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    truth = (rng.random(80) < 0.3).astype(float)
    probability = np.clip(truth * 0.4 + rng.random(80) * 0.6, 0, 1)
    probability[:10] = 0.5  # ties
    m = binary_metrics(probability, truth, 0.5, 0.2, majority=0.0)
    predicted = probability >= 0.5
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted), 1e-5)
    assert m["precision"] == pytest.approx(sklearn_metrics.precision_score(truth, predicted),
                                           1e-5)
    assert m["recall"] == pytest.approx(sklearn_metrics.recall_score(truth, predicted), 1e-5)
    assert m["f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted), 1e-5)
    assert m["roc_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(truth, probability), 1e-5)
    assert m["pr_auc"] == pytest.approx(
        sklearn_metrics.average_precision_score(truth, probability), 1e-5)
    assert m["baseline"]["accuracy"] == pytest.approx(1 - truth.mean(), 1e-5)
    assert m["baseline"]["roc_auc"] == 0.5


# --- set


def test_set_cells_split_on_the_separator_and_json_lists():
    prep, head = fitted("set", ["b a", "", ["c", "a"], "a  b"])
    assert prep.labels == ["a", "b", "c"] and prep.top_set == ["a", "b"]
    np.testing.assert_array_equal(prep.targets(table(["b a", None, ["c"], "z"])),
                                  [[1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])
    prep, _ = fitted("set", ["x|y z", "y z"], separator="|")
    assert prep.labels == ["x", "y z"]


def test_set_postprocess_and_loss():
    _, head = fitted("set", ["a b", "c"], threshold=0.6)
    row = head.postprocess(torch.tensor([[2.0, 0.1, -3.0]]))[0]
    assert row["prediction"] == ["a"] and list(row["probabilities"])[0] == "a"
    logits, target = torch.randn(3, 3), torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])
    torch.testing.assert_close(head.loss(logits, target),
                               F.binary_cross_entropy_with_logits(logits, target))


def test_set_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.random((60, 4)) < 0.3
    probability = np.clip(truth * 0.4 + rng.random((60, 4)) * 0.6, 0, 1)
    m = set_metrics(probability, truth, 0.5, 0.3, np.array([1, 0, 0, 0]))
    predicted = probability >= 0.5
    assert m["jaccard"] == pytest.approx(sklearn_metrics.jaccard_score(
        truth, predicted, average="samples", zero_division=1.0), 1e-5)
    assert m["f1_micro"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted,
                                                                   average="micro"), 1e-5)
    assert m["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(
        truth, predicted, average="macro", zero_division=1.0), 1e-5)
    baseline = np.broadcast_to(np.array([True, False, False, False]), truth.shape)
    assert m["baseline"]["jaccard"] == pytest.approx(sklearn_metrics.jaccard_score(
        truth, baseline, average="samples", zero_division=1.0), 1e-5)


# --- category


def test_balanced_class_weights():
    prep, head = fitted("category", ["a", "a", "a", "b"], class_weights="balanced")
    logits, target = torch.randn(4, 2), torch.tensor([0, 0, 0, 1])
    weight = torch.tensor([4 / (2 * 3), 4 / (2 * 1)])
    torch.testing.assert_close(head.loss(logits, target),
                               F.cross_entropy(logits, target, weight=weight))


def test_top_k_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    m = category_metrics(logits, torch.tensor([1, 0]), ["b", "a"], k=2)
    assert m["accuracy"] == 0.0 and m["top_k_accuracy"] == 0.5


def test_calibration_lowers_the_validation_loss_and_keeps_the_argmax():
    _, head = fitted("category", ["a", "b", "c"], calibrate=True)
    rng = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (300,), generator=rng)
    logits = 8 * torch.randn(300, 3, generator=rng)  # overconfident, often wrong
    logits[torch.arange(300), target] += 4
    before = F.cross_entropy(logits, target)
    temperature = head.calibrate(logits, target)["temperature"]
    assert temperature > 1.5
    after = F.cross_entropy(logits / temperature, target)
    assert after < before
    assert head.temperature == temperature
    scaled = head(torch.zeros(1, 4))
    torch.testing.assert_close(scaled, head.net(torch.zeros(1, 4)) / temperature)


def test_report_top_limits_the_probabilities():
    _, head = fitted("category", list("abcde"), report_top=2)
    assert len(head.postprocess(torch.randn(1, 5))[0]["probabilities"]) == 2


# --- config


def test_head_options_may_sit_beside_the_output_or_under_head():
    beside, under = output("number", loss="huber"), output("number", head={"loss": "huber"})
    assert beside.head == under.head and beside.head["loss"] == "huber"
    with pytest.raises(ConfigError, match="given both beside the output and under head"):
        output("number", loss="mae", head={"loss": "mse"})
    with pytest.raises(ConfigError, match="losss.*did you mean"):
        output("number", losss="mae")


def test_several_outputs_train_together_with_their_loss_weights():
    from mmfuse.training.loop import batch_loss

    class Heads:
        heads = {"a": type("H", (), {"loss": lambda self, o, t, s: o.sum()})(),
                 "b": type("H", (), {"loss": lambda self, o, t, s: 2 * o.sum()})()}

    class P:
        config = load_config({"inputs": [{"name": "x", "type": "number"}],
                              "outputs": [{"name": "a", "type": "number", "loss_weight": 0.5},
                                          {"name": "b", "type": "binary", "loss_weight": 2}]})
        model = Heads()

    loss = batch_loss(P(), {"a": torch.tensor([1.0]), "b": torch.tensor([1.0])},
                      {"a": None, "b": None}, 0.0)
    assert float(loss) == pytest.approx(0.5 * 1 + 2 * 2)
