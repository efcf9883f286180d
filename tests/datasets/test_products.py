"""Tests for the Products generator (mmfuse.datasets.products) and its CLI entry."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmfuse.datasets.products import (
    BRANDS,
    COLOURS,
    COLUMNS,
    KINDS,
    MATERIALS,
    OUTDOOR_PHRASES,
    RARE_BRANDS,
    TAGS,
    UNSEEN_BRAND,
    _draw_product,
    _plan_rows,
    generate_products,
)

N_TRAIN, N_TEST, SIDE = 60, 30, 48
# The rules, written out here so that a change to the generator's tables fails a test.
BASE = {"bag": 40, "bottle": 12, "box": 8, "lamp": 35, "mug": 10, "chair": 60}
MATERIAL = {"glass": 1.3, "ceramic": 1.2, "steel": 1.5, "wooden": 1.4, "plastic": 0.7,
            "leather": 2.0}
TIER = {"budget": 0.7, "standard": 1.0, "premium": 1.8}
NOISE_BOUND = 4 * 0.05  # the price noise is log-normal, sigma 0.05, clipped to 4 sigma


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _price(kind: str, material: str, tier: str, handmade: bool, weight: float) -> float:
    return (BASE[kind] * MATERIAL[material] * TIER[tier] * (1.3 if handmade else 1.0)
            + 2.0 * weight)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("products") / "nested" / "products"
    return out, generate_products(out, N_TRAIN, N_TEST, seed=0, image_size=SIDE)


@pytest.fixture(scope="module")
def rows(dataset: tuple[Path, dict]) -> dict[str, list[dict]]:
    """Each split's JSONL rows (typed values)."""
    out, _ = dataset
    return {split: _read_jsonl(out / f"{split}.jsonl") for split in ("train", "test")}


def test_layout_columns_and_summary(dataset, rows):
    out, summary = dataset
    assert sorted(p.name for p in out.iterdir()) == [
        "README.txt", "images", "test.csv", "test.jsonl", "train.csv", "train.jsonl"]
    pngs = [f"train_{i:05d}.png" for i in range(N_TRAIN)] + [
        f"test_{i:05d}.png" for i in range(N_TEST)]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(pngs)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        header, table = _read_csv(out / f"{split}.csv")
        assert tuple(header) == COLUMNS == ("image", "description", "brand", "weight_kg",
                                            "rating", "handmade", "price", "fragile", "tags",
                                            "kind", "material", "colour", "tier")
        assert [r["image"] for r in table] == [f"images/{split}_{i:05d}.png" for i in range(n)]
        assert all(tuple(r) == COLUMNS for r in rows[split])  # same order in JSONL
    every = rows["train"] + rows["test"]
    assert summary["out_dir"] == str(out)
    assert (summary["train_rows"], summary["test_rows"]) == (N_TRAIN, N_TEST)
    assert summary["kinds"] == {k: sum(r["kind"] == k for r in every) for k in KINDS}
    assert summary["tags"] == {t: sum(t in r["tags"] for r in every) for t in TAGS}
    assert summary["fragile_share"] == pytest.approx(
        sum(r["fragile"] for r in every) / len(every), abs=1e-3)
    assert summary["blank_weight_cells"] == sum(r["weight_kg"] is None for r in every)
    assert summary["unseen_brand_test_rows"] == sum(r["brand"] == UNSEEN_BRAND
                                                    for r in rows["test"]) >= 1
    assert summary["seconds"] >= 0
    readme = (out / "README.txt").read_text(encoding="utf-8")
    assert all(word in readme for word in ("price", "fragile", "tags", UNSEEN_BRAND))


@pytest.mark.parametrize("split", ["train", "test"])
def test_csv_and_jsonl_agree(dataset, rows, split):
    out, _ = dataset
    _, table = _read_csv(out / f"{split}.csv")
    assert len(table) == len(rows[split])
    for cells, row in zip(table, rows[split], strict=True):
        for column in COLUMNS:
            cell, value = cells[column], row[column]
            if value is None:
                assert column in ("weight_kg", "rating") and cell == ""
            elif column in ("handmade", "fragile"):
                assert isinstance(value, bool) and cell == ("yes" if value else "no")
            elif column == "tags":
                assert isinstance(value, list) and cell == " ".join(value)
            elif column in ("weight_kg", "rating", "price"):
                assert isinstance(value, float) and float(cell) == value
                assert cell == (f"{value:.1f}" if column == "rating" else f"{value:.2f}")
            else:
                assert cell == value


def test_rules_hold_on_every_row(rows):
    tiers = {tier: sum(t == tier for t in BRANDS.values()) for tier in TIER}
    assert tiers == {"budget": 5, "standard": 5, "premium": 4}
    log_noise = []
    for row in rows["train"] + rows["test"]:
        kind, material, colour, tier = row["kind"], row["material"], row["colour"], row["tier"]
        assert kind in KINDS and material in MATERIALS and colour in COLOURS
        assert tier == (BRANDS[row["brand"]] if row["brand"] != UNSEEN_BRAND else "standard")
        weight, handmade = row["weight_kg"], row["handmade"]
        heavy = "heavy" in row["tags"]
        if weight is not None:
            assert 0.1 <= weight <= 20 and heavy == (weight > 5)
            expected = _price(kind, material, tier, handmade, weight)
            low, high = expected, expected
            log_noise.append(math.log(row["price"] / expected))
        else:  # the price used the true weight, which the heavy tag bounds
            low = _price(kind, material, tier, handmade, 5.0 if heavy else 0.1)
            high = _price(kind, material, tier, handmade, 20.0 if heavy else 5.0)
        assert low * math.exp(-NOISE_BOUND) - 0.005 <= row["price"] <= (
            high * math.exp(NOISE_BOUND) + 0.005), row
        assert row["rating"] is None or 1.0 <= row["rating"] <= 5.0
        assert row["fragile"] == (material in ("glass", "ceramic")
                                  and kind in ("bottle", "mug", "lamp"))
        outdoor = any(phrase in row["description"] for phrase in OUTDOOR_PHRASES)
        wanted = {"heavy": heavy, "premium": tier == "premium", "handmade": handmade,
                  "outdoor": outdoor, "bright": colour in ("red", "orange", "yellow")}
        assert row["tags"] == [t for t in TAGS if wanted[t]]
        words = set(re.findall(r"[a-z]+", row["description"].lower()))
        assert words & set(MATERIALS) == {material}, row["description"]
        hidden = set(KINDS) | set(COLOURS) | {b.lower() for b in [*BRANDS, UNSEEN_BRAND]}
        assert not words & hidden, row["description"]
    # The price noise is there, at about the stated sigma.
    assert 0.025 < float(np.std(log_noise)) < 0.075


def test_images_show_the_row_colour(dataset, rows):
    out, _ = dataset
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], dtype=float)
    for row in rows["train"] + rows["test"]:
        image = Image.open(out / row["image"])
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIDE, SIDE))
        pixels = np.asarray(image, dtype=float)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        assert background.min() > 200  # light grey
        product = np.linalg.norm(pixels - background, axis=-1) > 60
        assert 0.03 < product.mean() < 0.5, row["image"]
        mean = pixels[product].mean(axis=0)
        assert names[int(np.argmin(np.linalg.norm(palette - mean, axis=1)))] == row["colour"]


def test_kinds_are_different_silhouettes():
    masks = {}
    for kind in KINDS:
        image = Image.new("L", (SIDE, SIDE), 0)
        _draw_product(ImageDraw.Draw(image), kind, (SIDE / 2, SIDE / 2), 0.6 * SIDE, (255,), (0,))
        masks[kind] = np.asarray(image) > 0
    for i, a in enumerate(KINDS):
        for b in KINDS[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.75, (a, b, iou)


def test_rare_and_unseen_brands(rows):
    train = [r["brand"] for r in rows["train"]]
    test = [r["brand"] for r in rows["test"]]
    assert UNSEEN_BRAND not in train and UNSEEN_BRAND in test
    assert all(train.count(b) == 2 for b in RARE_BRANDS)
    assert set(train) <= set(BRANDS) and set(test) <= {*BRANDS, UNSEEN_BRAND}
    # At full size (tables only, no pictures): Zipf-like, the rare brands still rare, the
    # unseen brand in about 2% of the test rows, and the stated shares of the other columns.
    big = _plan_rows("train", 2000, np.random.default_rng(1))
    counts = {b: sum(r["brand"] == b for r in big) for b in BRANDS}
    assert all(counts[b] <= 2 for b in RARE_BRANDS)
    common = [counts[b] for b in BRANDS if b not in RARE_BRANDS]
    assert common[0] > 3 * common[-1] > 0
    test_big = _plan_rows("test", 500, np.random.default_rng(2))
    assert sum(r["brand"] == UNSEEN_BRAND for r in test_big) == 10

    def share(holds) -> float:
        return sum(map(holds, big)) / len(big)

    assert 0.03 < share(lambda r: r["weight_kg"] is None) < 0.07
    assert 0.03 < share(lambda r: r["rating"] is None) < 0.07
    assert 0.21 < share(lambda r: r["handmade"]) < 0.29
    assert 0.25 < share(lambda r: "outdoor" in r["tags"]) < 0.35
    assert 0.13 < share(lambda r: r["fragile"]) < 0.21


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_products(tmp_path / "a", 6, 4, seed=5, image_size=32)
    generate_products(tmp_path / "again", 6, 4, seed=5, image_size=32)
    generate_products(tmp_path / "more", 9, 4, seed=5, image_size=32)
    generate_products(tmp_path / "other", 6, 4, seed=6, image_size=32)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 6 + 4 + 5
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    for name in ("test.csv", "test.jsonl", "images/test_00003.png"):  # independent of train_size
        assert (tmp_path / "more" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    for name in ("train.csv", "images/train_00000.png"):
        assert (tmp_path / "other" / name).read_bytes() != (tmp_path / "a" / name).read_bytes()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_size": 0}, "train_size must be >= 1"),
    ({"test_size": -3}, "test_size must be >= 1"),
    ({"train_size": 2.5}, "train_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"image_size": 31}, "image_size must be >= 32"),
    ({"image_size": True}, "image_size must be an integer"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_products(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_writes_products(tmp_path):
    from test_cli import run

    result = run("datasets", "products", str(tmp_path / "p"), "--train", "40", "--test", "20")
    assert "40 training and 20 test products" in " ".join(result.stdout.split())
    assert len(_read_csv(tmp_path / "p" / "train.csv")[1]) == 40
    assert len(_read_jsonl(tmp_path / "p" / "test.jsonl")) == 20
    assert len(list((tmp_path / "p" / "images").glob("*.png"))) == 60
