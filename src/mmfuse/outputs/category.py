"""``category``: one label per row out of those seen in the training split (softmax head,
``heads/category.py``).

- Targets: the label set is learned from the training split, sorted; a label never seen in
  training is :data:`IGNORE_INDEX` (left out of the loss, counted wrong in accuracy).
- Metrics: accuracy, top-k accuracy, cross-entropy, and the majority-answer baseline (the
  accuracy of always giving the most frequent label).
- Predictors: logistic regression, random forest, gradient boosting; their probabilities
  become log-probabilities over every label.
- Report: confusion matrix, precision and recall per class, a reliability diagram with the
  expected calibration error (ECE, Guo et al. 2017: ``sum_b n_b / N * |accuracy_b -
  confidence_b|`` over 10 equal-width bins), and the label distribution.
- Explain: the logit of the predicted class.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.table import Table
from ..errors import DataError
from ..modalities.base import Column, Preprocessor
from ..modalities.tabular import label_text
from ..registry import OUTPUTS
from ..report import plots
from ..report.html import Section, figure, paragraph, table
from ..specs import TargetSpec
from .kind import NoOptions, OutputType, Score, missing

if TYPE_CHECKING:
    from ..report.collect import Outcomes, ReportData

IGNORE_INDEX = -100  # the target of a row whose label was not seen in training
MAX_CLASSES = 20  # classes shown in the report's confusion matrix and per-class table
BINS = 10  # confidence bins of the reliability diagram
TOP_LABELS = 20  # labels listed in the report's data statistics


class CategoryPreprocessor(Preprocessor):
    """Label strings <-> class indices; labels unseen in training map to IGNORE_INDEX."""

    def __init__(self, config: Any) -> None:
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


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows predicted right; rows with an unknown label count as wrong."""
    if len(target) == 0:
        return float("nan")
    return (predicted == target).float().mean().item()


def majority_baseline(labels: list[str]) -> float:
    """Accuracy of always answering the most frequent of ``labels`` (0 for no labels)."""
    if not labels:
        return 0.0
    return Counter(labels).most_common(1)[0][1] / len(labels)


def category_metrics(logits: torch.Tensor, target: torch.Tensor, truth: list[str],
                     k: int = 3) -> dict:
    """Accuracy, top-k accuracy, mean cross-entropy and the majority-answer baseline of one
    output.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` class indices (``IGNORE_INDEX`` for labels unseen in training).
        truth: the true label text of every labelled row (for the baseline, unseen labels
            included).
        k: of ``top_k_accuracy``.
    """
    known = target != IGNORE_INDEX
    loss = F.cross_entropy(logits[known], target[known]).item() if known.any() else float("nan")
    if len(logits):
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        top_k = (top == target.unsqueeze(-1)).any(-1).float().mean().item()
    else:
        top_k = float("nan")
    return {
        "accuracy": round(accuracy(logits.argmax(-1), target), 6),
        "top_k_accuracy": round(top_k, 6),
        "loss": round(loss, 6),
        "majority_baseline": round(majority_baseline(truth), 6),
    }


def category_scorer(logits: torch.Tensor, target: np.ndarray, truth: list[str | None],
                    k: int = 3) -> Score:
    """The metrics of a category output on any subset of rows (``truth``: each row's label
    text, None where the row has none)."""
    target_t = torch.from_numpy(target)
    return lambda rows: category_metrics(logits[rows], target_t[rows],
                                         [truth[i] for i in rows if truth[i] is not None], k)


@OUTPUTS.register("category", NoOptions)
class CategoryOutput(OutputType):
    """A label out of those seen in training (softmax)."""

    preprocessor = CategoryPreprocessor
    main_metric = "accuracy"
    causal_lm_head = "causal_lm_category"
    report_metrics = ("accuracy", "top_k_accuracy", "majority_baseline")
    predictors = ("logistic", "random_forest", "gradient_boosting")

    def scorer(self, head, raw: torch.Tensor, target: np.ndarray, column: list,
               prep: Preprocessor) -> Score:
        truth = [label_text(v) if v is not None else None for v in column]
        return category_scorer(raw, target, truth, head.options.top_k)

    def predictor_targets(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(targets >= 0)  # labels unseen in training are left out
        return rows, targets[rows].astype(np.int64)

    def predictor_answer(self, answer: np.ndarray, classes: np.ndarray | None,
                         labels: int) -> np.ndarray:
        """Log-probabilities over all ``labels`` (those absent from training get ~0)."""
        eps = 1e-7
        full = np.full((len(answer), labels), eps)
        full[:, classes] = np.maximum(np.asarray(answer, dtype=np.float64), eps)
        return np.log(full).astype(np.float32)

    def explain_score(self, predicted: torch.Tensor) -> tuple:
        cls = int(predicted.argmax(-1)[0])
        return (lambda out: out[:, cls]), None

    def report_section(self, report: ReportData, name: str) -> Section:
        """Accuracy, confusion matrix, per-class precision and recall, reliability."""
        o = report.outcomes[name]
        metrics = report.evaluation["outputs"][name]
        parts = [paragraph(f"{report.evaluation['n']} rows: accuracy "
                           f"{metrics['accuracy']:.4f}, majority-answer baseline "
                           f"{metrics['majority_baseline']:.4f}, cross-entropy "
                           f"{metrics['loss']:.4f}.")]
        truth = [t for t, k in zip(o.truth, o.known, strict=True) if k]
        predicted = [p for p, k in zip(o.predicted, o.known, strict=True) if k]
        if not truth:
            parts.append(paragraph("No row has a true label: nothing to compare.", note=True))
        else:
            classes = shown_classes(truth, predicted)
            parts += confusion_part(truth, predicted, classes)
            parts += per_class_part(truth, predicted, classes)
            parts += reliability_part(o)
        return Section(f"output-{name}", f"Output {name} (category)", "\n".join(parts))

    def report_stats(self, report: ReportData, name: str) -> list[str]:
        """The most frequent labels, here and in the training split."""
        o = report.outcomes[name]
        counts = Counter(t for t in o.truth if t is not None)
        trained = report.model.pipeline.outputs[name].state().get("counts", {})
        total, total_trained = max(1, sum(counts.values())), max(1, sum(trained.values()))
        top = counts.most_common(TOP_LABELS)
        rows = [(label, c, c / total, trained.get(label, 0) / total_trained) for label, c in top]
        note = (f"The {len(top)} most frequent of {len(counts)} labels. "
                if len(counts) > len(top) else f"{len(counts)} labels. ")
        note += f"{int((~o.known).sum())} row(s) have no label."
        return [paragraph(note, note=True),
                table(["label", "rows", "share", "share in training"], rows),
                figure(plots.bars([r[0] for r in rows], {"rows": [r[1] for r in rows]}, "rows"),
                       f"label distribution of {name}")]


def shown_classes(truth: list[str], predicted: list[str]) -> list[str]:
    """At most MAX_CLASSES classes, the most frequent true labels first (then predicted)."""
    true_counts, predicted_counts = Counter(truth), Counter(predicted)
    everything = set(true_counts) | set(predicted_counts)
    ranked = sorted(everything, key=lambda c: (-true_counts[c], -predicted_counts[c], c))
    return ranked[:MAX_CLASSES]


def confusion_part(truth: list[str], predicted: list[str], classes: list[str]) -> list[str]:
    """The confusion matrix of ``classes``, and what was left out of it."""
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    outside = 0
    for t, p in zip(truth, predicted, strict=True):
        if t in position and p in position:
            matrix[position[t], position[p]] += 1
        else:
            outside += 1
    total = len(set(truth) | set(predicted))
    note = (f"Showing the {len(classes)} most frequent of {total} classes; {outside} row(s) "
            "whose true or predicted class is not among them are left out."
            if len(classes) < total else f"All {total} classes.")
    return ["<h3>Confusion matrix</h3>", paragraph(note, note=True),
            figure(plots.confusion(matrix, classes), "confusion matrix")]


def per_class_part(truth: list[str], predicted: list[str], classes: list[str]) -> list[str]:
    """Precision and recall of each shown class: a table and a bar chart."""
    t, p = np.array(truth, dtype=object), np.array(predicted, dtype=object)
    rows, precision, recall = [], [], []
    for c in classes:
        hits = int(((t == c) & (p == c)).sum())
        said, support = int((p == c).sum()), int((t == c).sum())
        precision.append(hits / said if said else float("nan"))
        recall.append(hits / support if support else float("nan"))
        rows.append((c, support, said, precision[-1], recall[-1]))
    return ["<h3>Precision and recall per class</h3>",
            table(["class", "true rows", "predicted rows", "precision", "recall"], rows),
            figure(plots.bars(classes, {"precision": precision, "recall": recall}, "share"),
                   "precision and recall per class")]


def calibration(confidence: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per confidence bin: mean confidence, accuracy and row count; the bin edges; and the
    expected calibration error."""
    edges = np.linspace(0.0, 1.0, BINS + 1)
    index = np.clip((confidence * BINS).astype(int), 0, BINS - 1)
    counts = np.bincount(index, minlength=BINS)
    safe = np.maximum(counts, 1)
    mean_conf = np.bincount(index, weights=confidence, minlength=BINS) / safe
    right_share = np.bincount(index, weights=right.astype(float), minlength=BINS) / safe
    ece = float(np.sum(counts / max(1, len(confidence)) * np.abs(right_share - mean_conf)))
    return mean_conf, right_share, counts, edges, ece


def reliability_part(o: Outcomes) -> list[str]:
    """The reliability diagram of the rows with a true label, with the ECE stated."""
    known = o.known
    conf, acc, counts, edges, ece = calibration(o.confidence[known], o.right[known])
    text = (f"Expected calibration error (ECE) over {BINS} confidence bins: {ece:.4f} "
            f"(0 is perfectly calibrated; the mean top probability is "
            f"{o.confidence[known].mean():.4f} against an accuracy of "
            f"{o.right[known].mean():.4f}).")
    return ["<h3>Reliability</h3>", paragraph(text),
            figure(plots.reliability(conf, acc, counts, edges, ece), "reliability diagram")]
