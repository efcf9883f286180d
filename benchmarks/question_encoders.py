"""Why the best Sort-of-CLEVR config encodes the question with ``bow``: a hand-written probe.

The same small model (CNN grid tokens with (x, y), one dot-product attention over them driven by
the question vector, an MLP on the attended token and the question) is trained on the built-in
Sort-of-CLEVR with three question encoders, for the same wall time each:

- ``onehot``: an oracle: the (colour, question type) of each question as a 12-d one-hot vector;
- ``gru``: word embeddings and a GRU, final state (mmfuse's ``gru`` encoder);
- ``bow``: the mean of word embeddings, projected and batch-normalised (mmfuse's ``bow``).

It reports non-relational test accuracy (shape / left / top of the named object: the questions
that need the colour word bound to an image region) at fixed times. Writes
``benchmarks/results/question_encoders.md``.

Run: ``python benchmarks/question_encoders.py [--data data/sort-of-clevr] [--minutes 2]``
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, command, machine, markdown_table
from PIL import Image
from torch import nn

from mmfuse.datasets.sort_of_clevr import COLORS, generate_sort_of_clevr

NON_RELATIONAL = ("shape", "left", "top")
QUESTION_TYPES = ("shape", "left", "top", "closest", "furthest", "count")
ROWS_PER_IMAGE = 20


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def load_split(folder: Path, split: str) -> dict:
    """Images as uint8 ``[I, 3, 75, 75]`` and the questions of image i at rows 20i..20i+19."""
    rows = list(csv.DictReader(open(folder / f"{split}.csv", encoding="utf-8")))
    paths = list(dict.fromkeys(r["image"] for r in rows))
    assert len(rows) == ROWS_PER_IMAGE * len(paths) and all(
        r["image"] == paths[i // ROWS_PER_IMAGE] for i, r in enumerate(rows))
    images = np.stack([np.asarray(Image.open(folder / p).convert("RGB")) for p in paths])
    return {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            "questions": [r["question"] for r in rows], "answers": [r["answer"] for r in rows],
            "families": [r["family"] for r in rows]}


class QuestionTable:
    """Every distinct question as word ids, a length and a (colour, type) one-hot oracle."""

    def __init__(self, questions: list[str]) -> None:
        self.texts = sorted(set(questions))
        self.index = {q: i for i, q in enumerate(self.texts)}
        vocab = sorted({w for q in self.texts for w in words(q)})
        ids = {w: i + 1 for i, w in enumerate(vocab)}
        self.vocab_size = len(vocab) + 1
        width = max(len(words(q)) for q in self.texts)
        self.ids = torch.zeros(len(self.texts), width, dtype=torch.long)
        self.lengths = torch.zeros(len(self.texts), dtype=torch.long)
        self.onehot = torch.zeros(len(self.texts), len(COLORS) + len(QUESTION_TYPES))
        colours = list(COLORS)
        for i, q in enumerate(self.texts):
            ws = words(q)
            self.ids[i, :len(ws)] = torch.tensor([ids[w] for w in ws])
            self.lengths[i] = len(ws)
            self.onehot[i, colours.index(next(w for w in ws if w in colours))] = 1
            kind = ("closest" if "closest" in ws else "furthest" if "furthest" in ws
                    else "count" if "many" in ws else "left" if "left" in ws
                    else "top" if "top" in ws else "shape")
            self.onehot[i, len(colours) + QUESTION_TYPES.index(kind)] = 1


class Probe(nn.Module):
    def __init__(self, encoder: str, table: QuestionTable, answers: int, dim: int = 64) -> None:
        super().__init__()
        layers, channels = [], 3
        for _ in range(3):
            layers += [nn.Conv2d(channels, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU()]
            channels = 24
        self.cnn = nn.Sequential(*layers)
        side = 10  # 75 -> 38 -> 19 -> 10
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side),
                                indexing="ij")
        self.register_buffer("xy", torch.stack([xs, ys], -1).reshape(1, side * side, 2))
        self.encoder, self.table = encoder, table
        self.embed = nn.Embedding(table.vocab_size, 32, padding_idx=0)
        self.gru = nn.GRU(32, dim, batch_first=True)
        self.bow = nn.Sequential(nn.Linear(32, dim), nn.BatchNorm1d(dim))
        self.oracle = nn.Linear(table.onehot.shape[1], dim)
        self.key, self.query = nn.Linear(26, dim), nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Linear(26 + dim, 128), nn.ReLU(), nn.Linear(128, 128),
                                 nn.ReLU(), nn.Linear(128, answers))

    def encode_questions(self, unique: torch.Tensor) -> torch.Tensor:
        if self.encoder == "onehot":
            return self.oracle(self.table.onehot[unique])
        ids, lengths = self.table.ids[unique], self.table.lengths[unique]
        embedded = self.embed(ids)
        if self.encoder == "gru":
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True,
                                                       enforce_sorted=False)
            return self.gru(packed)[1][-1]
        real = (ids > 0).unsqueeze(-1).float()
        return self.bow((embedded * real).sum(1) / real.sum(1))

    def forward(self, pixels, image_of_row, question_of_row):
        grid = self.cnn(pixels)
        tokens = torch.cat([grid.flatten(2).transpose(1, 2),
                            self.xy.expand(grid.shape[0], -1, -1)], -1)[image_of_row]
        unique, inverse = torch.unique(question_of_row, return_inverse=True)
        q = self.encode_questions(unique)[inverse]
        scores = (self.key(tokens) @ self.query(q).unsqueeze(-1)).squeeze(-1) / q.shape[-1] ** 0.5
        attended = (scores.softmax(-1).unsqueeze(-1) * tokens).sum(1)
        return self.out(torch.cat([attended, q], -1))


def pixels(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.85) / 0.3


@torch.no_grad()
def non_relational_accuracy(model: Probe, test: dict, table: QuestionTable, labels: dict) -> float:
    model.eval()
    rows = [i for i, f in enumerate(test["families"]) if f in NON_RELATIONAL]
    logits = model(pixels(test["images"]), torch.tensor(rows) // ROWS_PER_IMAGE,
                   torch.tensor([table.index[test["questions"][i]] for i in rows]))
    truth = torch.tensor([labels[test["answers"][i]] for i in rows])
    model.train()
    return float((logits.argmax(-1) == truth).float().mean())


def run(encoder: str, train: dict, test: dict, minutes: float, checkpoints: list[float]) -> dict:
    torch.manual_seed(0)
    table = QuestionTable(train["questions"])
    labels = {a: i for i, a in enumerate(sorted(set(train["answers"])))}
    questions = torch.tensor([table.index[q] for q in train["questions"]])
    answers = torch.tensor([labels[a] for a in train["answers"]])
    model = Probe(encoder, table, len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    images_per_batch, n_images = 16, len(train["images"])
    local = torch.arange(images_per_batch).repeat_interleave(ROWS_PER_IMAGE)
    results, steps, started, pending = {}, 0, time.perf_counter(), list(checkpoints)
    paused = 0.0  # evaluation time is not training time
    while pending:
        order = torch.randperm(n_images)
        for start in range(0, n_images - images_per_batch + 1, images_per_batch):
            chosen = order[start:start + images_per_batch]
            rows = (chosen[:, None] * ROWS_PER_IMAGE + torch.arange(ROWS_PER_IMAGE)).flatten()
            loss = F.cross_entropy(
                model(pixels(train["images"][chosen]), local, questions[rows]), answers[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            elapsed = time.perf_counter() - started - paused
            if pending and elapsed >= pending[0] * 60:
                t = time.perf_counter()
                results[pending.pop(0)] = (non_relational_accuracy(model, test, table, labels),
                                           steps)
                paused += time.perf_counter() - t
            if not pending:
                break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/sort-of-clevr"))
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not (args.data / "train.csv").is_file():
        generate_sort_of_clevr(args.data)
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    checkpoints = [args.minutes * f for f in (0.25, 0.5, 0.75, 1.0)]
    rows = []
    for encoder in ("onehot", "gru", "bow"):
        results = run(encoder, train, test, args.minutes, checkpoints)
        print(encoder, results, flush=True)
        rows.append([encoder, *(f"{acc:.1%} ({steps} steps)"
                                for acc, steps in results.values())])
    header = ["question encoder", *(f"after {m:g} min" for m in checkpoints)]
    text = ("# Question encoders: how fast a colour word gets bound to an image region\n\n"
            "Hand-written probe (CNN grid tokens + one question-guided attention + MLP), trained "
            "on the built-in Sort-of-CLEVR, 16 images x 20 questions per batch; non-relational "
            "test accuracy (shape / left / top, 2,000 questions) after each training time "
            "(evaluation excluded).\n\n" + markdown_table(header, rows)
            + f"\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    (RESULTS / "question_encoders.md").write_text(text)


if __name__ == "__main__":
    main()
