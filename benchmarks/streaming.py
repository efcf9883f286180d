"""Streamed training (training/streamed.py) against the cached path, workers against one
worker, and peak memory against the number of shards.

1. **Speed:** Sort-of-CLEVR and the products table, each generated twice with one seed, as a
   CSV of paths (the cached path: decoded once into the cache, which the measured runs find
   built) and as WebDataset shards (streamed: read, decoded and batched by the DataLoader
   workers every epoch). The example config trains from each at the defaults
   (``training.workers: auto``); examples/s is the median of the epochs after the first,
   rounds alternate the two.
2. **Workers:** a decode-bound table (JPEG photos cut from scikit-learn's two sample images,
   decoded and resized to 128 px) as shards, batched by the DataLoader alone (no training)
   with 1 and with 2 workers.
3. **Memory:** one epoch streamed from 10 and from 100 shards of the same size (the same
   first ``data.fit_rows`` rows fit the preprocessing); peak memory of the training process
   and its workers together (the sum of their PSS, so pages a forked worker shares with its
   parent count once), sampled every 20 ms. The cached path on the same shards is shown
   beside it.

    python benchmarks/streaming.py      # writes benchmarks/results/streaming.md, .json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command, machine, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["speed", "workers", "memory"]


def mmfuse(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmfuse", *map(str, args)]


def generate(folder: Path, images: int, form: str, shard_size: int = 500,
             dataset: str = "sort-of-clevr") -> dict:
    out = subprocess.run(mmfuse("datasets", dataset, folder / form, "--train", images,
                                "--test", 50, "--format", form, "--shard-size", shard_size,
                                "--json"), check=True, capture_output=True, text=True).stdout
    tables = json.loads(out)["tables"]
    return {t.split(".")[0].split("-")[0]: str(folder / form / t) for t in tables}


def train(config: Path, data: str, run: Path, *flags: str) -> dict:
    """``mmfuse train`` in a fresh process, with its peak memory (PSS, with its workers) sampled."""
    process = subprocess.Popen(mmfuse("train", config, "--data", data, "--out", run,
                                      "--overwrite", "--json", *flags),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss": 0}
    sampler = threading.Thread(target=_sample_pss, args=(process, peak), daemon=True)
    sampler.start()
    out, err = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(err[-3000:])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"summary": json.loads(out.splitlines()[-1]), "records": records,
            "peak_pss_mb": round(peak["pss"] / 2 ** 20, 1)}


def _sample_pss(process: subprocess.Popen, peak: dict) -> None:
    while process.poll() is None:
        peak["pss"] = max(peak["pss"], _tree_pss(process.pid))
        time.sleep(0.02)


def _tree_pss(pid: int) -> int:
    """Memory in bytes of ``pid`` and its descendants: their proportional set sizes (PSS), so
    the pages a forked worker shares with its parent count once, not once per process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


VARIANTS = {  # dataset, config, rows per generated image, which --option sizes it
    "Sort-of-CLEVR, 20 questions per image (the demo's model, `sort_of_clevr_best.yaml`)":
        ("sort-of-clevr", "sort_of_clevr_best.yaml", 20, "images"),
    "products, one picture per row (`products.yaml`)":
        ("products", "products.yaml", 1, "products"),
}


def speed(folder: Path, sizes: dict[str, int], epochs: int, rounds: int) -> dict:
    """Examples/s of the cached path and of streaming, same data, same config: the demo's
    model on Sort-of-CLEVR (20 rows share each image: batched together and the image encoded
    once, on either path), and the products table (a picture per row)."""
    import yaml

    result = {"epochs": epochs, "variants": {}}
    for label, (dataset, example, per_image, size) in VARIANTS.items():
        images = sizes[size]
        csv_tables = generate(folder / dataset, images, "csv", dataset=dataset)
        shard_tables = generate(folder / dataset, images, "webdataset", dataset=dataset)
        config = yaml.safe_load((ROOT / "examples" / example).read_text())
        config.setdefault("training", {}).update(epochs=epochs, max_minutes=None,
                                                 valid_fraction=0.0)
        path = folder / f"{dataset}.yaml"
        path.write_text(yaml.safe_dump(config))
        train(path, csv_tables["train"], folder / "warm")  # builds the decode cache
        runs: dict[str, list] = {"cached": [], "streamed": []}
        for _ in range(rounds):
            for name, data in (("cached", csv_tables["train"]),
                               ("streamed", shard_tables["train"])):
                done = train(path, data, folder / name)
                runs[name].append({"examples_per_second": round(statistics.median(
                    r["examples_per_second"] for r in done["records"][1:])),
                    "streamed": done["summary"]["streamed"],
                    "threads": done["summary"]["threads"],
                    "data_share": done["summary"].get("data_share")})
        cached = statistics.median(r["examples_per_second"] for r in runs["cached"])
        streamed = statistics.median(r["examples_per_second"] for r in runs["streamed"])
        result["variants"][label] = {"rows": images * per_image, "runs": runs,
                                     "cached": round(cached), "streamed": round(streamed),
                                     "ratio": round(streamed / cached, 3)}
    return result


def photo_shards(folder: Path, rows: int, shards: int) -> str:
    """JPEG photos (random 400x300 crops of scikit-learn's two sample photographs) with a
    label, written as tar shards in the WebDataset layout (KEY.jpg, KEY.cls)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(n) for n in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-rows // shards)
    for s in range(shards):
        with tarfile.open(folder / f"photos-{s:03d}.tar", "w") as tar:
            for i in range(s * per, min(rows, (s + 1) * per)):
                label = int(rng.integers(2))
                photo = photos[label]
                y, x = rng.integers(photo.shape[0] - 300), rng.integers(photo.shape[1] - 400)
                buffer = io.BytesIO()
                Image.fromarray(photo[y:y + 300, x:x + 400]).save(buffer, "JPEG", quality=90)
                for name, data in ((f"{i:06d}.jpg", buffer.getvalue()),
                                   (f"{i:06d}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"photos-{{000..{shards - 1:03d}}}.tar")


def workers(folder: Path, rows: int, passes: int) -> dict:
    """Rows/s of the DataLoader alone over a decode-bound source, 1 worker against 2."""
    import torch
    from torch.utils.data import DataLoader

    import mmfuse as mm
    from mmfuse.data.stream import fit_table, open_source
    from mmfuse.training.distributed import SINGLE
    from mmfuse.training.streamed import Rows

    torch.set_num_threads(1)
    pattern = photo_shards(folder / "photos", rows, 8)
    source = open_source(pattern, None)
    model = mm.Model.from_config({
        "inputs": [{"name": "image", "type": "image", "column": "jpg",
                    "preprocess": {"size": 128}}],
        "outputs": [{"name": "label", "type": "category", "column": "cls"}]})
    model.pipeline.fit(fit_table(source, 64)[0])
    dataset = Rows(model.pipeline, source, model.config, 64, SINGLE)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(passes):
        for n in (1, 2):
            loader = DataLoader(dataset, batch_size=None, num_workers=n, prefetch_factor=4,
                                multiprocessing_context="fork")
            started = time.perf_counter()
            seen = sum(len(report.rows) for report in loader)
            rates[n].append(seen / (time.perf_counter() - started))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    return {"rows": rows, "passes": passes, "rows_per_second": {
        str(k): [round(r) for r in v] for k, v in rates.items()},
        "one": round(one), "two": round(two), "ratio": round(two / one, 3)}


def memory(folder: Path, rows_per_shard: int) -> dict:
    """Peak memory of one streamed epoch over 10 and over 100 shards; the cached path beside."""
    import yaml

    tables = generate(folder, 100 * rows_per_shard // 20, "webdataset", rows_per_shard)
    pattern = tables["train"]
    ten = pattern.replace(pattern[pattern.index("{"):pattern.index("}") + 1],
                          "{000000..000009}")
    valid = tables["test"]
    base = yaml.safe_load((ROOT / "examples" / "sort_of_clevr.yaml").read_text())
    base["training"].update(epochs=1, max_minutes=None)
    result = {"rows_per_shard": rows_per_shard}
    for streaming in (True, False):
        config = {**base, "data": {"streaming": streaming}}
        path = folder / f"memory_{streaming}.yaml"
        path.write_text(yaml.safe_dump(config))
        name = "streamed" if streaming else "cached"
        for shards, data in ((10, ten), (100, pattern)):
            run = train(path, data, folder / f"{name}_{shards}", "--valid", valid)
            result[f"{name}_{shards}"] = {"peak_pss_mb": run["peak_pss_mb"],
                                          "train_rows": run["summary"]["train_rows"]}
        result[f"{name}_ratio"] = round(result[f"{name}_100"]["peak_pss_mb"]
                                        / result[f"{name}_10"]["peak_pss_mb"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--products", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--photos", type=int, default=1200)
    parser.add_argument("--rows-per-shard", type=int, default=200)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="run only these parts; the others keep their committed figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmfuse-streaming-") as tmp:
        os.environ["MMFUSE_CACHE_DIR"] = str(Path(tmp) / "cache")  # also for the children
        folder = Path(tmp)
        out = RESULTS / "streaming.md"
        report = json.loads(out.with_suffix(".json").read_text()) if args.parts != PARTS \
            else {}  # the parts not run keep their committed figures
        report.update(machine=machine())
        report.setdefault("commands", {}).update({part: command() for part in args.parts})
        if "speed" in args.parts:
            report["speed"] = speed(folder / "speed", {"images": args.images,
                                                       "products": args.products},
                                    args.epochs, args.rounds)
        if "workers" in args.parts:
            report["workers"] = workers(folder / "workers", args.photos, args.rounds)
        if "memory" in args.parts:
            report["memory"] = memory(folder / "memory", args.rows_per_shard)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(markdown(report))
    print(out.read_text())


def markdown(r: dict) -> str:
    s, w, m = r["speed"], r["workers"], r["memory"]
    return f"""# Streamed training

On {r['machine']}; each part's command is beside it.

## Streaming against the cached path (target: at least 0.8x)

`{r['commands']['speed']}`

Each dataset generated once as a CSV of paths (the cached path) and once as WebDataset shards
(streamed); its example config trained {s['epochs']}
epochs from each at the defaults (`training.workers: auto`: 1 worker here, and the training
process keeps the other CPU). The cached path's decode cache was built before the measured
runs; examples/s is the median of epochs 2 to {s['epochs']}, then of the alternating rounds
(each in the .json file).

{markdown_table(["data and model", "rows", "cached (CSV + files) examples/s",
                 "streamed (shards) examples/s", "training threads cached / streamed",
                 "streamed / cached"], [
    [label, f"{v['rows']:,}", f"{v['cached']:,}", f"{v['streamed']:,}",
     f"{v['runs']['cached'][0]['threads']} / {v['runs']['streamed'][0]['threads']}",
     f"**{v['ratio']:.2f}**"] for label, v in s['variants'].items()])}

## Decoding scales with workers (target: 2 workers at least 1.6x one)

`{r['commands']['workers']}`

{w['rows']:,} JPEG photos (400x300, resized to 128 px), 8 shards, batched by the DataLoader
alone (no training step), median of {w['passes']} passes.

{markdown_table(["workers", "rows/s (each pass)", "median", "ratio"], [
    ["1", ", ".join(f"{x:,}" for x in w['rows_per_second']['1']), f"{w['one']:,}", "1.00"],
    ["2", ", ".join(f"{x:,}" for x in w['rows_per_second']['2']), f"{w['two']:,}",
     f"**{w['ratio']:.2f}**"]])}

## Peak memory is flat in the number of shards (target: 100 shards at most 1.2x 10)

`{r['commands']['memory']}`

One epoch of `examples/sort_of_clevr.yaml` over shards of {m['rows_per_shard']} rows, with
`--valid` the test shards; peak memory of the training process and its workers together
(the sum of their PSS: pages a forked worker shares with its parent count once).

{markdown_table(["path", "10 shards: rows, peak MB", "100 shards: rows, peak MB",
                 "100 / 10"], [
    ["streamed", f"{m['streamed_10']['train_rows']:,}, {m['streamed_10']['peak_pss_mb']:,}",
     f"{m['streamed_100']['train_rows']:,}, {m['streamed_100']['peak_pss_mb']:,}",
     f"**{m['streamed_ratio']:.2f}**"],
    ["cached (`data.streaming: false`)",
     f"{m['cached_10']['train_rows']:,}, {m['cached_10']['peak_pss_mb']:,}",
     f"{m['cached_100']['train_rows']:,}, {m['cached_100']['peak_pss_mb']:,}",
     f"{m['cached_ratio']:.2f}"]])}
"""


if __name__ == "__main__":
    main()
