"""The sections every run gets: learning curves, config, data statistics, timing, per-group
metrics (with ``--by``) and modality importance.

Each function takes the :class:`ReportData` and returns one :class:`Section`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from ..explain.importance import modality_importance
from ..modalities.base import MISSING
from ..outputs import output_type
from . import plots
from .collect import ReportData
from .html import Section, esc, figure, paragraph, table


def read_metrics(run_dir: Path) -> tuple[list[dict], list[str]]:
    """The per-epoch records of ``metrics.jsonl`` and a note for each line that is not JSON
    (a run killed mid-write leaves a cut last line)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return [], [f"{path} not found: the run kept no per-epoch metrics."]
    records, notes = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            notes.append(f"line {number} of {path.name} is not valid JSON and is left out.")
    return records, notes


def read_run_info(run_dir: Path) -> dict:
    """``run.json`` (training table, threads, ...), or an empty dict for a bare bundle."""
    path = run_dir / "run.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def curves_section(report: ReportData) -> Section:
    """Loss and metric per epoch, train and validation."""
    records, notes = read_metrics(report.run_dir)
    parts = [paragraph(n, note=True) for n in notes]
    if records:
        names = {k.split("_", 1)[1] for r in records for k in r
                 if k.startswith(("train_", "valid_"))}
        metrics = sorted(names, key=lambda m: (m != "loss", m))
        parts.append(figure(plots.learning_curves(records, metrics), "learning curves"))
        parts.append(paragraph("The metric is accuracy averaged over the outputs (token "
                               "accuracy for a text output), as the training loop logs it.",
                               note=True))
        with_valid = [r for r in records if "valid_loss" in r]
        if with_valid:
            best = min(with_valid, key=lambda r: r["valid_loss"])
            parts.append(paragraph(f"Lowest validation loss {best['valid_loss']:.4f} at epoch "
                                   f"{best['epoch']} of {len(records)} (the saved model)."))
    return Section("curves", "Learning curves", "\n".join(parts))


def config_section(report: ReportData) -> Section:
    """The bundle's fully resolved config, as YAML."""
    text = yaml.safe_dump(report.model.config.model_dump(mode="json"), sort_keys=False,
                          allow_unicode=True)
    return Section("config", "Config", paragraph("The bundle's resolved config (every "
                                                 "default filled in):", note=True)
                   + f"\n<pre>{esc(text)}</pre>")


def data_section(report: ReportData) -> Section:
    """Rows; per input its type, column, missing share and distinct items; per output its
    label distribution or text lengths."""
    n = len(report.table)
    inputs = []
    for spec in report.model.config.inputs:
        index = report.encoded.inputs[spec.name].index
        present = index[index != MISSING]
        inputs.append((spec.name, spec.type, spec.column, float(1 - len(present) / max(1, n)),
                       len(np.unique(present))))
    parts = [paragraph(f"{n} rows from {report.table.source}."),
             "<h3>Inputs</h3>",
             table(["input", "type", "column", "missing share", "distinct items"], inputs)]
    for spec in report.model.config.outputs:
        stats = output_type(spec.type).report_stats(report, spec.name)
        if stats:
            parts.append(f"<h3>{esc(spec.name)} ({esc(spec.type)} output)</h3>")
            parts += stats
    return Section("data", "Data statistics", "\n".join(parts))


def timing_section(report: ReportData) -> Section:
    """Epochs, seconds, seconds per epoch, examples per second and threads of the training."""
    records, _ = read_metrics(report.run_dir)
    info = read_run_info(report.run_dir)
    if not records:
        return Section("timing", "Timing", paragraph("No per-epoch metrics were kept.",
                                                     note=True))
    epoch_seconds = [r["epoch_seconds"] for r in records if "epoch_seconds" in r]
    speeds = [r["examples_per_second"] for r in records if "examples_per_second" in r]
    rows = [("epochs", len(records)),
            ("total seconds (train + validate)", float(sum(epoch_seconds))),
            ("seconds per epoch", float(np.mean(epoch_seconds)) if epoch_seconds else None),
            ("training examples per second", float(np.mean(speeds)) if speeds else None),
            ("threads", info.get("threads"))]
    return Section("timing", "Timing", table(["", "value"], rows))


def groups_section(report: ReportData) -> Section:
    """Each output's metrics per value of the ``--by`` column (as ``evaluate --by``)."""
    parts = []
    for name, metrics in report.evaluation["outputs"].items():
        keys = list(metrics)
        rows = [("all", report.evaluation["n"], *(metrics[k] for k in keys))]
        rows += [(g, v["n"], *(v["outputs"][name][k] for k in keys))
                 for g, v in report.evaluation["groups"].items()]
        parts += [f"<h3>{esc(name)}</h3>",
                  table([report.by or "", "rows", *(k.replace("_", " ") for k in keys)], rows)]
    return Section("groups", f"Metrics by {report.by}", "\n".join(parts))


def importance_section(report: ReportData) -> Section:
    """Drop and permute importance of every input, per output: a table and a bar chart."""
    names = list(report.model.pipeline.inputs)
    if len(names) < 2:
        return Section("importance", "Modality importance", paragraph(
            f"The model has one input ({names[0]}): there is no other modality to compare it "
            "with.", note=True))
    result = modality_importance(report.model, report.encoded)
    parts = [paragraph("How much each output's metric falls when an input is removed from "
                       "every row (drop) or shuffled across rows (permute, mean of 3 "
                       "shuffles). Higher means the output leans more on that input; a "
                       "negative value means it did better without it.", note=True)]
    for output, per_input in result["importance"].items():
        metric, base = result["metric"][output], result["baseline"][output]
        rows = [(i, v["drop"], v["permute"]) for i, v in per_input.items()]
        parts += [f"<h3>{esc(output)}: {esc(metric)} {base:.4f} with every input</h3>",
                  table(["input", f"drop ({metric} lost)", f"permute ({metric} lost)"], rows),
                  figure(plots.bars(list(per_input), {"drop": [r[1] for r in rows],
                                                      "permute": [r[2] for r in rows]},
                                    f"{metric} lost"), f"modality importance for {output}")]
    return Section("importance", "Modality importance", "\n".join(parts))
