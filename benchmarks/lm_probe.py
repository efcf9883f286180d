"""How much of the image + question answers the frozen image features hold (issue 25).

The causal LM benchmark (``lm.py``) reads the ``image_qa`` probe's pictures through the
frozen ImageNet ``efficientnet_lite0`` (the default image encoder of a ``causal_lm`` model).
At 48 training rows the LM's answers read the picture poorly. This script asks whether the
features are the limit: for each question type it fits a logistic regression on the same
training rows' features and scores it on the same test rows (the same seed and tables as
``lm.py``), from

- **pooled**: the mean of the last feature map (1,280 channels), and
- **grid**: every cell of the 7 x 7 grid of tokens, flattened (each cell's weights its own).

A probe that reads an answer well from 43 rows says the features hold it linearly; the LM
then has to learn the same reading through its projector and its attention.

Writes ``benchmarks/results/lm_probe.md``. Run: ``python benchmarks/lm_probe.py
[--rows 48,144,480]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, command, machine, markdown_table
from lm import read_rows

from mmfuse.config import Config
from mmfuse.data.table import read_table
from mmfuse.datasets.probes import generate_probe
from mmfuse.pipeline import Pipeline

QTYPES = ("colour", "horizontal", "vertical")


def features(pipeline: Pipeline, path: Path, fit: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pooled vectors ``[R, 1280]`` and flattened token grids ``[R, 49 * D]`` of a table's
    pictures."""
    table = read_table(path)
    data = pipeline.fit(table) if fit else pipeline.encode(table)
    pipeline.model.eval()  # the frozen backbone's batch norms use their running statistics
    inputs, _ = pipeline.batch(data, np.arange(len(data)))
    with torch.no_grad():
        found = pipeline.model.features(inputs)["image"]
    return found.pooled.float().numpy(), found.tokens.float().flatten(1).numpy()


def probe(train: tuple, test: tuple, train_rows: list[dict], test_rows: list[dict]) -> dict:
    """Accuracy of a logistic regression per question type and feature kind."""
    from sklearn.linear_model import LogisticRegression

    scores = {}
    for qtype in QTYPES:
        fit = [i for i, r in enumerate(train_rows) if r["qtype"] == qtype]
        held = [i for i, r in enumerate(test_rows) if r["qtype"] == qtype]
        for k, kind in enumerate(("pooled", "grid")):
            model = LogisticRegression(max_iter=2000).fit(
                train[k][fit], [train_rows[i]["answer"] for i in fit])
            scores[f"{qtype}_{kind}"] = round(float(model.score(
                test[k][held], [test_rows[i]["answer"] for i in held])), 3)
        scores[f"{qtype}_rows"] = len(fit)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rows", default="48,144,480", help="training rows probed")
    args = parser.parse_args()
    config = Config.model_validate({
        "inputs": [{"name": "image", "type": "image",
                    "encoder": {"type": "efficientnet_lite0"}}],
        "outputs": [{"name": "answer", "type": "category"}]})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_probe("image_qa", root, args.train, args.test, args.seed)
        train_rows, test_rows = read_rows(root / "train.csv"), read_rows(root / "test.csv")
        pipeline = Pipeline.from_config(config)
        every = features(pipeline, root / "train.csv", fit=True)
        held = features(pipeline, root / "test.csv", fit=False)
        for rows in (int(r) for r in args.rows.split(",")):
            subset = tuple(f[:rows] for f in every)
            row = {"rows": rows, **probe(subset, held, train_rows[:rows], test_rows)}
            print(row, flush=True)
            results.append(row)
    table = markdown_table(
        ["training rows"] + [f"{q}: pooled / grid (rows)" for q in QTYPES],
        [[r["rows"]] + [f"{r[f'{q}_pooled']:.3f} / {r[f'{q}_grid']:.3f} ({r[f'{q}_rows']})"
                        for q in QTYPES] for r in results])
    text = (f"# What the frozen image features hold (issue 25)\n\n{__doc__.split(chr(10), 2)[2]}"
            f"\nAccuracy of each probe on the {len(test_rows)} test rows' questions of its type "
            f"(seed {args.seed}):\n\n{table}\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    (RESULTS / "lm_probe.md").write_text(text)


if __name__ == "__main__":
    main()
