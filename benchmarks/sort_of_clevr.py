"""Every fusion on Sort-of-CLEVR, with one shared image encoder and question encoder.

For each fusion's example config (``examples/sort_of_clevr_<fusion>.yaml``; the shared encoders
and training settings come from ``examples/sort_of_clevr.yaml`` where a fusion has no config of
its own) this trains from scratch on the built-in dataset and records the number of parameters,
training wall time, training examples per second, and test accuracy on relational and
non-relational questions and per family. ``best`` (in ``--only``) trains
``examples/sort_of_clevr_best.yaml`` under its own time budget. Writes
``benchmarks/results/sort_of_clevr.md``; rows from earlier runs are kept, each with its budget.

Run: ``python benchmarks/sort_of_clevr.py [--data data/sort-of-clevr] [--minutes 4]
[--only best relation film ...] [--question-encoder bow]``
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml
from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
from mmfuse.registry import FUSIONS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAMILIES = ("shape", "left", "top", "closest", "furthest", "count")


def config_for(fusion: str, minutes: float | None,
               question: dict | None = None) -> tuple[dict, str]:
    """The fusion's example config, or the shared one with only the fusion swapped; optionally
    with another question encoder and another time budget."""
    own = EXAMPLES / f"sort_of_clevr_{fusion}.yaml"
    source = own if own.is_file() else EXAMPLES / "sort_of_clevr.yaml"
    config = copy.deepcopy(yaml.safe_load(source.read_text()))
    if not own.is_file():
        config["fusion"] = {"type": fusion}
    if question:
        config["inputs"][1]["encoder"] = question
    if minutes:
        config["training"]["max_minutes"] = minutes
    return config, source.name


def run_one(fusion: str, data: Path, minutes: float | None, out: Path,
            question: dict | None = None) -> dict:
    config, source = config_for(fusion, None if fusion == "best" else minutes, question)
    model = mmfuse.Model.from_config(config)
    start = time.perf_counter()
    summary = model.fit(data / "train.csv", out=out / fusion, overwrite=True)
    seconds = time.perf_counter() - start
    by_type = model.evaluate(data / "test.csv", by="qtype")["groups"]
    by_family = model.evaluate(data / "test.csv", by="family")["groups"]
    acc = {g: v["outputs"]["answer"]["accuracy"] for g, v in {**by_type, **by_family}.items()}
    params = sum(p.numel() for p in model.pipeline.model.parameters())
    best = summary["best"]
    name = f"{config['fusion']['type']} (best)" if fusion == "best" else fusion
    return {"fusion": name, "config": source, "params": params, "seconds": seconds,
            "budget_minutes": config["training"].get("max_minutes"),
            "question_encoder": config["inputs"][1]["encoder"]["type"],
            "epochs": summary["epochs"], "examples_per_second": best["examples_per_second"],
            **acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/sort-of-clevr"))
    parser.add_argument("--minutes", type=float, default=None,
                        help="cap each fusion's training time (default: its config's own)")
    parser.add_argument("--only", nargs="*", default=None, help="fusions to run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_soc"))
    parser.add_argument("--question-encoder", choices=["gru", "bow"], default=None,
                        help="replace every config's question encoder (default: each config's)")
    args = parser.parse_args()
    question = {"gru": {"type": "gru", "embedding_dim": 32, "hidden_size": 64},
                "bow": {"type": "bow", "embedding_dim": 32, "dim": 64}}.get(
        args.question_encoder)
    if not (args.data / "train.csv").is_file():
        generate_sort_of_clevr(args.data)
    results_json = RESULTS / "sort_of_clevr.json"
    results = json.loads(results_json.read_text()) if results_json.is_file() else {}
    for fusion in args.only or FUSIONS.names():
        print(f"--- {fusion}", flush=True)
        results[fusion] = {**run_one(fusion, args.data, args.minutes, args.out, question),
                           "command": command()}
        print(json.dumps(results[fusion]), flush=True)
        results_json.write_text(json.dumps(results, indent=1))
        write_table(results)


def write_table(results: dict) -> None:
    header = ["fusion", "config", "question encoder", "budget (min)", "parameters", "epochs",
              "train time (s)", "train ex/s", "relational", "non-relational", *FAMILIES]
    rows = []
    commands = list(dict.fromkeys(r.get("command", "python benchmarks/sort_of_clevr.py "
                                        "--data data/sort-of-clevr --minutes 2")
                                  for r in results.values()))
    for r in sorted(results.values(), key=lambda r: -r.get("relational", 0)):
        rows.append([r["fusion"], f"`{r['config']}`", r.get("question_encoder", "gru"),
                     r.get("budget_minutes", 2), f"{r['params']:,}", r["epochs"],
                     f"{r['seconds']:.0f}", f"{r['examples_per_second']:,.0f}",
                     *(f"{r.get(k, float('nan')):.1%}" for k in
                       ("relational", "non-relational", *FAMILIES))])
    text = ("# Fusions on Sort-of-CLEVR\n\nBuilt-in dataset (9,800 training / 200 test images, "
            "20 questions each; the share of training images that each config holds out for "
            "validation: 5%, 2% for the best), trained from scratch; test accuracy.\n\n"
            + markdown_table(header, rows) + f"\n\nMachine: {machine()}\n\nCommands (the rows "
            "come from these runs):\n\n" + "".join(f"- `{c}`\n" for c in commands))
    (RESULTS / "sort_of_clevr.md").write_text(text)


if __name__ == "__main__":
    main()
