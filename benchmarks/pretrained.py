"""Transfer from ImageNet: a from-scratch CNN against a frozen and a fine-tuned EfficientNet-Lite0.

The task is ``photo-views`` (``mmfuse datasets photo-views``): jittered views of ten photographs
that ship offline in scikit-image and scikit-learn, test views from a part of each photo that no
training view shows. Each encoder trains on 10%, 30% and 100% of the training views (the same
subsets for every encoder):

- **scratch**: ``{type: cnn}`` at its defaults (64 px), every training option at its default;
- **frozen**: ``{type: efficientnet_lite0}`` at its defaults (frozen, 224 px, cached features),
  every training option at its default;
- **fine-tuned**: ``{type: efficientnet_lite0, freeze: false}`` with
  ``pretrained_lr_multiplier: 0.1`` for a fixed ``--finetune-epochs`` (it runs the whole network
  forward and backward on every batch, ~100x the cost of an epoch on cached features).

It records test accuracy, the seconds of the first epoch and the median of the later ones (from
``metrics.jsonl``), and the caching time. The epoch-time target is measured in the same run:
the frozen encoder trained for three epochs with ``cache_features: false`` (the encoder runs
in every epoch) against the cached run. With ``--others`` the frozen backbone also replaces the
CNN on av-digits (``examples/av_digits_image.yaml``, the digit image alone) and on Sort-of-CLEVR
(``examples/sort_of_clevr_relation.yaml``, a relation network over the image's cells).

Writes ``benchmarks/results/pretrained.md`` and ``pretrained.json``.

Run: ``python benchmarks/pretrained.py [--fractions 0.1 0.3 1.0] [--finetune-epochs 6]
[--others] [--threads N]``
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command, machine, markdown_table

import mmfuse

OUTPUT = {"name": "label", "type": "category"}
ENCODERS = {
    "scratch": ({"type": "cnn"}, {}),
    "frozen": ({"type": "efficientnet_lite0"}, {}),
    "fine-tuned": ({"type": "efficientnet_lite0", "freeze": False},
                   {"pretrained_lr_multiplier": 0.1}),
}


def photo_config(encoder: dict, training: dict) -> dict:
    return {"inputs": [{"name": "image", "type": "image", "encoder": encoder}],
            "outputs": [OUTPUT], "training": training}


def subset(table: Path, fraction: float, seed: int) -> Path:
    """The first ``fraction`` of a seeded shuffle of the rows, stratified by label."""
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    kept = []
    for label_rows in by_label.values():
        order = rng.permutation(len(label_rows))
        kept += [label_rows[i] for i in order[:max(2, round(fraction * len(label_rows)))]]
    out = table.with_name(f"train_{round(100 * fraction)}.csv")
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return out


def fit(config: dict, train: Path, run: Path, threads: int | None) -> dict:
    """Train from a config; test accuracy is added by the caller. Epoch times from
    ``metrics.jsonl``."""
    model = mmfuse.Model.from_config(config)
    start = time.perf_counter()
    summary = model.fit(train, out=run, threads=threads, overwrite=True)
    seconds = time.perf_counter() - start
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    times = [e["epoch_seconds"] for e in epochs]
    return {"model": model, "epochs": summary["epochs"], "fit_seconds": round(seconds, 1),
            "first_epoch_s": round(times[0], 3),
            "later_epoch_s": round(statistics.median(times[1:]), 3) if len(times) > 1 else None,
            "before_training_s": round(seconds - sum(times), 1)}


def accuracy(model: mmfuse.Model, table: Path) -> float:
    return model.evaluate(table)["outputs"]["label"]["accuracy"]


def photo_rows(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every encoder at every fraction, and the cached-against-live epoch ratio."""
    from mmfuse.datasets.photo_views import generate_photo_views

    data = root / "photo-views"
    generate_photo_views(data, seed=args.seed)
    rows = []
    for fraction in args.fractions:
        train = subset(data / "train.csv", fraction, args.seed)
        for name, (encoder, training) in ENCODERS.items():
            training = dict(training)
            if name == "fine-tuned":
                training["epochs"] = args.finetune_epochs
            result = fit(photo_config(encoder, training), train,
                         root / f"{name}-{fraction}", args.threads)
            result["accuracy"] = accuracy(result.pop("model"), data / "test.csv")
            row = {"task": "photo-views", "fraction": fraction, "encoder": name,
                   "train_rows": sum(1 for _ in train.open()) - 1, **result}
            print(json.dumps(row), flush=True)
            rows.append(row)
    live_config = photo_config({"type": "efficientnet_lite0"}, {"epochs": 3})
    live_config["inputs"][0]["cache_features"] = False
    live = fit(live_config, data / "train.csv", root / "uncached", args.threads)
    live.pop("model")
    cached = next(r for r in rows if r["encoder"] == "frozen" and r["fraction"] == 1.0)
    ratio = {"uncached_epoch_s": live["later_epoch_s"], "cached_epoch_s": cached["later_epoch_s"],
             "ratio": round(cached["later_epoch_s"] / live["later_epoch_s"], 4)}
    print(json.dumps(ratio), flush=True)
    return rows, ratio


def other_rows(root: Path, args: argparse.Namespace) -> list[dict]:
    """The frozen backbone in place of the CNN on av-digits and Sort-of-CLEVR."""
    import yaml

    from mmfuse.datasets.av_digits import generate_av_digits
    from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr

    rows = []
    avd = root / "av-digits"
    generate_av_digits(avd, seed=args.seed)
    clevr = root / "sort-of-clevr"
    generate_sort_of_clevr(clevr, n_train=args.clevr_images, n_test=500, seed=args.seed)
    examples = Path(__file__).resolve().parents[1] / "examples"
    tasks = [("av-digits (image alone)", "av_digits_image.yaml", avd, "label", None),
             ("Sort-of-CLEVR", "sort_of_clevr_relation.yaml", clevr, "answer", "qtype")]
    for task, name, data, target, by in tasks:
        for label, frozen in (("example config (cnn)", False), ("frozen efficientnet_lite0",
                                                                 True)):
            config = yaml.safe_load((examples / name).read_text())
            config["training"]["max_minutes"] = args.minutes
            if frozen:
                image = next(i for i in config["inputs"] if i["type"] == "image")
                image["encoder"] = {"type": "efficientnet_lite0"}
                image["preprocess"] = {}
            result = fit(config, data / "train.csv", root / f"{name}-{frozen}", args.threads)
            model = result.pop("model")
            evaluated = model.evaluate(data / "test.csv", by=by)
            row = {"task": task, "encoder": label, **result,
                   "accuracy": evaluated["outputs"][target]["accuracy"]}
            if by:
                row["groups"] = {g: m["outputs"][target]["accuracy"]
                                 for g, m in evaluated["groups"].items()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def write_results(photo: list[dict], ratio: dict, others: list[dict], commands: list[str],
                  args: argparse.Namespace) -> None:
    (RESULTS / "pretrained.json").write_text(json.dumps(
        {"photo_views": photo, "epoch_ratio": ratio, "others": others, "commands": commands},
        indent=1) + "\n")
    table = markdown_table(
        ["train views", "encoder", "test accuracy", "epochs", "first epoch (s)",
         "later epochs (s, median)", "before training (s)", "fit (s)"],
        [[f"{r['train_rows']} ({r['fraction']:.0%})", r["encoder"], f"**{r['accuracy']:.1%}**",
          r["epochs"], r["first_epoch_s"], r["later_epoch_s"], r["before_training_s"],
          r["fit_seconds"]] for r in photo])
    gains = []
    for fraction in args.fractions:
        at = {r["encoder"]: r["accuracy"] for r in photo if r["fraction"] == fraction}
        gains.append(f"{fraction:.0%}: frozen - scratch = "
                     f"**{100 * (at['frozen'] - at['scratch']):+.1f}** points")
    other = markdown_table(
        ["task", "image encoder", "test accuracy", "epochs", "later epochs (s)", "fit (s)"],
        [[r["task"], r["encoder"], f"{r['accuracy']:.1%}" + (
            " (" + ", ".join(f"{g} {a:.1%}" for g, a in r.get("groups", {}).items()) + ")"
            if r.get("groups") else ""), r["epochs"], r["later_epoch_s"], r["fit_seconds"]]
         for r in others]) if others else "(not run; `--others`)"
    (RESULTS / "pretrained.md").write_text(
        "# Pretrained image encoders: transfer on a few photographs\n\n"
        "Task: `photo-views` (seed "
        f"{args.seed}): ten classes, one per photograph shipped offline (scikit-image: "
        "astronaut, chelsea, coffee, rocket, motorcycle_left, brick, grass, gravel; "
        "scikit-learn: china, flower), 96x96 jittered views, test views from a region of each "
        "photo no training view shows. Chance is 10%.\n\n"
        "- **scratch**: `{type: cnn}`, every option at its default;\n"
        "- **frozen**: `{type: efficientnet_lite0}`, every option at its default (frozen "
        "ImageNet weights, 224 px, features cached before the first epoch);\n"
        "- **fine-tuned**: `{type: efficientnet_lite0, freeze: false}`, "
        f"`pretrained_lr_multiplier: 0.1`, {args.finetune_epochs} epochs.\n\n"
        f"{table}\n\n" + "\n".join(f"- {g}" for g in gains) + "\n\n"
        "## Cached features: epoch time\n\n"
        f"The frozen encoder with `cache_features: false` runs the network in every epoch: "
        f"{ratio['uncached_epoch_s']} s per epoch on the full training split, against "
        f"{ratio['cached_epoch_s']} s per epoch on cached features: **{ratio['ratio']:.3f}x** "
        "(target: at most 0.1). Epoch times are `epoch_seconds` in `metrics.jsonl` (training "
        "and validation), the median of the epochs after the first.\n\n"
        "## The frozen backbone on the other built-in tasks\n\n"
        f"Each run capped at {args.minutes} minutes; the example config's image encoder "
        "replaced by `{type: efficientnet_lite0}` with its own preprocessing.\n\n"
        f"{other}\n\n"
        f"Machine: {machine()}\n\nCommands: " + "; ".join(f"`{c}`" for c in commands) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.3, 1.0])
    parser.add_argument("--finetune-epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--others", action="store_true")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--clevr-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only-others", action="store_true",
                        help="rerun only the other tasks; keep the photo-views rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only_others:
            kept = json.loads((RESULTS / "pretrained.json").read_text())
            photo, ratio, commands = kept["photo_views"], kept["epoch_ratio"], kept.get(
                "commands", ["python benchmarks/pretrained.py --others --minutes 6"])
        else:
            photo, ratio, commands = *photo_rows(Path(tmp), args), []
        others = other_rows(Path(tmp), args) if args.others or args.only_others else []
        write_results(photo, ratio, others, [*commands[:1], command()], args)


if __name__ == "__main__":
    main()
