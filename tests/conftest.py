"""Shared fixtures: a small image-question table that is not a built-in dataset."""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {
    "en": {"colour": "What colour is the shape?", "shape": "Which shape is in the picture?"},
    "zh": {"colour": "图形是什么颜色？", "shape": "图片里是什么形状？"},
}


def draw_shape(colour: str, shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One coloured shape at a random place on a light grey background."""
    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(6, 9))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return img


def make_shapes_qa(folder: Path, n_images: int, lang: str = "en", seed: int = 0,
                   name: str = "train.csv") -> Path:
    """Write ``n_images`` PNGs and a CSV (image, question, answer, qtype), two questions each."""
    rows = []
    for path, colour, shape in drawn_shapes(folder, n_images, seed, name):
        for qtype, answer in (("colour", colour), ("shape", shape)):
            rows.append({"image": path, "question": QUESTIONS[lang][qtype], "answer": answer,
                         "qtype": qtype})
    return write_table(folder / name, rows)


def drawn_shapes(folder: Path, n_images: int, seed: int, name: str):
    """Draw ``n_images`` random shapes into ``folder/img``; yields (path, colour, shape)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        colour = list(COLOURS)[int(rng.integers(3))]
        shape = SHAPES[int(rng.integers(3))]
        path = f"img/{name.split('.')[0]}_{i:04d}.png"
        draw_shape(colour, shape, rng).save(folder / path)
        yield path, colour, shape


@contextmanager
def registered(*components: tuple, clear: Callable | None = None) -> Iterator[None]:
    """Register ``(registry, name, options, builder)`` components for one test and remove them
    afterwards; ``clear`` (a functools.cache'd lookup) is emptied on the way in and out."""
    for registry, name, options, builder in components:
        registry.register(name, options)(builder)
    if clear is not None:
        clear.cache_clear()
    try:
        yield
    finally:
        for registry, name, _, _ in components:
            registry._entries.pop(name)
        if clear is not None:
            clear.cache_clear()


def write_table(table: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as a UTF-8 CSV with their keys as the header."""
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu",
          "circle": "un cercle", "square": "un carré", "triangle": "un triangle"}
PROMPTS = ("describe the picture", "décris l'image")


def caption(colour: str, shape: str, prompt: str) -> str:
    """The caption a prompt asks for: "a red circle" or "un cercle rouge"."""
    if prompt == PROMPTS[0]:
        return f"a {colour} {shape}"
    return f"{FRENCH[shape]} {FRENCH[colour]}"


def make_shapes_captions(folder: Path, n_images: int, seed: int = 0,
                         name: str = "train.csv") -> Path:
    """A captioning table that is not a built-in one: ``image,prompt,caption``, one row per
    prompt ("describe the picture" in English, "décris l'image" in French)."""
    rows = [{"image": path, "prompt": p, "caption": caption(colour, shape, p)}
            for path, colour, shape in drawn_shapes(folder, n_images, seed, name)
            for p in PROMPTS]
    return write_table(folder / name, rows)


# A tiny captioning model for make_shapes_captions tables (report and explain tests).
CAPTIONS = {
    "inputs": [
        {"name": "image", "type": "image", "preprocess": {"size": 16},
         "encoder": {"type": "cnn", "channels": [8, 8], "pool": "mean", "dim": 32}},
        {"name": "prompt", "type": "text",
         "encoder": {"type": "gru", "embedding_dim": 8, "hidden_size": 16}},
    ],
    "fusion": {"type": "concat", "hidden": [32]},
    "outputs": [{"name": "caption", "type": "text", "decoder": "gru",
                 "head": {"dim": 32, "max_length": 6}}],
    "training": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01},
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own preprocessing cache, so no test sees another's entries."""
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


TRAIN_IMAGES = 300

MINIMAL = {
    "inputs": [
        {"name": "image", "type": "image", "preprocess": {"size": 32},
         "encoder": {"type": "cnn", "channels": [16, 16, 16], "pool": "mean", "dim": 64}},
        {"name": "question", "type": "text",
         "encoder": {"type": "gru", "embedding_dim": 16, "hidden_size": 32}},
    ],
    "fusion": {"type": "concat", "hidden": [64]},
    "outputs": [{"name": "answer", "type": "category"}],
    "training": {"epochs": 15, "batch_size": 32, "learning_rate": 0.003},
}


@pytest.fixture
def minimal_config() -> dict:
    """A small config in ARCHITECTURE.md's minimal form, sized for fast tests."""
    import copy

    return copy.deepcopy(MINIMAL)


@pytest.fixture(scope="session")
def shapes_qa(tmp_path_factory) -> dict[str, Path]:
    """English and Chinese image-question tables (train and test) in one folder each."""
    out = {}
    for lang in ("en", "zh"):
        folder = tmp_path_factory.mktemp(f"shapes_{lang}")
        out[f"{lang}_train"] = make_shapes_qa(folder, TRAIN_IMAGES, lang, seed=1, name="train.csv")
        out[f"{lang}_test"] = make_shapes_qa(folder, 40, lang, seed=2, name="test.csv")
    return out


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> dict[str, Path]:
    """A run directory trained briefly on a shapes table (for the server tests)."""
    import mmfuse

    folder = tmp_path_factory.mktemp("served")
    train = make_shapes_qa(folder / "data", 200, "en", seed=1, name="train.csv")
    test = make_shapes_qa(folder / "data", 20, "en", seed=2, name="test.csv")
    config = copy.deepcopy(MINIMAL)
    config["training"]["epochs"] = 6
    mmfuse.Model.from_config(config).fit(train, out=folder / "run")
    return {"run": folder / "run", "data": folder / "data", "train": train, "test": test}


@pytest.fixture(scope="session")
def every_type_run(tmp_path_factory) -> dict[str, Path]:
    """A run trained briefly on a table with every input and output type (every_type.py):
    classic predictors served for price and shape, fitted but not served for heavy."""
    import mmfuse
    from every_type import EVERY_TYPE_CONFIG, write_every_type

    folder = tmp_path_factory.mktemp("every_type")
    table = write_every_type(folder / "data")
    mmfuse.Model.from_config(copy.deepcopy(EVERY_TYPE_CONFIG)).fit(table, out=folder / "run")
    return {"run": folder / "run", "data": folder / "data", "csv": table,
            "jsonl": folder / "data" / "table.jsonl"}


@pytest.fixture
def client(served_run):
    """An in-process client of the app serving ``served_run`` (lifespan included)."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from starlette.testclient import TestClient

    from mmfuse.serve import create_app, load_service

    with TestClient(create_app(load_service(served_run["run"]))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live_server(served_run):
    """The base URL of a real ``mmfuse serve`` process on a free loopback port."""
    from serving import start_server, stop_server

    process, url = start_server([str(served_run["run"])])
    yield url
    stop_server(process)
