"""One section per output, by output type: :data:`OUTPUT_SECTIONS` maps a type to its function.

- ``category``: confusion matrix (the most frequent classes), per-class precision and recall,
  and a reliability diagram with the expected calibration error (ECE, Guo et al. 2017:
  ``sum_b n_b / N * |accuracy_b - confidence_b|`` over 10 equal-width confidence bins).
- ``text``: BLEU (and chrF, exact match) overall and per ``--by`` group, and examples of the
  reference beside the generated text.
- ``number``, ``binary``, ``set``: their metrics beside their baselines, overall and per
  ``--by`` group.

A new output type adds one function here, taking the :class:`ReportData` and the output's
name and returning its :class:`Section`, and one line in :data:`OUTPUT_SECTIONS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from . import plots
from .collect import Outcomes, ReportData
from .html import Section, figure, paragraph, table

MAX_CLASSES = 20  # classes shown in the confusion matrix and the per-class table
BINS = 10  # confidence bins of the reliability diagram
EXAMPLES = 12  # reference / generated pairs shown for a text output


def category_section(report: ReportData, name: str) -> Section:
    """Accuracy, confusion matrix, per-class precision and recall, reliability."""
    o = report.outcomes[name]
    metrics = report.evaluation["outputs"][name]
    parts = [paragraph(f"{report.evaluation['n']} rows: accuracy {metrics['accuracy']:.4f}, "
                       f"majority-answer baseline {metrics['majority_baseline']:.4f}, "
                       f"cross-entropy {metrics['loss']:.4f}.")]
    known = o.known
    truth = [t for t, k in zip(o.truth, known, strict=True) if k]
    predicted = [p for p, k in zip(o.predicted, known, strict=True) if k]
    if not truth:
        parts.append(paragraph("No row has a true label: nothing to compare.", note=True))
        return Section(f"output-{name}", f"Output {name} (category)", "\n".join(parts))
    classes = shown_classes(truth, predicted)
    parts += confusion_part(truth, predicted, classes)
    parts += per_class_part(truth, predicted, classes)
    parts += reliability_part(o)
    return Section(f"output-{name}", f"Output {name} (category)", "\n".join(parts))


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
    accuracy = np.bincount(index, weights=right.astype(float), minlength=BINS) / safe
    ece = float(np.sum(counts / max(1, len(confidence)) * np.abs(accuracy - mean_conf)))
    return mean_conf, accuracy, counts, edges, ece


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


def text_section(report: ReportData, name: str) -> Section:
    """BLEU overall and per group, and examples of reference and generated text."""
    metrics = report.evaluation["outputs"][name]
    header = ["group", "rows", "BLEU", "chrF", "exact match", "token accuracy"]
    overall = ("all", report.evaluation["n"], metrics["bleu"], metrics["chrf"],
               metrics["exact_match"], metrics["token_accuracy"])
    parts = []
    if report.by:
        groups = report.evaluation["groups"]
        rows = [(g, v["n"], *(v["outputs"][name][k] for k in
                              ("bleu", "chrf", "exact_match", "token_accuracy")))
                for g, v in groups.items()]
        parts += [paragraph(f"BLEU (sacrebleu, 0-100) by {report.by}; overall "
                            f"{metrics['bleu']:.2f}."),
                  table([report.by, *header[1:]], [overall, *rows]),
                  figure(plots.bars(list(groups), {"BLEU": [r[2] for r in rows]}, "BLEU",
                                    f"BLEU by {report.by}"), f"BLEU by {report.by}")]
    else:
        parts += [paragraph(f"Overall BLEU (sacrebleu, 0-100): {metrics['bleu']:.2f}. "
                            "Pass --by COLUMN for BLEU per group."),
                  table(header, [overall])]
    parts += ["<h3>Examples</h3>", examples_table(report, report.outcomes[name])]
    return Section(f"output-{name}", f"Output {name} (text)", "\n".join(parts))


def examples_table(report: ReportData, o: Outcomes) -> str:
    """Up to EXAMPLES rows spread over the table (and over the groups, with --by)."""
    rows = np.flatnonzero(o.known)
    if report.groups is not None:
        by_group: dict[str, list[int]] = {}
        for i in rows:
            by_group.setdefault(report.groups[i], []).append(int(i))
        per = max(1, EXAMPLES // max(1, len(by_group)))
        chosen = sorted(i for members in by_group.values() for i in members[:per])[:EXAMPLES]
    else:
        # evenly spread: a fixed step could keep hitting one kind of row (one prompt of two)
        spread = np.unique(np.linspace(0, len(rows) - 1, min(EXAMPLES, len(rows))).round())
        chosen = [int(rows[int(k)]) for k in spread] if len(rows) else []
    if not chosen:
        return paragraph("No row has a reference text.", note=True)
    group_cell = (lambda i: [report.groups[i]]) if report.groups is not None else (lambda i: [])
    header = ["row", *([report.by] if report.by else []), "reference", "generated", "score",
              "exact"]
    lines = [(i, *group_cell(i), o.truth[i], o.predicted[i], float(o.confidence[i]),
              "yes" if o.right[i] else "no") for i in chosen]
    return table(header, lines, caption=f"reference vs generated ({len(chosen)} rows)")


METRICS = {"number": ("r2", "mae", "rmse"), "binary": ("roc_auc", "pr_auc", "f1", "accuracy"),
           "set": ("jaccard", "f1_micro", "f1_macro")}


def metrics_section(report: ReportData, name: str) -> Section:
    """A number, binary or set output: its metrics beside its baseline's (the training mean,
    the majority label, the most frequent label set), overall and per group."""
    kind = report.outcomes[name].type
    keys = METRICS[kind]
    evaluation = report.evaluation
    metrics = evaluation["outputs"][name]
    rows = [("all", evaluation["n"], *(metrics[k] for k in keys)),
            ("baseline", evaluation["n"], *(metrics["baseline"][k] for k in keys))]
    for group, values in (evaluation.get("groups") or {}).items():
        rows.append((group, values["n"], *(values["outputs"][name][k] for k in keys)))
    served = " (served by its classic predictor; the head it replaces: " + ", ".join(
        f"{k} {evaluation['heads'][name][k]:.4f}" for k in keys) + ")" \
        if name in evaluation.get("heads", {}) else ""
    parts = [paragraph(f"{evaluation['n']} rows{served}."),
             table([report.by or "rows", "n", *keys], rows)]
    return Section(f"output-{name}", f"Output {name} ({kind})", "\n".join(parts))


OUTPUT_SECTIONS: dict[str, Callable[[ReportData, str], Section]] = {
    "category": category_section,
    "text": text_section,
    "number": metrics_section,
    "binary": metrics_section,
    "set": metrics_section,
}
