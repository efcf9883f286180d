"""The same data as a CSV of paths, as Parquet with the images inside, and as WebDataset
shards: accuracy and speed of training and evaluating the same config on each.

Generates Sort-of-CLEVR (``--images`` training images, 20 questions each) in the three forms
with one seed (identical pixels and questions), trains the minimal config of the README for
``--epochs`` epochs with the same seed from each, and evaluates each run on the test split in
each form. Times: reading the table, the first evaluation (empty decode cache: every image is
decoded) and a second one (cache filled).

    python benchmarks/media_tables.py      # writes benchmarks/results/media_tables.md, .json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine, markdown_table  # noqa: E402

FORMS = ("csv", "parquet", "webdataset")
CONFIG = {"inputs": [{"name": "image", "type": "image"}, {"name": "question", "type": "text"}],
          "outputs": [{"name": "answer", "type": "category"}]}


def generate(folder: Path, images: int, test: int) -> dict[str, dict[str, str]]:
    """The dataset in each form; per form, the train and test tables as --data values."""
    tables = {}
    for form in FORMS:
        out = json.loads(subprocess.run(
            [sys.executable, "-m", "mmfuse.cli", "datasets", "sort-of-clevr", str(folder / form),
             "--train", str(images), "--test", str(test), "--format", form, "--json"],
            check=True, capture_output=True, text=True).stdout)
        by_split = {t.split(".")[0].split("-")[0]: str(folder / form / t) for t in out["tables"]}
        tables[form] = {"train": by_split["train"], "test": by_split["test"]}
    return tables


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    import mmfuse
    from mmfuse.data.table import read_table

    config = {**CONFIG, "training": {"epochs": args.epochs, "seed": 0}}
    results = {}
    with tempfile.TemporaryDirectory(prefix="mmfuse-bench-media-") as tmp:
        work = Path(tmp)
        tables = generate(work / "data", args.images, args.test)
        os.environ["MMFUSE_CACHE_DIR"] = str(work / "cache-warm-up")  # the first fit in a
        mmfuse.Model.from_config({**config, "training": {"epochs": 1}}).fit(  # process pays
            tables["csv"]["test"], out=work / "warm-up", progress=False)  # torch's start-up
        for form in FORMS:
            os.environ["MMFUSE_CACHE_DIR"] = str(work / f"cache-{form}")
            table, read_s = timed(read_table, tables[form]["train"])
            model = mmfuse.Model.from_config(config)
            summary, train_s = timed(model.fit, table, tables[form]["test"],
                                     out=work / f"run-{form}", progress=False)
            cold, cold_s = timed(model.evaluate, tables[form]["test"])
            warm, warm_s = timed(model.evaluate, tables[form]["test"])
            others = {f: model.evaluate(tables[f]["test"])["outputs"]["answer"]["accuracy"]
                      for f in FORMS}
            results[form] = {
                "train_rows": summary["train_rows"], "read_train_s": read_s,
                "train_s": train_s, "epochs": summary["epochs"],
                "test_accuracy": cold["outputs"]["answer"]["accuracy"],
                "test_accuracy_by_form": others, "evaluate_cold_s": cold_s,
                "evaluate_warm_s": warm_s,
                "bytes_on_disk": sum(p.stat().st_size for p in (work / "data" / form).rglob("*")
                                     if p.is_file())}
            print(form, results[form], flush=True)
    report = {"machine": machine(), "command": command(), "images": args.images,
              "epochs": args.epochs, "results": results}
    out = RESULTS / "media_tables.md"
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    base = r["results"]["csv"]
    rows = [[f"`{form}`", f"{x['bytes_on_disk'] / 1e6:.1f} MB", f"{x['read_train_s']:.2f}",
             f"{x['train_s']:.1f} ({x['train_s'] / base['train_s']:.2f}x)",
             f"{x['test_accuracy']:.4f}",
             ", ".join(f"{v:.4f}" for v in x["test_accuracy_by_form"].values()),
             f"{x['evaluate_cold_s']:.2f} ({x['evaluate_cold_s'] / base['evaluate_cold_s']:.2f}x)",
             f"{x['evaluate_warm_s']:.2f} ({x['evaluate_warm_s'] / base['evaluate_warm_s']:.2f}x)"]
            for form, x in r["results"].items()]
    table = markdown_table(["trained and evaluated on", "data on disk", "read train table s",
                            "train s (/ csv)", "test accuracy", "test accuracy on csv, "
                            "parquet, webdataset tables", "evaluate s, empty cache (/ csv)",
                            "evaluate s, cache filled (/ csv)"], rows)
    return f"""# The same data as CSV + files, Parquet with the images inside, WebDataset shards

`{r['command']}` on {r['machine']}. Sort-of-CLEVR with {r['images']} training images (20
questions each), written by `mmfuse datasets sort-of-clevr DIR --format FORM` with one seed, so
every form holds the same pixels and questions. The README's minimal config, trained for
{r['epochs']} epochs with seed 0 from each form, with the test split of the same form as the
validation table (so every form trains on the same rows in the same order and keeps the same
epoch), then evaluated on the test split in each form.

{table}

A model trained from one form scores the same on the test split in every form: the same pixels
reach it. Without `--valid`, training holds out 10% of the images, drawn by their key (a path
in the CSV, a hash of the content in the other forms), so a CSV run would hold out other
images than a Parquet run; with the same validation table the three runs are the same run.
WebDataset stores one sample per row, so each image is written once per question (20 times
here): hence its size on disk and its slower first evaluation (hashing 20x the bytes).
"""


if __name__ == "__main__":
    main()
