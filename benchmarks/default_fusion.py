"""Which fusion should a minimal image + question config get? Measured on held-out Sort-of-CLEVR.

A new user writes only the input and output types. This trains that minimal config (``cnn``
image encoder and ``gru`` question encoder at their defaults) once per candidate fusion, each at
its own default options, on a freshly generated Sort-of-CLEVR (another seed and size than the
built-in one) for the same number of epochs, and reports test accuracy on non-relational and
relational questions. ``auto`` is what the config's default fusion resolves to for these
inputs; ``NAME:EPOCHS`` trains a candidate for other than ``--epochs`` epochs (to compare at
equal time). Writes ``benchmarks/results/default_fusion.md`` and ``.json``, keeping the rows of
earlier runs (same data, same seed) that this one does not redo.

Run: ``python benchmarks/default_fusion.py [--images 600] [--epochs 8] [--minutes M]
[--threads N] [--only concat film ...]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr

CANDIDATES = ("auto", "concat", "film", "attention", "relation", "cross_attention",
              "transformer")


def minimal_config(fusion: str, epochs: int, minutes: float | None) -> dict:
    """Input and output types only, plus the fusion to compare and the epoch budget."""
    config = {"inputs": [{"name": "image", "type": "image"},
                         {"name": "question", "type": "text"}],
              "outputs": [{"name": "answer", "type": "category"}],
              "training": {"epochs": epochs, "max_minutes": minutes}}
    if fusion != "auto":
        config["fusion"] = {"type": fusion}
    return config


def run_one(spec: str, data: Path, epochs: int, minutes: float | None,
            threads: int | None) -> dict:
    """Train and test one candidate: ``NAME`` for ``epochs``, or ``NAME:EPOCHS``."""
    fusion, _, own = spec.partition(":")
    epochs = int(own) if own else epochs
    model = mmfuse.Model.from_config(minimal_config(fusion, epochs, minutes))
    start = time.perf_counter()
    summary = model.fit(data / "train.csv", threads=threads)
    seconds = time.perf_counter() - start
    groups = model.evaluate(data / "test.csv", by="qtype")["groups"]
    return {"run": spec, "fusion": fusion, "resolved": model.config.fusion["type"],
            "epochs": summary["epochs"], "seconds": round(seconds, 1),
            **{g: v["outputs"]["answer"]["accuracy"] for g, v in groups.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="training images (x20 rows)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=None, help="cap per fusion")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    kept = RESULTS / "default_fusion.json"
    rows = {r["run"]: r for r in json.loads(kept.read_text())} if kept.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        generate_sort_of_clevr(data, n_train=args.images, n_test=200, seed=args.seed)
        for spec in args.only:
            rows[spec] = run_one(spec, data, args.epochs, args.minutes, args.threads)
            print(json.dumps(rows[spec]), flush=True)
    rows = sorted(rows.values(), key=lambda r: -r["non-relational"])
    kept.write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown_table(
        ["run (fusion or fusion:epochs)", "resolves to", "epochs run", "train s",
         "non-relational", "relational"],
        [[r["run"], r["resolved"], r["epochs"], r["seconds"],
          f"{r['non-relational']:.1%}", f"{r['relational']:.1%}"] for r in rows])
    (RESULTS / "default_fusion.md").write_text(
        "# The default fusion for a minimal image + question config\n\n"
        f"Sort-of-CLEVR generated with seed {args.seed}: {args.images} training images "
        "(20 questions each), 200 test images. Config: input and output types only "
        "(`cnn` + `gru` at their defaults), the fusion at its default options; "
        f"{args.epochs} epochs"
        + (f", at most {args.minutes:g} min each" if args.minutes else "")
        + " unless the run says otherwise (early stopping at its default may end it "
        "sooner); test accuracy. Seconds are wall time of `fit` and depend on the machine's "
        "load.\n\n"
        f"{table}\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")


if __name__ == "__main__":
    main()
