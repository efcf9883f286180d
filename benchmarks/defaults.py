"""Fresh tasks at the defaults: can a new user's minimal config learn each modality?

For every probe task in ``mmfuse.datasets.probes`` (three per modality: image, video, audio,
text; category and text outputs; none of them a built-in dataset) this generates a table with
its own seed, then trains two configs from scratch and reports test accuracy (exact match for
a text output) beside the majority baseline:

- **defaults**: the minimal config, only the types of the inputs and the output
  (``minimal_config``); every encoder, fusion, head and training option at its default.
- **tuned**: options chosen for the task by hand (listed in ``TUNED`` and printed in the
  results), trained for a fixed budget of ``--tuned-epochs`` epochs (one-cycle schedule, no
  early stopping), the same for every task; a budget in epochs, not minutes, keeps the
  figures independent of the machine's load.

The target: every task at the defaults within 10 points of its tuned config. Writes
``benchmarks/results/defaults.md`` and ``defaults.json``; the rows of tasks not rerun are
kept from the last run (same seed and options).

Run: ``python benchmarks/defaults.py [--only image_qa ...] [--train 1000] [--test 300]
[--seed 11] [--tuned-epochs 40] [--threads N] [--previous]``
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, command, machine, markdown_table

import mmfuse
from mmfuse.datasets.probes import PROBES, generate_probe, minimal_config

TRAIN_ROWS = {"image": 1000, "video": 800, "audio": 1000, "text": 1000}

_LONG = {"learning_rate": 0.002, "lr_schedule": "onecycle", "warmup_epochs": 2,
         "early_stopping_patience": None, "batch_size": 32}
_BOW = {"type": "bow", "embedding_dim": 32, "dim": 64}
_AUDIO = {"preprocess": {"n_mels": 40},
          "encoder": {"type": "audio_cnn", "channels": [16, 32, 64], "temporal": "gru"}}
_VIDEO = {"preprocess": {"size": 48},
          "encoder": {"type": "frame_cnn", "channels": [16, 32, 32], "pool": "flatten",
                      "temporal": "gru"}}
_BIRNN = {"type": "gru", "bidirectional": True, "pool": "max"}

TUNED: dict[str, dict] = {
    # per input: options merged into the minimal config's input of that name; fusion; training
    "image_qa": {"inputs": {"question": {"encoder": _BOW}}, "fusion": {"type": "film"}},
    "image_count": {"inputs": {"image": {"encoder": {"type": "cnn", "channels": [32, 64, 64]}}}},
    "image_caption": {"inputs": {"image": {"preprocess": {"size": 48}}}},
    "photo_qa": {"inputs": {"image": {"preprocess": {"pad_crop": 6},
                                      "encoder": {"type": "cnn", "pool": "mean"}}}},
    "video_qa": {"inputs": {"video": _VIDEO, "question": {"encoder": _BOW}}},
    "video_count": {"inputs": {"video": {**_VIDEO, "preprocess": {"size": 48, "frames": 20}}}},
    "video_caption": {"inputs": {"video": _VIDEO}},
    "audio_order": {"inputs": {"audio": _AUDIO}},
    "audio_qa": {"inputs": {"audio": _AUDIO, "question": {"encoder": _BOW}}},
    "audio_caption": {"inputs": {"audio": _AUDIO}},
    "text_order": {"inputs": {"sentence": {"encoder": _BIRNN}}},
    "text_negation": {"inputs": {"review": {"encoder": _BIRNN}}},
    "text_translate": {"inputs": {"english": {"encoder": _BIRNN}}},
}


# the defaults before issue 17: order-blind video and audio encoders, 8 frames, 10 epochs
PREVIOUS = {"video": {"preprocess": {"frames": 8},
                      "encoder": {"type": "frame_cnn", "pool": "mean", "temporal": "mean"}},
            "audio": {"encoder": {"type": "audio_cnn", "temporal": "none"}}}


# the pretrained image encoder at its defaults, in place of the default image or frame encoder
PRETRAINED = {"image": {"encoder": {"type": "efficientnet_lite0"}},
              "video": {"encoder": {"type": "frame_cnn",
                                    "backbone": {"type": "efficientnet_lite0"}}}}


def efficientnet_config(name: str) -> dict:
    """The minimal config with ``efficientnet_lite0`` (a ``frame_cnn`` backbone for video)
    named as the encoder and nothing else set."""
    config = minimal_config(name)
    for item in config["inputs"]:
        item.update(copy.deepcopy(PRETRAINED.get(item["type"], {})))
    return config


SEARCH = {"training.learning_rate": {"space": "loguniform", "low": 3.0e-4, "high": 3.0e-3},
          "training.batch_size": {"space": "choice", "values": [16, 32, 64]}}
"""``--searched``: the space ``mmfuse tune`` searches around the minimal config (TPE, seed 0,
``SEARCH_TRIALS`` trials, metric ``valid_accuracy``)."""
SEARCH_TRIALS = 4


def searched(name: str, data: Path, work: Path) -> dict:
    """``mmfuse tune`` over ``SEARCH`` from the minimal config; the best trial's test score,
    epochs and training seconds (its own fit, not the whole search's)."""
    config = {**minimal_config(name), "tune": {"metric": "valid_accuracy", "parameters": SEARCH}}
    path = work / f"{name}-tune.yaml"
    path.write_text(json.dumps(config))
    study = work / f"{name}-study"
    subprocess.run([sys.executable, "-m", "mmfuse.cli", "tune", str(path), "--data",
                    str(data / "train.csv"), "--trials", str(SEARCH_TRIALS), "--out",
                    str(study), "--json"], check=True, capture_output=True, text=True)
    with (study / "trials.csv").open(encoding="utf-8") as fh:
        trials = [t for t in csv.DictReader(fh) if t["state"] == "complete"]
    best = max(trials, key=lambda t: float(t["valid_accuracy"]))
    model = mmfuse.Model.load(study / "best")
    epochs = sum(1 for _ in (study / "best" / "metrics.jsonl").open()) \
        if (study / "best" / "metrics.jsonl").is_file() else None
    return {"score": score(model, data / "test.csv", PROBES[name].target), "epochs": epochs,
            "seconds": float(best["seconds"]),
            "params": {k: best[k] for k in SEARCH}, "search_seconds": round(
                sum(float(t["seconds"]) for t in trials), 1)}


def previous_config(name: str) -> dict:
    """The minimal config as the previous release resolved it (``--previous``)."""
    config = minimal_config(name)
    for spec in config["inputs"]:
        spec.update(copy.deepcopy(PREVIOUS.get(spec["type"], {})))
    config["fusion"] = {"type": "concat"}
    config["training"] = {"epochs": 10, "early_stopping_patience": 5}
    return config


def tuned_config(name: str, epochs: int) -> dict:
    """The minimal config with the task's tuned options and the shared training budget."""
    config = minimal_config(name)
    tuned = TUNED[name]
    for spec in config["inputs"]:
        spec.update(copy.deepcopy(tuned.get("inputs", {}).get(spec["name"], {})))
    if "fusion" in tuned:
        config["fusion"] = tuned["fusion"]
    config["training"] = {**_LONG, "epochs": epochs, **tuned.get("training", {})}
    return config


def score(model: mmfuse.Model, table: Path, target: str) -> float:
    """Test accuracy, or exact match for a text output."""
    metrics = model.evaluate(table)["outputs"][target]
    return metrics["exact_match"] if "exact_match" in metrics else metrics["accuracy"]


def run_probe(name: str, root: Path, n_train: int, n_test: int, seed: int,
              tuned_epochs: int, threads: int | None, only: str | None,
              row: dict | None) -> dict:
    """Train the task's configs and return its row (``only``: add just the ``previous``
    release's defaults or the ``efficientnet`` column to an existing row)."""
    probe = PROBES[name]
    data = root / name
    summary = generate_probe(name, data, n_train, n_test, seed)
    row = row or {"task": name, "modality": probe.modality, "output": probe.output,
                  "properties": list(probe.properties), "train_rows": n_train,
                  "test_rows": n_test, "majority": summary["majority_baseline"]}
    if only == "searched":
        row["searched"] = searched(name, data, root)
        print(json.dumps({"task": name, "searched": row["searched"]}), flush=True)
        return row
    extra = {"previous": previous_config, "efficientnet": efficientnet_config}
    runs = [(only, extra[only](name))] if only else [
        ("defaults", minimal_config(name)), ("tuned", tuned_config(name, tuned_epochs))]
    for label, config in runs:
        model = mmfuse.Model.from_config(config)
        start = time.perf_counter()
        fitted = model.fit(data / "train.csv", threads=threads)
        row[label] = {"score": score(model, data / "test.csv", probe.target),
                      "epochs": fitted["epochs"], "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps({"task": name, label: row[label]}), flush=True)
    row["gap"] = row["tuned"]["score"] - row["defaults"]["score"]
    return row


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    (RESULTS / "defaults.json").write_text(json.dumps(rows, indent=1) + "\n")
    # every command that produced a kept row, in order
    log = RESULTS / "defaults_commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    if command() not in commands:
        log.write_text("\n".join([*commands, command()]) + "\n")
        commands.append(command())
    table = markdown_table(
        ["task", "output", "probes", "train rows", "majority", "previous defaults",
         "defaults", "efficientnet_lite0", "searched", "tuned",
         "tuned - defaults (points)", "defaults: epochs, s", "efficientnet: epochs, s",
         "searched: epochs, s", "tuned: epochs, s"],
        [[r["task"], r["output"], ", ".join(r["properties"]), r["train_rows"],
          f"{r['majority']:.1%}",
          f"{r['previous']['score']:.1%}" if "previous" in r else "",
          f"**{r['defaults']['score']:.1%}**",
          f"{r['efficientnet']['score']:.1%}" if "efficientnet" in r else "",
          f"{r['searched']['score']:.1%}" if "searched" in r else "",
          f"{r['tuned']['score']:.1%}", f"{100 * r['gap']:+.1f}",
          f"{r['defaults']['epochs']}, {r['defaults']['seconds']:.0f}",
          f"{r['efficientnet']['epochs']}, {r['efficientnet']['seconds']:.0f}"
          if "efficientnet" in r else "",
          f"{r['searched']['epochs']}, {r['searched']['seconds']:.0f}"
          if "searched" in r else "",
          f"{r['tuned']['epochs']}, {r['tuned']['seconds']:.0f}"] for r in rows])
    within = sum(r["gap"] <= 0.10 for r in rows)
    search = [r for r in rows if "searched" in r]
    near = [r["task"] for r in search
            if r["searched"]["score"] - r["defaults"]["score"] <= 0.05
            and r["defaults"]["seconds"] <= 1.5 * r["searched"]["seconds"]]
    search_line = (
        f"\n\n**Searched** (`--searched`, {len(search)} tasks): `mmfuse tune` from the minimal "
        f"config, {SEARCH_TRIALS} trials (TPE, seed 0, metric `valid_accuracy`) over "
        f"`{json.dumps(SEARCH)}`; the best trial's test score and its own training time. "
        f"**{len(near)} of {len(search)}** tasks at the defaults within 5 points of the "
        "searched config at no more than 1.5x its training time"
        + (f" (not: {', '.join(sorted({r['task'] for r in search} - set(near)))})"
           if len(near) < len(search) else "") + "." if search else "")
    tuned = "\n".join(f"- `{name}`: {json.dumps(TUNED[name])}" for name in TUNED)
    (RESULTS / "defaults.md").write_text(
        "# Fresh tasks at the defaults\n\n"
        "Each task is generated anew (seed "
        f"{args.seed}; {args.test} test rows) and trained from scratch twice: **defaults** is "
        "the minimal config, only the types of the inputs and the output; **tuned** adds the "
        f"options below and trains {args.tuned_epochs} epochs (one-cycle schedule, learning "
        f"rate {_LONG['learning_rate']}, batch {_LONG['batch_size']}, no early stopping). "
        "Test accuracy; exact match for text outputs. Seconds are wall time of `fit` "
        "(preprocessing included) and depend on the machine's load.\n\n"
        "**previous defaults** (some tasks, `--previous`): the minimal config as the release "
        "before resolved it: `frame_cnn` with `pool: mean, temporal: mean` over 8 frames, "
        "`audio_cnn` with `temporal: none`, `concat`, 10 epochs, patience 5.\n\n"
        "**The image encoders' defaults** (issue 28, measured in "
        "[image_defaults.md](image_defaults.md)): `cnn` takes its pixels' (x, y) as two more "
        "input channels (`coords: true`), max-pools its grid (`pool: max`) and trains on "
        "images shifted by up to 6 pixels (`preprocess.pad_crop: 6`), so a small table "
        "teaches it shape, not where each training shape sat; a frozen "
        "`efficientnet_lite0/1/2` appends its stage-1 and stage-3 maps, pooled onto the final "
        "grid, to every token and those maps on a 3x3 grid to its pooled vector "
        "(`early_stages: [1, 3]`, `pooled_grid: 3`): "
        "ImageNet's last map alone loses colour (trained to ignore it) and, mean-pooled, "
        "where things are.\n\n"
        "**efficientnet_lite0** (image and video tasks, `--efficientnet`): the minimal config "
        "with only the image encoder named, `{type: efficientnet_lite0}` (for video "
        "`{type: frame_cnn, backbone: {type: efficientnet_lite0}}`), everything else at its "
        "defaults: frozen ImageNet weights, 224 px, cached features.\n\n"
        f"{table}\n\n**{within} of {len(rows)}** tasks at the defaults within 10 points of "
        f"their tuned config.{search_line}\n\n"
        f"Tuned options (merged into each input; `training` as above):\n\n{tuned}\n\n"
        f"Machine: {machine()}\n\nCommands (each adds or replaces the rows it names): "
        + "; ".join(f"`{c}`" for c in commands) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--train", type=int, default=None,
                        help="training rows (default: per modality, TRAIN_ROWS)")
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--tuned-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit")
    parser.add_argument("--previous", action="store_true",
                        help="only add the previous release's defaults to the kept rows")
    parser.add_argument("--efficientnet", action="store_true",
                        help="only add the efficientnet_lite0 column to the kept rows")
    parser.add_argument("--searched", action="store_true",
                        help="only add the searched column (mmfuse tune) to the kept rows")
    args = parser.parse_args()
    kept = RESULTS / "defaults.json"
    rows = {r["task"]: r for r in json.loads(kept.read_text())} if kept.is_file() else {}
    only = next((flag for flag in ("previous", "efficientnet", "searched")
                 if getattr(args, flag)), None)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            n_train = args.train or TRAIN_ROWS[PROBES[name].modality]
            rows[name] = run_probe(name, Path(tmp), n_train, args.test, args.seed,
                                   args.tuned_epochs, args.threads, only,
                                   rows.get(name) if only else None)
            write_results([rows[n] for n in PROBES if n in rows], args)


if __name__ == "__main__":
    main()
