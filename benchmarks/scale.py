"""Datasets larger than memory: peak anonymous memory against the number of image files.

Generates one folder of 64x64 PNGs (a coloured square at a random place on noise; the label is
the colour) and tables of its first 2,000, 8,000 and 32,000 files, so the decoded cache is 1x,
4x and 16x the size of the smallest. For each table a fresh subprocess with an empty cache
(``MMFUSE_CACHE_DIR``) trains a small CNN for one epoch: it decodes every file into the on-disk
cache (the first run, the expensive one), computes the normalisation statistics, then trains
and validates reading batches from the memory map. A sampler thread reads ``RssAnon`` and
``VmRSS`` from ``/proc/self/status`` every 10 ms: RssAnon is the memory the process itself
holds (heap, numpy arrays, tensors), RSS adds the mapped pages of files and libraries, which the
kernel may drop at any time. The target: peak RssAnon does not grow with the number of files.

With ``--baseline`` the same runs are repeated with the code of the ``--baseline-ref`` commit
(``git archive``, read only; default ``7374f7f``, the last commit before the memory-mapped
cache) for comparison, e.g. the decode-then-stack cache
that held every decoded file in RAM twice.

Writes ``benchmarks/results/scale.md`` and ``scale.json``.

Run: ``python benchmarks/scale.py [--sizes 2000 8000 32000] [--baseline]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command, machine, markdown_table

SIZE = int(os.environ.get("MMFUSE_SCALE_SIZE", 64))  # --image-size, passed to the children
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230),
           "yellow": (230, 220, 40)}
CONFIG = {
    "inputs": [{"name": "image", "type": "image", "preprocess": {"size": SIZE},
                "encoder": {"type": "cnn", "channels": [8, 16], "dim": 32}}],
    "outputs": [{"name": "label", "type": "category"}],
    "training": {"epochs": 1, "batch_size": 128},
}


def generate(folder: Path, count: int, seed: int = 0) -> list[dict]:
    """``count`` PNGs in ``folder`` and their rows (``image``, ``label``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(count):
        pixels = rng.integers(0, 96, (SIZE, SIZE, 3), dtype=np.uint8)
        label = names[i % len(names)]
        top, left = rng.integers(0, SIZE - 16, 2)
        pixels[top:top + 16, left:left + 16] = COLOURS[label]
        name = f"img/{i:05d}.png"
        Image.fromarray(pixels).save(folder / name, compress_level=1)
        rows.append({"image": name, "label": label})
    return rows


def write_table(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def memory_kb() -> tuple[int, int]:
    """(RssAnon, VmRSS) of this process in kB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields["RssAnon"], fields["VmRSS"]


def child(table: Path, run: Path) -> None:
    """Train once on ``table`` while sampling memory; print one JSON line."""
    import mmfuse

    peaks = list(memory_kb())
    start_anon = peaks[0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            anon, rss = memory_kb()
            peaks[0], peaks[1] = max(peaks[0], anon), max(peaks[1], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    model = mmfuse.Model.from_config(CONFIG)
    summary = model.fit(table, out=run)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    train_rows = round((1 - 0.1) * (sum(1 for _ in table.open()) - 1))  # valid_fraction 0.1
    epoch_s = sum(e["epoch_seconds"] for e in epochs)
    print(json.dumps({"source": str(Path(mmfuse.__file__).parent),
                      "anon_after_import_mb": round(start_anon / 1024, 1),
                      "peak_anon_mb": round(peaks[0] / 1024, 1),
                      "peak_rss_mb": round(peaks[1] / 1024, 1),
                      "fit_s": round(seconds, 1), "epoch_s": round(epoch_s, 1),
                      "examples_per_s": round(train_rows * summary["epochs"] / epoch_s),
                      "before_training_s": round(seconds - epoch_s, 1)}))


def cache_size_mb(folder: Path) -> tuple[float, float]:
    """(apparent size, allocated blocks) of the cache's ``.npy`` files, in MB."""
    files = [p.stat() for p in folder.glob("*.npy")]
    return (round(sum(s.st_size for s in files) / 2**20, 1),
            round(sum(s.st_blocks * 512 for s in files) / 2**20, 1))


def measure(table: Path, root: Path, label: str, source: Path, env_extra: dict) -> dict:
    cache = root / f"cache-{label}"
    env = dict(os.environ, MMFUSE_CACHE_DIR=str(cache), **env_extra,
               PYTHONPATH=os.pathsep.join([str(source), str(Path(__file__).parent)]))
    out = subprocess.run([sys.executable, __file__, "--child", str(table),
                          str(root / f"run-{label}")], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"{label}: the training subprocess failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cache_mb"], result["cache_on_disk_mb"] = cache_size_mb(cache)
    return result


def baseline_source(root: Path, ref: str) -> Path:
    """The ``src`` folder of commit ``ref``, extracted read-only with ``git archive``."""
    repo = Path(__file__).resolve().parents[1]
    archive = root / "baseline.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", ref, "src"], cwd=repo, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root / "baseline", filter="data")
    return root / "baseline" / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--baseline-ref", default="7374f7f")  # the decode-then-stack cache
    parser.add_argument("--image-size", type=int, default=64,
                        help="side of the square PNGs (256: 192 kB decoded per file)")
    parser.add_argument("--name", default="scale", help="results/NAME.md and NAME.json")
    parser.add_argument("--no-fixed-malloc", action="store_true",
                        help="skip the second run of each size with a fixed malloc threshold")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    global SIZE
    SIZE = args.image_size
    os.environ["MMFUSE_SCALE_SIZE"] = str(SIZE)
    CONFIG["inputs"][0]["preprocess"]["size"] = SIZE

    source = Path(__file__).resolve().parents[1] / "src"
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="mmfuse-scale-") as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        start = time.perf_counter()
        all_rows = generate(root, max(args.sizes))
        print(f"generated {max(args.sizes)} images in {time.perf_counter() - start:.0f} s",
              flush=True)
        variants = [("memmap (this code)", source)]
        if args.baseline:
            variants.append((f"in-memory (before, {args.baseline_ref})",
                             baseline_source(root, args.baseline_ref)))
        for n in args.sizes:
            table = write_table(root / f"train_{n}.csv", all_rows[:n])
            for v, (variant, src) in enumerate(variants):
                result = {"files": n, "variant": variant,
                          **measure(table, root, f"{n}-{v}", src, {})}
                fixed = measure(table, root, f"{n}-{v}-fixed", src, FIXED_MALLOC) \
                    if not args.no_fixed_malloc else {"peak_anon_mb": "-"}
                result["peak_anon_fixed_malloc_mb"] = fixed["peak_anon_mb"]
                print(json.dumps(result), flush=True)
                results.append(result)
                rows.append([n, variant, result["cache_mb"], result["cache_on_disk_mb"],
                             result["peak_anon_mb"], result["peak_anon_fixed_malloc_mb"],
                             result["peak_rss_mb"], result["before_training_s"],
                             result["examples_per_s"]])

    header = ["files", "cache", "decoded cache (MB)", "on disk (MB)", "peak RssAnon (MB)",
              "peak RssAnon, fixed malloc threshold (MB)", "peak RSS (MB)",
              "decode + stats (s)", "train examples/s"]
    growth = []
    for variant, _ in variants:
        ours = [r for r in results if r["variant"] == variant]
        small, large = ours[0], ours[-1]
        files = large["files"] - small["files"]

        def per_file(key: str, small=small, large=large, files=files) -> str:
            if not isinstance(large[key], float | int):
                return "-"
            return f"{(large[key] - small[key]) * 1024 / files:.1f} kB"

        growth.append(
            f"- {variant}: from {small['files']} to {large['files']} files, peak RssAnon grows "
            f"by {per_file('peak_anon_mb')} per file ({per_file('peak_anon_fixed_malloc_mb')} "
            f"with the fixed malloc threshold); a decoded image is {per_file('cache_mb')}.")
    text = "\n\n".join([
        "# Scale: memory against the number of image files",
        f"Machine: {machine()}",
        f"Command: `{command()}`",
        f"Each run: a fresh process and an empty cache; {SIZE}x{SIZE} PNGs, a CNN with "
        "channels [8, 16], one epoch (batch 128, 10% held out for validation). 'decode + "
        "stats' is the time before the first epoch (decoding every file into the cache, the "
        "normalisation statistics, building the model). Peaks are sampled every 10 ms from "
        "/proc/self/status. 'fixed malloc threshold': the same run with "
        "`MALLOC_MMAP_THRESHOLD_=131072`, which stops glibc from raising its mmap threshold "
        "after the first large frees and then keeping freed batch tensors in its heap: what "
        "is left is what the process holds.",
        markdown_table(header, rows),
        "\n".join(growth),
        "The growth left with the fixed threshold is the table held in memory (a dict per "
        "row, each file's resolved path and item index), not decoded pixels.",
    ]) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"machine": machine(), "command": command(), "results": results}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
