"""What checkpoints and mixed precision cost on this machine, as ratios within one run.

1. Checkpoints. The same training run twice, with the default checkpoint settings
   (``training.checkpoint_every_steps`` and one at every epoch end) and with checkpoint writes
   switched off, on two tables: a Sort-of-CLEVR subset (many steps an epoch) and a tiny one of
   a few steps an epoch, the worst case for the per-epoch checkpoint. The runs alternate, and
   each ratio is the median of ``--repeats`` pairs. Target: under 5% of training time.
2. Precision. Examples per second of the best Sort-of-CLEVR config trained with
   ``training.precision`` fp32, bf16 and fp16 (autocast on the CPU), for the default
   ``fp32`` on CPUs without bf16 arithmetic units.

Writes ``benchmarks/results/training_costs.md`` and ``.json``.

Run: ``python benchmarks/training_costs.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import yaml
from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.config import TrainingConfig
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
from mmfuse.training import checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "sort_of_clevr_best.yaml"


def best_config(**training) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["training"].update({"max_minutes": None, "valid_fraction": 0.1,
                               "early_stopping_patience": None, **training})
    return config


def timed_fit(config: dict, train: Path, run: Path, checkpoints: bool) -> dict:
    """Seconds of ``fit`` (training, validation, bundle and checkpoint writes)."""
    model = mmfuse.Model.from_config(config)
    writes = {"n": 0}
    real_save = checkpoint.Writer.save

    def counting_save(self, *args, **kwargs):  # "off": no copy, no write, nothing
        writes["n"] += 1
        return real_save(self, *args, **kwargs) if checkpoints else None

    with mock.patch.object(checkpoint.Writer, "save", counting_save):
        began = time.perf_counter()
        summary = model.fit(train, out=run, overwrite=True)
        seconds = time.perf_counter() - began
    return {"seconds": seconds, "checkpoints": writes["n"] if checkpoints else 0,
            "steps": summary["steps"], "valid_accuracy": summary["best"]["valid_accuracy"],
            "examples_per_second": _speed(run)}


def _speed(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["examples_per_second"] for r in records)


def checkpoint_costs(tables: dict, root: Path, repeats: int) -> list[dict]:
    rows = []
    for name, (train, config) in tables.items():
        timed_fit(config, train, root / f"{name}-warm-up", False)  # fills the decode cache
        pairs = []
        for i in range(repeats):  # alternating which goes first
            first = timed_fit(config, train, root / f"{name}-{i}-a", i % 2 == 0)
            second = timed_fit(config, train, root / f"{name}-{i}-b", i % 2 == 1)
            pairs.append((first, second) if i % 2 == 0 else (second, first))
        ratio = statistics.median(on["seconds"] / off["seconds"] for on, off in pairs)
        on, off = pairs[0]
        size = sum(p.stat().st_size for p in checkpoint.checkpoints(root / f"{name}-0-a")[-1:])
        rows.append({"table": name, "steps": on["steps"], "checkpoints": on["checkpoints"],
                     "checkpoint_mb": size / 1e6, "seconds_on": on["seconds"],
                     "seconds_off": off["seconds"], "ratio": ratio})
        print(rows[-1], flush=True)
    return rows


def precision_speeds(train: Path, root: Path, repeats: int) -> list[dict]:
    rows = []
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp16": []}
    accuracy: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp16": []}
    for i in range(repeats):
        for precision in speeds:
            config = best_config(epochs=4, precision=precision)
            result = timed_fit(config, train, root / f"precision-{precision}-{i}", False)
            speeds[precision].append(result["examples_per_second"])
            accuracy[precision].append(result["valid_accuracy"])
    base = statistics.median(speeds["fp32"])
    for precision, values in speeds.items():
        rows.append({"precision": precision, "examples_per_second": statistics.median(values),
                     "ratio": statistics.median(values) / base,
                     "valid_accuracy": statistics.mean(accuracy[precision])})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmfuse-costs-") as tmp:
        root = Path(tmp)
        generate_sort_of_clevr(root / "soc", n_train=1000, n_test=10)
        generate_sort_of_clevr(root / "tiny", n_train=40, n_test=10, seed=1)
        defaults = TrainingConfig()
        tables = {
            "Sort-of-CLEVR, 1,000 images (20,000 rows)":
                (root / "soc" / "train.csv", best_config(epochs=10)),
            "tiny, 40 images (800 rows)":
                (root / "tiny" / "train.csv", best_config(epochs=30, batch_size=64)),
        }
        costs = checkpoint_costs(tables, root, args.repeats)
        speeds = precision_speeds(root / "soc" / "train.csv", root, args.repeats)
    results = {"machine": machine(), "checkpoint_every_steps": defaults.checkpoint_every_steps,
               "keep_checkpoints": defaults.keep_checkpoints, "checkpoints": costs,
               "precision": speeds}
    (RESULTS / "training_costs.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# Training costs: checkpoints and mixed precision", "",
        f"Machine: {machine()}", "", f"Command: `{command()}`", "",
        "## Checkpoints", "",
        f"Defaults: `checkpoint_every_steps: {defaults.checkpoint_every_steps}`, a checkpoint "
        f"at every epoch end, `keep_checkpoints: {defaults.keep_checkpoints}`. Time of the whole "
        "`fit` with checkpoints written, against the same run with checkpoint writes switched "
        f"off (median of {args.repeats} alternating pairs).", "",
        markdown_table(
            ["table", "steps", "checkpoints", "checkpoint size", "with (s)", "without (s)",
             "ratio"],
            [[r["table"], r["steps"], r["checkpoints"], f"{r['checkpoint_mb']:.1f} MB",
              f"{r['seconds_on']:.1f}", f"{r['seconds_off']:.1f}", f"{r['ratio']:.3f}"]
             for r in costs]), "",
        "## Precision on this CPU", "",
        "Training examples per second of the best Sort-of-CLEVR config (median epoch, median "
        f"of {args.repeats} runs of 4 epochs), autocast to each dtype; the ratio is against "
        "fp32; validation accuracy is the mean of the runs.", "",
        markdown_table(["precision", "examples/s", "ratio", "valid accuracy after 4 epochs"],
                       [[r["precision"], f"{r['examples_per_second']:,.0f}",
                         f"{r['ratio']:.2f}", f"{r['valid_accuracy']:.1%}"] for r in speeds]),
        "",
    ]
    (RESULTS / "training_costs.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
