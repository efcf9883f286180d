"""av-digits: image alone, audio alone, and both fused with modality dropout.

Generates the built-in av-digits set if needed, trains the three example configs through the
CLI (one after another: this machine has two cores), evaluates each on the test split, and the
fused model again with each input removed (``evaluate --drop``), then writes
``benchmarks/results/av_digits.md`` and ``.json``.

The two checks of the issue are computed here: the fused model beats the best single
modality, and the fused model without one input is within 3 points of the model trained on the
other input alone.

    python benchmarks/av_digits.py [--data data/av-digits] [--runs runs/av-digits]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, command, machine, markdown_table

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"image": "examples/av_digits_image.yaml", "audio": "examples/av_digits_audio.yaml",
           "fused": "examples/av_digits.yaml"}


def mmfuse(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "mmfuse.cli", *map(str, args), "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def accuracy(result: dict) -> float:
    return result["outputs"]["label"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/av-digits")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/av-digits")
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        mmfuse("datasets", "av-digits", args.data)
    test = args.data / "test.csv"
    rows, results = [], {}
    for name, config in CONFIGS.items():
        started = time.perf_counter()
        summary = mmfuse("train", config, "--data", args.data / "train.csv",
                         "--out", args.runs / name)
        seconds = time.perf_counter() - started
        results[name] = {"test": accuracy(mmfuse("evaluate", args.runs / name, "--data", test)),
                         "epochs": summary["epochs"], "train_seconds": summary["seconds"],
                         "command_seconds": round(seconds, 1), "config": config}
    for dropped in ("audio", "image"):
        result = mmfuse("evaluate", args.runs / "fused", "--data", test, "--drop", dropped)
        results[f"fused_without_{dropped}"] = {"test": accuracy(result)}

    best_single = max(results["image"]["test"], results["audio"]["test"])
    checks = {
        "fused_beats_best_single": results["fused"]["test"] > best_single,
        "without_audio_vs_image_only": results["fused_without_audio"]["test"]
        - results["image"]["test"],
        "without_image_vs_audio_only": results["fused_without_image"]["test"]
        - results["audio"]["test"],
    }
    for name, r in results.items():
        rows.append([name, f"{100 * r['test']:.1f}%", r.get("epochs", ""),
                     f"{r['train_seconds']:.0f}" if "train_seconds" in r else "",
                     f"`{r['config']}`" if "config" in r else "(fused run, `--drop`)"])
    table = markdown_table(["model", "test accuracy", "epochs", "training s", "config"], rows)
    gaps = (f"Fused without audio minus image-only: "
            f"{100 * checks['without_audio_vs_image_only']:+.1f} points; fused without image "
            f"minus audio-only: {100 * checks['without_image_vs_audio_only']:+.1f} points. "
            f"Fused beats the best single modality: {checks['fused_beats_best_single']}.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "av_digits.md").write_text(
        "# av-digits: image, audio, fused (modality dropout 0.5 image, 0.3 audio)\n\n"
        f"Machine: {machine()}\n\nCommand: `{command()}`\n\n"
        f"Test split: {test.relative_to(ROOT) if test.is_relative_to(ROOT) else test} "
        "(1,000 rows, 10% missing one input).\n\n" + table + "\n\n" + gaps + "\n")
    (RESULTS / "av_digits.json").write_text(json.dumps(
        {"machine": machine(), "command": command(), "results": results, "checks": checks},
        indent=1))
    print(table)
    print(gaps)


if __name__ == "__main__":
    main()
