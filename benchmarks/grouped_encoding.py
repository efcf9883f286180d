"""How much encoding each shared file once per batch saves (issue: data, point 4).

Sort-of-CLEVR has 20 questions per image. Three ways to train the same model on the same rows:

* ``grouped``: rows of one image kept together in a batch, each image encoded once per batch
  (mmfuse's default when files repeat);
* ``shuffled``: rows shuffled freely, duplicates within a batch still encoded once;
* ``per-row``: every row encodes its own copy of the image (what a plain Dataset/DataLoader does).

Reports training examples per second for each, and the ratios, measured in one process.
Run: ``python benchmarks/grouped_encoding.py [--images 1000] [--batches 60]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.data.sampler import grouped_batches, shuffled_batches
from mmfuse.data.table import read_table
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
from mmfuse.modalities.base import Column
from mmfuse.pipeline import Pipeline
from mmfuse.threads import configure_threads
from mmfuse.training.loop import batch_loss, make_optimizer

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "sort_of_clevr.yaml"


def per_row_copy(column: Column) -> Column:
    """The same column with one item per row, so nothing is shared."""
    return Column(np.asarray(column.items)[column.index], np.arange(len(column.index)),
                  column.is_file)


def time_steps(pipeline: Pipeline, data, batches: list[np.ndarray]) -> tuple[float, float]:
    """Examples per second over ``batches`` of training steps, and images encoded per row."""
    model, cfg = pipeline.model, pipeline.config.training
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(0)
    model.train()
    images = rows = 0
    start = time.perf_counter()
    for batch_rows in batches:
        inputs, targets = pipeline.batch(data, batch_rows, True, generator)
        images += len(inputs["image"]["pixels"])
        rows += len(batch_rows)
        loss = batch_loss(pipeline, model(inputs), targets, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rows / (time.perf_counter() - start), images / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    threads = configure_threads()
    config = mmfuse.load_config(CONFIG)
    batch_size = config.training.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        generate_sort_of_clevr(tmp, n_train=args.images, n_test=0)
        table = read_table(Path(tmp) / "train.csv")
        pipeline = Pipeline.from_config(config)
        data = pipeline.fit(table)
        initial = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
        rng = np.random.default_rng(0)
        orders = {
            "grouped": grouped_batches(data.group_key(), batch_size, rng)[: args.batches],
            "shuffled": shuffled_batches(len(data), batch_size, rng)[: args.batches],
        }
        results = {}
        for name, batches in [*orders.items(), ("per-row", orders["shuffled"])]:
            encoded = data
            if name == "per-row":
                encoded = type(data)(data.table, dict(data.inputs), data.targets)
                encoded.inputs["image"] = per_row_copy(data.inputs["image"])
            pipeline.model.load_state_dict(initial)
            time_steps(pipeline, encoded, batches[:3])  # warm-up
            results[name] = time_steps(pipeline, encoded, batches)
    base = results["per-row"][0]
    rows = [[name, f"{eps:,.0f}", f"{per_row:.3f}", f"{eps / base:.2f}x"]
            for name, (eps, per_row) in results.items()]
    table_md = markdown_table(
        ["batch order", "train examples/s", "images encoded per row", "speed-up vs per-row"],
        rows)
    text = (f"# Encoding shared files once per batch\n\nSort-of-CLEVR, {args.images} images x 20 "
            f"questions, `{CONFIG.name}` model, batch size {batch_size}, {args.batches} "
            f"training steps per variant, {threads} thread(s).\n\n{table_md}\n\n"
            f"Machine: {machine()}\n\nCommand: `{command()}`\n")
    (RESULTS / "grouped_encoding.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
