"""How the image encoders' defaults were chosen (issue 28): colour, shape, side and counting.

Task ``photo_qa`` (``mmfuse.datasets.probes``): 1-3 shapes of one colour and kind in one half
of a 64-px grey photograph, a question about their colour, shape, side or number, a one-word
``type: text`` answer read by the default text decoder. Every run is the minimal config (the
types of the inputs and the output) with only the image input's options below, trained from the
CLI's code path (``Model.fit``) with every training option at its default, and scored by exact
match on new pictures (test backgrounds come from pixels of the photographs no training picture
shows), per question type. The ``cnn`` variants are also run on ``image_caption`` ("a red circle
on the left"), where where-things-are decides the caption.

A linear-probe table comes first: logistic regression (scikit-learn, C=0.5) on each
EfficientNet-Lite0 stage's frozen map, mean-pooled or flattened on a 7x7 grid, per question
type. It shows what each stage keeps before anything is trained.

Writes ``benchmarks/results/image_defaults.md`` and ``image_defaults.json``.
Run: ``python benchmarks/image_defaults.py [--train 1200] [--test 400] [--seed 5]
[--skip-probes]``
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, command, machine, markdown_table
from PIL import Image

import mmfuse
from mmfuse.datasets.probes import generate_probe, minimal_config

QTYPES = ("colour", "shape", "side", "count")
_OLD_CNN = {"encoder": {"type": "cnn", "coords": False, "pool": "flatten"},
            "preprocess": {"pad_crop": 0}}
VARIANTS: dict[str, dict] = {
    # name: the image input's options merged into the minimal config
    "cnn before issue 28 (flatten)": _OLD_CNN,
    "cnn, pool: mean": {"encoder": {"type": "cnn", "coords": False, "pool": "mean"},
                        "preprocess": {"pad_crop": 0}},
    "cnn, pad_crop: 6": {"encoder": {"type": "cnn", "coords": False, "pool": "flatten"}},
    "cnn, coords, pool: mean, pad_crop: 6": {"encoder": {"type": "cnn", "pool": "mean"}},
    "cnn, coords, pool: flatten, pad_crop: 6": {"encoder": {"type": "cnn", "pool": "flatten"}},
    "cnn default (coords, pool: max, pad_crop: 6)": {},
    "efficientnet_lite0, last map alone (before issue 28)": {"encoder": {
        "type": "efficientnet_lite0", "early_stages": [], "pooled_grid": 0, "dropout": 0.0}},
    "efficientnet_lite0 default (stages 1+3, 3x3 grid)": {"encoder": {
        "type": "efficientnet_lite0"}},
    "efficientnet_lite0, dropout: 0.3": {"encoder": {
        "type": "efficientnet_lite0", "dropout": 0.3}},
}
CAPTION_VARIANTS = [name for name in VARIANTS if name.startswith("cnn")]


def config(task: str, image: dict) -> dict:
    """The minimal config of ``task`` with ``image`` merged into its image input."""
    data = minimal_config(task)
    for item in data["inputs"]:
        if item["type"] == "image":
            item.update(json.loads(json.dumps(image)))
    return data


def run(task: str, data: Path, image: dict) -> dict:
    """Train and score one variant: overall and per question type exact match, seconds."""
    model = mmfuse.Model.from_config(config(task, image))
    start = time.perf_counter()
    fitted = model.fit(data / "train.csv")
    seconds = time.perf_counter() - start
    by = "qtype" if task == "photo_qa" else None
    result = model.evaluate(data / "test.csv", by=by)
    target = "answer" if task == "photo_qa" else "caption"
    row = {"all": result["outputs"][target]["exact_match"], "epochs": fitted["epochs"],
           "seconds": round(seconds, 1)}
    for name, group in result.get("groups", {}).items():
        row[name] = group["outputs"][target]["exact_match"]
    return row


def stage_maps(data: Path, split: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Rows and every EfficientNet-Lite0 stage's map at 224 px, average-pooled to 7x7."""
    from mmfuse.encoders.efficientnet import MEAN, STD, pretrained_backbone

    rows = list(csv.DictReader((data / f"{split}.csv").open(encoding="utf-8")))
    pixels = np.stack([np.asarray(Image.open(data / r["image"]).convert("RGB").resize(
        (224, 224), Image.Resampling.BILINEAR)) for r in rows])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    backbone = pretrained_backbone("lite0", (224, 224))
    ends = {block: stage + 1 for stage, (block, _) in enumerate(backbone.stage_ends)}
    maps: dict[str, list] = {}
    with torch.no_grad():
        for batch in x.split(50):
            h = backbone.stem(batch)
            for i, block in enumerate(backbone.blocks):
                h = block(h)
                if i in ends:
                    maps.setdefault(f"stage {ends[i]}", []).append(F.adaptive_avg_pool2d(h, 7))
            maps.setdefault("head (1280)", []).append(backbone.head(h))
    return rows, {k: torch.cat(v) for k, v in maps.items()}


def pooled(maps: torch.Tensor, mode: str) -> np.ndarray:
    """``[N, C, 7, 7]`` maps -> ``[N, C]`` (mean) or ``[N, C*49]`` (flat)."""
    return (maps.mean((2, 3)) if mode == "mean" else maps.flatten(1)).numpy()


def probe_rows(data: Path) -> list[dict]:
    """Linear-probe accuracy of every stage, mean-pooled and flattened, per question type."""
    from sklearn.linear_model import LogisticRegression

    train_rows, train = stage_maps(data, "train")
    test_rows, test = stage_maps(data, "test")
    out = []
    for stage in train:
        row = {"stage": stage, "channels": int(train[stage].shape[1])}
        for qtype in QTYPES:
            fit = [i for i, r in enumerate(train_rows) if r["qtype"] == qtype]
            held = [i for i, r in enumerate(test_rows) if r["qtype"] == qtype]
            for mode in ("mean", "flat"):
                a, b = (pooled(maps[stage][rows], mode) for maps, rows in
                        ((train, fit), (test, held)))
                mu, sd = a.mean(0), a.std(0) + 1e-6
                clf = LogisticRegression(max_iter=300, C=0.5).fit(
                    (a - mu) / sd, [train_rows[i]["answer"] for i in fit])
                row[f"{qtype} {mode}"] = clf.score((b - mu) / sd,
                                                   [test_rows[i]["answer"] for i in held])
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def write(probes: list[dict], runs: list[dict], captions: list[dict],
          args: argparse.Namespace) -> None:
    (RESULTS / "image_defaults.json").write_text(json.dumps(
        {"probes": probes, "photo_qa": runs, "image_caption": captions}, indent=1) + "\n")
    probe_table = markdown_table(
        ["stage", "channels", *(f"{q} {m}" for q in QTYPES for m in ("mean", "flat"))],
        [[p["stage"], p["channels"], *(f"{p[f'{q} {m}']:.2f}" for q in QTYPES
                                       for m in ("mean", "flat"))] for p in probes])
    run_table = markdown_table(
        ["image input", "all", *QTYPES, "epochs", "fit s"],
        [[r["variant"], f"**{r['all']:.1%}**", *(f"{r.get(q, float('nan')):.1%}" for q in QTYPES),
          r["epochs"], f"{r['seconds']:.0f}"] for r in runs])
    caption_table = markdown_table(
        ["image input", "exact match", "epochs", "fit s"],
        [[r["variant"], f"**{r['all']:.1%}**", r["epochs"], f"{r['seconds']:.0f}"]
         for r in captions])
    (RESULTS / "image_defaults.md").write_text(
        "# Image encoders at their defaults: colour, shape, side, counting\n\n"
        f"Task `photo_qa` (seed {args.seed}): {args.train} training and {args.test} test rows; "
        "1-3 shapes of one colour and kind in one half of a 64-px grey photograph; a question "
        "on colour, shape, side or number; a one-word `type: text` answer. Minimal config, "
        "only the image input's options named; exact match on new pictures, per question "
        "type. Seconds are wall time of `fit` and depend on the machine's load.\n\n"
        "## What each EfficientNet-Lite0 stage keeps (linear probes, frozen, 224 px)\n\n"
        + (probe_table if probes else "(not run: `--skip-probes`)")
        + "\n\nColour is kept by the early stages (stage 1: 1.00) and partly lost by the last "
        "map; where a shape is needs the grid (flat), not the mean; counting is best in the "
        "middle stages.\n\n## End to end, `photo_qa`\n\n" + run_table
        + "\n\n## End to end, `image_caption` (the `cnn` variants)\n\n" + caption_table
        + "\n\n**The rule.** `cnn`: the pixels' (x, y) as input channels, `pool: max` and a "
        "6-pixel training shift. The flattened grid memorises where each training shape sat "
        "(training loss near zero by epoch 20, validation loss rising from epoch 9; dropout "
        "0.3 did not help): shape stays near chance whatever early stopping does. Shared "
        "pooling (mean or max) learns shape; the shift keeps it from memorising; the input "
        "(x, y) lets a pooled vector still say where. Mean pooling with the shift failed the "
        "captions (the training loss stalled at 0.15 with left and right confused), and the "
        "flattened grid with coords and shift was not robust: on another draw of `photo_qa` "
        "(seed 11, 1,000 rows) it answered 47.6% of shape questions where `pool: max` answered "
        "87.8%. `efficientnet_lite0`: stages 1 and 3 (colour at 1.00 and counting at 0.89 in "
        "the linear probes, where the last map has 0.88 and 0.62), pooled onto the final grid "
        "for the tokens and on a 3x3 grid for the pooled vector; stages 1, 3 and 4 were no "
        "better end to end (86.3% vs 88.5% in a run beside this table's), and a 2x2 or 4x4 "
        "grid no better in the probes. Dropout 0.3 on the last map did not help (table).\n\n"
        f"Machine: {machine()}\n\nCommand: `{command()}`\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, captions_data = Path(tmp) / "photo_qa", Path(tmp) / "image_caption"
        generate_probe("photo_qa", data, args.train, args.test, args.seed)
        generate_probe("image_caption", captions_data, 1000, 300, 11)
        probes = [] if args.skip_probes else probe_rows(data)
        runs, captions = [], []
        for name, image in VARIANTS.items():
            runs.append({"variant": name, **run("photo_qa", data, image)})
            print(json.dumps(runs[-1]), flush=True)
            write(probes, runs, captions, args)
        for name in CAPTION_VARIANTS:
            captions.append({"variant": name, **run("image_caption", captions_data,
                                                    VARIANTS[name])})
            print(json.dumps(captions[-1]), flush=True)
            write(probes, runs, captions, args)
        write(probes, runs, captions, args)


if __name__ == "__main__":
    main()
