"""One section per output: its output type's own (``OutputType.report_section``: the
confusion matrix and reliability of a category output, the BLEU and examples of a text
output), else :func:`metrics_section`, the type's ``report_metrics`` beside its baseline's.
"""

from __future__ import annotations

from ..outputs import output_type
from .collect import ReportData
from .html import Section, paragraph, table


def output_section(report: ReportData, name: str) -> Section:
    """The section of output ``name``."""
    kind = output_type(report.outcomes[name].type)
    return kind.report_section(report, name) or metrics_section(report, name)


def metrics_section(report: ReportData, name: str) -> Section:
    """An output's metrics beside its baseline's (the training mean, the majority label, the
    most frequent label set), overall and per group."""
    kind = report.outcomes[name].type
    keys = output_type(kind).report_metrics
    evaluation = report.evaluation
    metrics = evaluation["outputs"][name]
    rows = [("all", evaluation["n"], *(metrics[k] for k in keys))]
    if "baseline" in metrics:
        rows.append(("baseline", evaluation["n"], *(metrics["baseline"][k] for k in keys)))
    for group, values in (evaluation.get("groups") or {}).items():
        rows.append((group, values["n"], *(values["outputs"][name][k] for k in keys)))
    served = " (served by its classic predictor; the head it replaces: " + ", ".join(
        f"{k} {evaluation['heads'][name][k]:.4f}" for k in keys) + ")" \
        if name in evaluation.get("heads", {}) else ""
    parts = [paragraph(f"{evaluation['n']} rows{served}."),
             table([report.by or "rows", "n", *keys], rows)]
    return Section(f"output-{name}", f"Output {name} ({kind})", "\n".join(parts))
