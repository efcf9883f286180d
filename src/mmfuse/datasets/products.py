"""Generator for Products, a product table where every target needs several modalities.

A synthetic shop catalogue in the spirit of multimodal price prediction (a photo, a description
and tabular fields, as in the Mercari and Amazon product tables), built so that no single input
is enough: the product's kind and colour are visible only in the picture, its material only in
the text, its tier only through the brand, and the weight and the handmade flag only in their own
columns. Every tabular input and output type appears: image, text, category, number (with blank
cells), binary, and a set target.

Layout::

    out_dir/
        images/train_00000.png, ..., images/test_00000.png, ...   SIZE x SIZE RGB PNG
        train.csv, test.csv        the same rows as
        train.jsonl, test.jsonl
        README.txt                 the columns and the rules below

Columns, in this order in both formats:

- ``image``: the PNG path relative to ``out_dir``: one product silhouette (``KINDS``) in one
  colour (``COLOURS``, brightness jittered by ``BRIGHTNESS``) on a light grey background with
  pixel noise (``NOISE``), its size and position jittered by ``JITTER`` of the image side.
- ``description``: English text that names the material (``MATERIALS``), in about
  ``OUTDOOR_SHARE`` of rows one of ``OUTDOOR_PHRASES``, and sometimes a neutral extra sentence.
  It never names the kind, the colour or the brand.
- ``brand``: one of ``BRANDS`` (name -> tier), Zipf-like frequencies; each of ``RARE_BRANDS``
  appears at most ``RARE_TRAIN_ROWS`` times in training, and ``UNSEEN_BRAND`` (standard tier)
  only in the test split, in about ``TEST_SHARE`` of its rows (as does each rare brand).
- ``weight_kg``: log-normal in [0.1, 20], 2 decimals; about ``BLANK_SHARE`` of cells blank.
- ``rating``: 1.0-5.0, 1 decimal, pure noise; about ``BLANK_SHARE`` of cells blank.
- ``handmade``: binary, about ``HANDMADE_SHARE`` yes.
- ``price`` (target, number): ``BASE_PRICE[kind] * MATERIAL_FACTOR[material] * TIER_FACTOR[tier]
  * (HANDMADE_FACTOR if handmade) + WEIGHT_PRICE * weight``, times ``exp(e)`` with
  ``e ~ N(0, PRICE_NOISE)`` clipped to 4 standard deviations; 2 decimals. The weight is the
  true one even where its cell is blank.
- ``fragile`` (target, binary): yes iff the material is in ``FRAGILE_MATERIALS`` and the kind in
  ``FRAGILE_KINDS`` (about 1 row in 6).
- ``tags`` (target, set of ``TAGS``): ``heavy`` (true weight > ``HEAVY_KG``), ``premium``
  (premium tier), ``handmade``, ``outdoor`` (the description has an outdoor phrase) and
  ``bright`` (colour in ``BRIGHT_COLOURS``).
- ``kind``, ``material``, ``colour``, ``tier``: the hidden truth, for ``evaluate --by kind``.

In CSV a binary is ``yes``/``no``, a set is its labels joined by one space (empty set: blank
cell) and a missing number is a blank cell; in JSONL they are ``true``/``false``, a JSON list and
``null``. Output is determined by the arguments (same seed, same bytes); train and test draw from
independent streams spawned from the seed, so the test split does not depend on ``train_size``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .av_digits import _check_int

__all__ = [
    "BRANDS",
    "COLOURS",
    "COLUMNS",
    "KINDS",
    "MATERIALS",
    "OUTDOOR_PHRASES",
    "RARE_BRANDS",
    "TAGS",
    "UNSEEN_BRAND",
    "expected_price",
    "generate_products",
]

COLUMNS: tuple[str, ...] = ("image", "description", "brand", "weight_kg", "rating", "handmade",
                            "price", "fragile", "tags", "kind", "material", "colour", "tier")

KINDS: tuple[str, ...] = ("bag", "bottle", "box", "lamp", "mug", "chair")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 210),
    "black": (35, 35, 35),
}
MATERIALS: tuple[str, ...] = ("glass", "ceramic", "steel", "wooden", "plastic", "leather")

BRANDS: dict[str, str] = {  # common brands in Zipf order, then the rare ones
    "Basico": "budget", "Homewell": "standard", "Trueline": "standard", "Thrifty": "budget",
    "Aurelle": "premium", "Valumo": "budget", "Meridian": "standard", "Veritas": "premium",
    "Pennywise": "budget", "Crestway": "standard", "Kestrel": "premium",
    "Northfield": "standard", "Orsolo": "premium", "Econa": "budget",
}
"""The 14 training brands and their tiers (budget x5, standard x5, premium x4)."""
RARE_BRANDS: tuple[str, ...] = ("Orsolo", "Econa")
UNSEEN_BRAND = "Novabrand"
"""A standard-tier brand that appears only in the test split."""
TIERS: dict[str, str] = {**BRANDS, UNSEEN_BRAND: "standard"}

BASE_PRICE = {"bag": 40.0, "bottle": 12.0, "box": 8.0, "lamp": 35.0, "mug": 10.0, "chair": 60.0}
MATERIAL_FACTOR = {"glass": 1.3, "ceramic": 1.2, "steel": 1.5, "wooden": 1.4, "plastic": 0.7,
                   "leather": 2.0}
TIER_FACTOR = {"budget": 0.7, "standard": 1.0, "premium": 1.8}
HANDMADE_FACTOR = 1.3
WEIGHT_PRICE = 2.0
"""Price per kilogram, added to the product's base price."""
PRICE_NOISE = 0.05
"""Standard deviation of the log-normal price noise (clipped to 4 of them)."""

FRAGILE_MATERIALS = ("glass", "ceramic")
FRAGILE_KINDS = ("bottle", "mug", "lamp")
TAGS: tuple[str, ...] = ("heavy", "premium", "handmade", "outdoor", "bright")
HEAVY_KG = 5.0
BRIGHT_COLOURS = ("red", "orange", "yellow")

ZIPF_EXPONENT = 1.0
RARE_TRAIN_ROWS = 2
"""Rows per rare brand in training (fewer when train_size < 25 * RARE_TRAIN_ROWS)."""
TEST_SHARE = 0.02
"""Share of test rows for the unseen brand and for each rare brand (at least one row each)."""
WEIGHT_MEDIAN, WEIGHT_SIGMA, WEIGHT_RANGE = 2.0, 0.9, (0.1, 20.0)
BLANK_SHARE = 0.05
HANDMADE_SHARE = 0.25
OUTDOOR_SHARE = 0.3
EXTRA_SHARE = 0.5

TEMPLATES: tuple[str, ...] = (
    "A {material} item.", "Sturdy {material} piece.", "Everyday {material} design, easy to clean.",
    "Classic {material} piece with a clean finish.", "Practical {material} item, built to last.",
    "Modern {material} design for the home.", "Simple {material} product.",
)
OUTDOOR_PHRASES: tuple[str, ...] = (
    "For outdoor use.", "Made for the garden.", "Weatherproof for camping.",
    "Great on the patio or balcony.", "Built for picnics and trips outdoors.",
)
EXTRAS: tuple[str, ...] = (
    "Easy to store.", "Ships in two days.", "Gift wrap available.", "A customer favourite.",
    "Backed by a two-year warranty.",
)

# Pictures.
BACKGROUND = (225, 245)
"""Range of the grey level of an image's background."""
NOISE = 3.0
"""Standard deviation of the per-pixel noise, in grey levels."""
BRIGHTNESS = (0.9, 1.1)
"""Range of the factor a product's colour is scaled by."""
PRODUCT_SCALE = 0.6
"""Side of a product's box as a share of the image side, before jitter."""
JITTER = 0.1
"""Largest change of the product's size (relative) and position (share of the side)."""

_SPLITS = ("train", "test")


def generate_products(
    out_dir: str | Path,
    train_size: int = 2000,
    test_size: int = 500,
    seed: int = 0,
    image_size: int = 48,
) -> dict:
    """Generate a Products dataset on disk: pictures, descriptions and tabular fields.

    Writes ``images/{split}_{i:05d}.png``, ``train.csv`` / ``test.csv``, the same rows as
    ``train.jsonl`` / ``test.jsonl``, and ``README.txt`` (see the module docstring for the
    columns and rules). ``out_dir`` is created if missing; files with the same names are
    overwritten.

    Args:
        out_dir: Directory to write the dataset into.
        train_size: Number of training rows (>= 1).
        test_size: Number of test rows (>= 1).
        seed: Non-negative random seed.
        image_size: Side of the square images in pixels (>= 32).

    Returns:
        Summary dict, counted over both splits: ``out_dir`` (str), ``train_rows``,
        ``test_rows``, ``image_size``, ``kinds`` (kind -> rows), ``fragile_share``, ``tags``
        (tag -> rows), ``blank_weight_cells``, ``unseen_brand_test_rows`` and ``seconds``.

    Raises:
        ValueError: If an argument is invalid.
    """
    start = time.perf_counter()
    sizes = {"train": _check_int("train_size", train_size, 1, "pass a positive row count"),
             "test": _check_int("test_size", test_size, 1, "pass a positive row count")}
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    image_size = _check_int("image_size", image_size, 32,
                            "pass an image side in pixels, e.g. 48")

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for split, stream in zip(_SPLITS, np.random.SeedSequence(seed).spawn(2), strict=True):
        table_stream, image_stream = stream.spawn(2)
        split_rows = _plan_rows(split, sizes[split], np.random.default_rng(table_stream))
        _draw_images(root, split_rows, image_size, np.random.default_rng(image_stream))
        _write_tables(root, split, split_rows)
        rows += split_rows
    _write_readme(root, image_size)
    return {
        "out_dir": str(root),
        "train_rows": sizes["train"],
        "test_rows": sizes["test"],
        "image_size": image_size,
        "kinds": {k: sum(r["kind"] == k for r in rows) for k in KINDS},
        "fragile_share": round(sum(r["fragile"] for r in rows) / len(rows), 3),
        "tags": {t: sum(t in r["tags"] for r in rows) for t in TAGS},
        "blank_weight_cells": sum(r["weight_kg"] is None for r in rows),
        "unseen_brand_test_rows": sum(r["brand"] == UNSEEN_BRAND for r in rows),
        "seconds": round(time.perf_counter() - start, 2),
    }


def expected_price(kind: str, material: str, tier: str, handmade: bool, weight: float) -> float:
    """The price before noise: base x material x tier x handmade factor + weight price."""
    base = BASE_PRICE[kind] * MATERIAL_FACTOR[material] * TIER_FACTOR[tier]
    return base * (HANDMADE_FACTOR if handmade else 1.0) + WEIGHT_PRICE * weight


def _brands(split: str, n: int, rng: np.random.Generator) -> list[str]:
    """A split's brand column: fixed counts for the rare and unseen brands, Zipf for the rest."""
    if split == "train":
        special = {b: min(RARE_TRAIN_ROWS, n // 25) for b in RARE_BRANDS}
    else:
        special = {b: max(1, round(TEST_SHARE * n)) for b in (UNSEEN_BRAND, *RARE_BRANDS)}
    brands: list[str] = []
    for brand, count in special.items():
        brands += [brand] * min(count, n - len(brands))
    common = [b for b in BRANDS if b not in RARE_BRANDS]
    weights = 1.0 / np.arange(1, len(common) + 1) ** ZIPF_EXPONENT
    brands += [common[i] for i in rng.choice(len(common), n - len(brands),
                                             p=weights / weights.sum())]
    return [brands[i] for i in rng.permutation(n)]


def _plan_rows(split: str, n: int, rng: np.random.Generator) -> list[dict]:
    """Draw every row of a split (all but the pixels), as typed values; None is a blank cell."""
    brands = _brands(split, n, rng)
    kinds = rng.integers(len(KINDS), size=n)
    materials = rng.integers(len(MATERIALS), size=n)
    colours = [list(COLOURS)[c] for c in rng.integers(len(COLOURS), size=n)]
    weights = np.clip(np.round(WEIGHT_MEDIAN * np.exp(rng.normal(0, WEIGHT_SIGMA, n)), 2),
                      *WEIGHT_RANGE)
    ratings = np.round(rng.uniform(1.0, 5.0, n), 1)
    blank_weight, blank_rating = rng.random((2, n)) < BLANK_SHARE
    handmade = rng.random(n) < HANDMADE_SHARE
    noise = np.clip(rng.normal(0, PRICE_NOISE, n), -4 * PRICE_NOISE, 4 * PRICE_NOISE)
    rows = []
    for i in range(n):
        kind, material = KINDS[kinds[i]], MATERIALS[materials[i]]
        colour, tier = colours[i], TIERS[brands[i]]
        description, outdoor = _describe(material, rng)
        weight = float(weights[i])
        price = expected_price(kind, material, tier, bool(handmade[i]), weight)
        flags = {"heavy": weight > HEAVY_KG, "premium": tier == "premium",
                 "handmade": bool(handmade[i]), "outdoor": outdoor,
                 "bright": colour in BRIGHT_COLOURS}
        rows.append({
            "image": f"images/{split}_{i:05d}.png", "description": description,
            "brand": brands[i], "weight_kg": None if blank_weight[i] else weight,
            "rating": None if blank_rating[i] else float(ratings[i]),
            "handmade": bool(handmade[i]), "price": round(price * math.exp(noise[i]), 2),
            "fragile": material in FRAGILE_MATERIALS and kind in FRAGILE_KINDS,
            "tags": [t for t in TAGS if flags[t]],
            "kind": kind, "material": material, "colour": colour, "tier": tier,
        })
    return rows


def _describe(material: str, rng: np.random.Generator) -> tuple[str, bool]:
    """A description naming ``material``, and whether it says the product is for outdoors."""
    sentences = [TEMPLATES[rng.integers(len(TEMPLATES))].format(material=material)]
    extra = []
    outdoor = bool(rng.random() < OUTDOOR_SHARE)
    if outdoor:
        extra.append(OUTDOOR_PHRASES[rng.integers(len(OUTDOOR_PHRASES))])
    if rng.random() < EXTRA_SHARE:
        extra.append(EXTRAS[rng.integers(len(EXTRAS))])
    sentences += [extra[i] for i in rng.permutation(len(extra))]
    return " ".join(sentences), outdoor


def _draw_images(root: Path, rows: list[dict], size: int, rng: np.random.Generator) -> None:
    """Draw and save each row's picture."""
    for row in rows:
        grey = int(rng.integers(BACKGROUND[0], BACKGROUND[1] + 1))
        image = Image.new("RGB", (size, size), (grey,) * 3)
        side = size * PRODUCT_SCALE * rng.uniform(1 - JITTER, 1 + JITTER)
        cx, cy = size / 2 + size * JITTER * rng.uniform(-1, 1, 2)
        colour = np.clip(np.asarray(COLOURS[row["colour"]]) * rng.uniform(*BRIGHTNESS), 0, 255)
        _draw_product(ImageDraw.Draw(image), row["kind"], (cx, cy), side,
                      tuple(int(c) for c in colour), (grey,) * 3)
        noise = NOISE * rng.standard_normal((size, size, 3), dtype=np.float32)
        pixels = np.clip(np.rint(np.asarray(image, dtype=np.float32) + noise), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / row["image"], format="PNG")


def _draw_product(draw: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float],
                  side: float, fill: tuple[int, ...], background: tuple[int, ...]) -> None:
    """Draw one silhouette in a ``side`` x ``side`` box around ``centre``.

    Shapes are given in box units: ``u`` from -0.5 (left) to 0.5, ``v`` from -0.5 (top) to 0.5.
    """
    cx, cy = centre

    def at(u: float, v: float) -> tuple[float, float]:
        return cx + u * side, cy + v * side

    def rect(u0: float, v0: float, u1: float, v1: float, colour: tuple[int, ...] = fill) -> None:
        draw.rectangle((*at(u0, v0), *at(u1, v1)), fill=colour)

    line = max(1, round(0.08 * side))
    if kind == "bottle":  # narrow body, sloping shoulders, neck
        rect(-0.17, -0.1, 0.17, 0.5)
        draw.polygon([at(-0.17, -0.1), at(0.17, -0.1), at(0.06, -0.28), at(-0.06, -0.28)],
                     fill=fill)
        rect(-0.06, -0.45, 0.06, -0.25)
    elif kind == "mug":  # body with a handle ring on the right
        draw.ellipse((*at(0.02, -0.2), *at(0.45, 0.25)), outline=fill, width=line)
        rect(-0.35, -0.3, 0.15, 0.4)
    elif kind == "lamp":  # triangle shade on a stick on a base
        draw.polygon([at(0.0, -0.5), at(-0.35, -0.08), at(0.35, -0.08)], fill=fill)
        rect(-0.035, -0.1, 0.035, 0.42)
        rect(-0.25, 0.4, 0.25, 0.5)
    elif kind == "chair":  # side view: back, seat, two legs
        rect(-0.35, -0.5, -0.24, 0.05)
        rect(-0.35, -0.02, 0.35, 0.08)
        rect(-0.35, 0.05, -0.26, 0.5)
        rect(0.26, 0.05, 0.35, 0.5)
    elif kind == "box":  # square box with a lid line across its top
        rect(-0.4, -0.35, 0.4, 0.45)
        draw.line((*at(-0.4, -0.15), *at(0.4, -0.15)), fill=background,
                  width=max(1, round(0.05 * side)))
    else:  # bag: trapezoid with a handle arc above it
        draw.arc((*at(-0.22, -0.5), *at(0.22, 0.1)), 180, 360, fill=fill, width=line)
        draw.polygon([at(-0.42, 0.45), at(0.42, 0.45), at(0.3, -0.2), at(-0.3, -0.2)], fill=fill)


def _cells(row: dict) -> list[str]:
    """A row as CSV cells: yes/no, space-joined sets, blank for missing."""
    cells = []
    for column in COLUMNS:
        value = row[column]
        if value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("yes" if value else "no")
        elif isinstance(value, list):
            cells.append(" ".join(value))
        elif column == "rating":
            cells.append(f"{value:.1f}")
        elif isinstance(value, float):
            cells.append(f"{value:.2f}")
        else:
            cells.append(value)
    return cells


def _write_tables(root: Path, split: str, rows: list[dict]) -> None:
    """Write a split's CSV and JSONL, the same rows in the same column order."""
    with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(_cells(row) for row in rows)
    with (root / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({c: row[c] for c in COLUMNS}, ensure_ascii=False) + "\n")


def _write_readme(root: Path, size: int) -> None:
    """Write README.txt: the columns and the rules that make the targets."""
    tiers = {t: [b for b, bt in BRANDS.items() if bt == t] for t in TIER_FACTOR}
    lines = [
        "Products, generated by `mmfuse datasets products` (mmfuse.datasets.products).",
        "",
        "train.csv/test.csv and train.jsonl/test.jsonl hold the same rows. In CSV a binary is "
        "yes/no, a set is space-joined labels, a missing number is a blank cell; in JSONL "
        "true/false, a list and null.",
        "",
        "Inputs:",
        f"  image        {size}x{size} PNG: one product silhouette ({', '.join(KINDS)}) in one "
        f"colour ({', '.join(COLOURS)}); kind and colour are visible only here",
        f"  description  English text naming the material ({', '.join(MATERIALS)}), "
        "sometimes saying it is for outdoor use; never the kind, colour or brand",
        "  brand        category; its tier is hidden: "
        + "; ".join(f"{t}: {', '.join(bs)}" for t, bs in tiers.items()),
        f"               {' and '.join(RARE_BRANDS)} are rare in training (at most "
        f"{RARE_TRAIN_ROWS} rows each); {UNSEEN_BRAND} (standard) appears only in test; each "
        f"of the three is in about {TEST_SHARE:.0%} of the test rows",
        f"  weight_kg    number, {WEIGHT_RANGE[0]:g}-{WEIGHT_RANGE[1]:g} kg; "
        f"~{BLANK_SHARE:.0%} blank",
        f"  rating       number 1.0-5.0, pure noise; ~{BLANK_SHARE:.0%} blank",
        f"  handmade     binary, ~{HANDMADE_SHARE:.0%} yes",
        "",
        "Targets:",
        "  price        base[kind] x material factor x tier factor x 1.3 if handmade "
        f"+ {WEIGHT_PRICE:g} x true weight, times log-normal noise (sigma {PRICE_NOISE:g})",
        "               base: " + ", ".join(f"{k} {v:g}" for k, v in BASE_PRICE.items()),
        "               material: " + ", ".join(f"{k} {v:g}" for k, v in MATERIAL_FACTOR.items()),
        "               tier: " + ", ".join(f"{k} {v:g}" for k, v in TIER_FACTOR.items()),
        f"  fragile      yes iff material in {', '.join(FRAGILE_MATERIALS)} and kind in "
        f"{', '.join(FRAGILE_KINDS)}",
        f"  tags         heavy (true weight > {HEAVY_KG:g} kg), premium (premium tier), "
        "handmade, outdoor (the description says so), bright (colour "
        f"{', '.join(BRIGHT_COLOURS)})",
        "",
        "Hidden truth (not inputs): kind, material, colour, tier.",
    ]
    (root / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
