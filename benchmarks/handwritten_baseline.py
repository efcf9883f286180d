"""The minimal config of ARCHITECTURE.md trained from the CLI vs a hand-written PyTorch model.

Both see the same Sort-of-CLEVR training, validation and test tables, train for the same number
of epochs with the same optimiser settings, and keep the weights of the epoch with the lowest
validation loss. The hand-written model has the same shape as the config's defaults: a conv
stack 32-64-64-64 (3x3, stride 2, batch norm, ReLU) on 64x64 images that enter with two (x, y)
channels (CoordConv), its grid with (x, y) position channels max-pooled and projected to 256,
the images shifted by up to 6 pixels while training (one shift per batch); a 64-d embedding
and a GRU of 128 for the question; concatenation and an MLP 256-256; a softmax over the
answers. It is the straightforward PyTorch a user would write: a Dataset of rows, a shuffled
batch of 64, each row's image through the CNN.

A second, **grouped** hand-written loop is the strong reference: it batches the rows of one
image together (images shuffled, then their rows) and runs each distinct image of a batch
through the CNN once, as mmfuse does (``group_rows_by_file``), so it does the same arithmetic
as mmfuse with none of its bookkeeping (validation metrics, checkpoints, the bundle written at
each best epoch, progress, the run folder). Both read the decoded images as one tensor.

Reports test accuracy of both and training wall time as a ratio (mmfuse / hand-written).
Run: ``python benchmarks/handwritten_baseline.py [--images 650] [--epochs 10]``
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import RESULTS, command, machine, markdown_table
from PIL import Image
from torch import nn

MINIMAL = """\
inputs:
  - {name: image, type: image, encoder: {type: cnn}}
  - {name: question, type: text, encoder: {type: gru}}
fusion: {type: concat}
outputs:
  - {name: answer, type: category}
training: {epochs: 10, batch_size: 64, learning_rate: 0.001}
"""


# ---------------------------------------------------------------- the hand-written model
def load_rows(table: Path) -> list[dict]:
    with table.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


class HandWritten(nn.Module):
    def __init__(self, vocab: int, classes: int) -> None:
        super().__init__()
        layers, width = [], 5  # RGB and the pixels' (x, y)
        for out in (32, 64, 64, 64):
            layers += [nn.Conv2d(width, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.cnn = nn.Sequential(*layers)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 4), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys]).unsqueeze(0))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64),
                                indexing="ij")
        self.register_buffer("pixel_coords", torch.stack([xs, ys]).unsqueeze(0))
        self.image_fc = nn.Sequential(nn.Linear(66, 256), nn.ReLU())
        self.embed = nn.Embedding(vocab, 64, padding_idx=0)
        self.gru = nn.GRU(64, 128, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(256 + 128, 256), nn.ReLU(), nn.Linear(256, 256),
                                 nn.ReLU(), nn.Linear(256, classes))

    def forward(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                which: torch.Tensor | None = None):
        """``which``: each row's image among ``images`` (None: one image per row)."""
        if self.training:  # shift by up to 6 pixels, edges replicated
            dx, dy = torch.randint(0, 13, (2,)).tolist()
            images = nn.functional.pad(images, (6, 6, 6, 6), mode="replicate")[
                ..., dy:dy + 64, dx:dx + 64]
        images = torch.cat([images, self.pixel_coords.expand(len(images), -1, -1, -1)], 1)
        grid = self.cnn(images)
        grid = torch.cat([grid, self.coords.expand(len(grid), -1, -1, -1)], 1)
        image = self.image_fc(grid.amax((2, 3)))
        if which is not None:
            image = image[which]
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.gru(packed)
        return self.mlp(torch.cat([image, hidden[-1]], -1))


def encode(rows: list[dict], root: Path, vocab: dict, labels: dict, stats=None):
    images = np.stack([np.asarray(Image.open(root / r["image"]).convert("RGB")
                                  .resize((64, 64), Image.Resampling.BILINEAR)) for r in rows])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    if stats is None:
        stats = images.mean((0, 2, 3), keepdim=True), images.std((0, 2, 3), keepdim=True)
    images = (images - stats[0]) / stats[1]
    tokens = [[vocab.get(w, 1) for w in words(r["question"])] for r in rows]
    lengths = torch.tensor([len(t) for t in tokens])
    ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, t in enumerate(tokens):
        ids[i, : len(t)] = torch.tensor(t)
    answers = torch.tensor([labels.get(r["answer"], -100) for r in rows])
    return images, ids, lengths, answers, stats


def grouped_order(files: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
    """Rows of one image together (images shuffled, then their rows), cut into batches of 64."""
    groups = [rng.permutation(np.flatnonzero(files == f)) for f in rng.permutation(
        np.unique(files))]
    order = torch.from_numpy(np.concatenate(groups))
    return list(order.split(64))


def train_handwritten(train: Path, valid: Path, test: Path, epochs: int,
                      grouped: bool = False) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    train_rows, valid_rows = load_rows(train), load_rows(valid)
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for r in train_rows
                                                    for w in words(r["question"])}))}
    labels = {a: i for i, a in enumerate(sorted({r["answer"] for r in train_rows}))}
    *train_x, train_y, stats = encode(train_rows, train.parent, vocab, labels)
    *valid_x, valid_y, _ = encode(valid_rows, valid.parent, vocab, labels, stats)
    files = np.unique([r["image"] for r in train_rows], return_inverse=True)[1]
    model = HandWritten(len(vocab) + 2, len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        batches = grouped_order(files, rng) if grouped else torch.randperm(len(train_y)).split(64)
        for batch in batches:
            if grouped:  # each distinct image of the batch once
                _, first, which = np.unique(files[batch.numpy()], return_index=True,
                                            return_inverse=True)
                images = train_x[0][batch[torch.from_numpy(first)]]
                out = model(images, train_x[1][batch], train_x[2][batch],
                            torch.from_numpy(which))
            else:
                out = model(*(x[batch] for x in train_x))
            loss = nn.functional.cross_entropy(out, train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            valid_loss = nn.functional.cross_entropy(model(*valid_x), valid_y).item()
        if valid_loss < best:
            best, best_state = valid_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    *test_x, test_y, _ = encode(load_rows(test), test.parent, vocab, labels, stats)
    with torch.no_grad():
        accuracy = (model(*test_x).argmax(-1) == test_y).float().mean().item()
    return {"accuracy": accuracy, "seconds": seconds}


# ---------------------------------------------------------------- mmfuse from the CLI
def mmfuse(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "mmfuse.cli", *map(str, args)],
                            capture_output=True, text=True, check=True)
    return result.stdout


def train_mmfuse(config: Path, train: Path, valid: Path, test: Path, run: Path) -> dict:
    start = time.perf_counter()
    mmfuse("train", config, "--data", train, "--valid", valid, "--out", run, "--json")
    seconds = time.perf_counter() - start
    result = json.loads(mmfuse("evaluate", run, "--data", test, "--json"))
    return {"accuracy": result["outputs"]["answer"]["accuracy"], "seconds": seconds}


def split_by_image(table: Path, valid_images: int) -> tuple[Path, Path]:
    rows = load_rows(table)
    images = sorted({r["image"] for r in rows})
    held = set(images[-valid_images:])
    out = []
    for name, keep in (("fit.csv", False), ("valid.csv", True)):
        path = table.parent / name
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if (r["image"] in held) == keep)
        out.append(path)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=650, help="training images")
    parser.add_argument("--valid-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    from mmfuse.datasets.sort_of_clevr import generate_sort_of_clevr
    from mmfuse.threads import configure_threads

    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_sort_of_clevr(tmp, args.images + args.valid_images, args.test_images, seed=3)
        train, valid = split_by_image(tmp / "train.csv", args.valid_images)
        config = tmp / "minimal.yaml"
        data = yaml.safe_load(MINIMAL)
        data["training"]["epochs"] = args.epochs
        data["training"]["early_stopping_patience"] = None  # same epochs as the hand-written
        config.write_text(yaml.safe_dump(data))
        ours = train_mmfuse(config, train, valid, tmp / "test.csv", tmp / "run")
        hand = train_handwritten(train, valid, tmp / "test.csv", args.epochs)
        grouped = train_handwritten(train, valid, tmp / "test.csv", args.epochs, grouped=True)
    rows = [["mmfuse (minimal config, CLI)", f"{ours['accuracy']:.4f}", f"{ours['seconds']:.1f}"],
            ["hand-written PyTorch", f"{hand['accuracy']:.4f}", f"{hand['seconds']:.1f}"],
            ["hand-written PyTorch, grouped (each image once per batch)",
             f"{grouped['accuracy']:.4f}", f"{grouped['seconds']:.1f}"]]
    ratio = ours["seconds"] / hand["seconds"]
    strong = ours["seconds"] / grouped["seconds"]
    text = (
        "# Minimal config vs a hand-written PyTorch model\n\n"
        f"Sort-of-CLEVR (seed 3): {args.images} training images ({args.images * 20} rows), "
        f"{args.valid_images} validation images, {args.test_images} test images "
        f"({args.test_images * 20} questions); {args.epochs} epochs each, batch 64, AdamW 1e-3, "
        f"best epoch by validation loss; {threads} thread(s).\n\n"
        + markdown_table(["model", "test accuracy", "training wall time (s)"], rows)
        + f"\n\nTraining time ratio mmfuse / hand-written: **{ratio:.2f}**; mmfuse / "
        f"grouped hand-written: **{strong:.2f}** (mmfuse's time includes starting the CLI, "
        "decoding and caching the images, and writing the bundle each time validation "
        "improves; the hand-written loops' includes decoding the images).\n\n"
        f"Machine: {machine()}\n\nCommand: `{command()}`\n")
    (RESULTS / "handwritten_baseline.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
