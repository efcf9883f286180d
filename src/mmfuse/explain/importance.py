"""Modality importance: how much an output's metric falls when one input is taken away.

Two ways of taking an input away, each measured on the same encoded table:

- ``drop``: the input is removed from every row (the ``evaluate --drop`` path), so the model
  sees it as missing: the fusion masks it out or uses its learned placeholder.
- ``permute``: the input's values are shuffled across rows, so the model still sees real
  values with their real distribution, only no longer matched to the row's other inputs and
  label (permutation importance, Breiman 2001).

Importance is ``metric(all inputs) - metric(input taken away)`` for the output's main metric
(higher is better): accuracy for a category output, BLEU for a text output, R² for a number,
ROC-AUC for a binary and Jaccard for a set output. Zero means the
output does not depend on the input; a negative value means the model did better without it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..outputs import output_type
from ..pipeline import EncodedTable

if TYPE_CHECKING:
    from ..api import Model

def main_metric(kind: str) -> str:
    """The metric that importance is measured in for an output of type ``kind`` (its output
    type's ``main_metric``)."""
    return output_type(kind).main_metric


def permuted(data: EncodedTable, name: str, rng: np.random.Generator) -> EncodedTable:
    """``data`` with input ``name``'s row-to-item mapping shuffled across rows (missing rows
    move with their emptiness, so the share of missing rows is unchanged)."""
    column = data.inputs[name]
    index = column.index[rng.permutation(len(column.index))]
    return EncodedTable(data.table, {**data.inputs, name: replace(column, index=index)},
                        data.targets)


def modality_importance(model: Model, encoded: EncodedTable, repeats: int = 3, seed: int = 0,
                        batch_size: int = 256) -> dict:
    """``{output: {input: {"drop": d, "permute": p}}}`` plus the full-input metric per output.

    Args:
        model: a trained model.
        encoded: the table, encoded with targets by ``model.pipeline.encode``.
        repeats: permutations averaged per input (each one a different shuffle).

    Returns:
        ``{"metric": {output: name}, "baseline": {output: value},
        "importance": {output: {input: {"drop": d, "permute": p}}}}``, values rounded to 6
        places.
    """
    metrics = {o.name: main_metric(o.type) for o in model.config.outputs}

    def score(data: EncodedTable) -> dict[str, float]:
        result = model.evaluate_encoded(data, batch_size=batch_size)["outputs"]
        return {name: float(result[name][metric]) for name, metric in metrics.items()}

    base = score(encoded)
    rng = np.random.default_rng(seed)
    importance: dict[str, dict] = {name: {} for name in metrics}
    for name in model.pipeline.inputs:
        dropped = score(model.pipeline.without(encoded, [name]))
        shuffled = [score(permuted(encoded, name, rng)) for _ in range(repeats)]
        for out in metrics:
            importance[out][name] = {
                "drop": round(base[out] - dropped[out], 6),
                "permute": round(base[out] - float(np.mean([s[out] for s in shuffled])), 6)}
    return {"metric": metrics, "baseline": {k: round(v, 6) for k, v in base.items()},
            "importance": importance}
