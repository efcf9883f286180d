"""Tests for the Photo Views generator (mmfuse.datasets.photo_views) and its CLI entry."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from mmfuse.datasets import photo_views  # noqa: E402
from mmfuse.datasets.photo_views import (  # noqa: E402
    CROP_SCALE,
    CSV_HEADER,
    PHOTOS,
    TEST_FRACTION,
    generate_photo_views,
    load_photo,
    render_geometry,
    split_region,
)
from mmfuse.errors import MmfuseError  # noqa: E402

SIZES = {"train": 400, "test": 200}  # enough views for the baselines below to be stable
SIDE = 96
BY_SOURCE = {photo.source: photo for photo in PHOTOS}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _box(row: dict[str, str]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = map(int, row["box"].split())
    return x0, y0, x1, y1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """One dataset (seed 0, default jitter) with its summary, rows and decoded pixels."""
    root = tmp_path_factory.mktemp("photo_views")
    summary = generate_photo_views(root, SIZES["train"], SIZES["test"], seed=0, size=SIDE)
    data: dict = {"root": root, "summary": summary}
    for split in SIZES:
        data[split] = _read_csv(root / f"{split}.csv")[1]
        data[f"{split}_pixels"] = np.stack([
            np.asarray(Image.open(root / r["image"]), np.float32) for r in data[split]])
    return data


@pytest.fixture(scope="module")
def sources() -> dict:
    """Every class's photograph, by its ``source`` path."""
    return {photo.source: load_photo(photo) for photo in PHOTOS}


def test_layout_and_file_formats(dataset):
    root, summary = dataset["root"], dataset["summary"]
    assert summary["classes"] == {p.label: p.source for p in PHOTOS}
    assert summary["size"] == SIDE and summary["seconds"] >= 0
    for split, size in SIZES.items():
        header, rows = _read_csv(root / f"{split}.csv")
        assert tuple(header) == CSV_HEADER
        assert len(rows) == size == summary[f"{split}_rows"]
        assert [r["image"] for r in rows] == [f"images/{split}_{i:05d}.jpg" for i in range(size)]
        for row in rows[:20]:
            with Image.open(root / row["image"]) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (SIDE, SIDE))
    readme = (root / "README.txt").read_text(encoding="utf-8")
    assert all(p.label in readme and p.source in readme and p.credit in readme for p in PHOTOS)


def test_labels_are_balanced_and_match_their_source(dataset):
    for split, size in SIZES.items():
        rows = dataset[split]
        assert all(BY_SOURCE[r["source"]].label == r["label"] for r in rows)
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == {p.label for p in PHOTOS}
        assert set(counts.values()) == {size // len(PHOTOS)}
    odd = Counter(r.photo for r in photo_views._plan_split(
        "train", 23, [np.zeros((40, 60), np.float32)] * len(PHOTOS), np.random.default_rng(0)))
    assert sorted(odd.values()) == [2] * 7 + [3] * 3  # 23 rows: n // 10 or n // 10 + 1 each


def test_split_regions_partition_each_photograph():
    wide, high = round(100 * TEST_FRACTION), round(50 * TEST_FRACTION)  # 40 and 20 by default
    assert split_region(100, 50, "right", "test") == (100 - wide, 0, 100, 50)
    assert split_region(100, 50, "right", "train") == (0, 0, 100 - wide, 50)
    assert split_region(100, 50, "left", "test") == (0, 0, wide, 50)
    assert split_region(100, 50, "top", "train") == (0, high, 100, 50)
    assert split_region(100, 50, "bottom", "test") == (0, 50 - high, 100, 50)
    for side in ("left", "right", "top", "bottom"):
        train = split_region(451, 300, side, "train")
        test = split_region(451, 300, side, "test")
        area = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (train, test)]
        assert sum(area) == 451 * 300 and not _overlap(train, test)


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two x0, y0, x1, y1 boxes (x1, y1 exclusive) share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_boxes_lie_in_their_split_region_so_train_and_test_share_no_pixels(dataset, sources):
    boxes: dict = {split: {p.source: [] for p in PHOTOS} for split in SIZES}
    for split in SIZES:
        for row in dataset[split]:
            width, height = sources[row["source"]].size
            x0, y0, x1, y1 = box = _box(row)
            rx0, ry0, rx1, ry1 = split_region(
                width, height, BY_SOURCE[row["source"]].test_side, split)
            assert rx0 <= x0 < x1 <= rx1 and ry0 <= y0 < y1 <= ry1, row
            assert x1 - x0 == y1 - y0  # square
            short = min(width, height)
            assert CROP_SCALE[0] * short - 1 <= x1 - x0 <= CROP_SCALE[1] * short + 1, row
            assert abs(float(row["angle"])) <= photo_views.MAX_ROTATION and row["flip"] in "01"
            boxes[split][row["source"]].append(box)
    for source in BY_SOURCE:
        assert not any(_overlap(a, b) for a in boxes["train"][source]
                       for b in boxes["test"][source])
        assert len(set(boxes["test"][source])) > 1  # views differ


def test_each_image_shows_its_recorded_box(dataset, sources):
    """The grey image matches its recorded box, angle and flip better than a mirrored or a
    shifted view (the colour jitter changes grey levels, so the match is close, not exact)."""

    def grey(image) -> np.ndarray:
        pixels = np.asarray(image.convert("L"), np.float64).ravel()
        return (pixels - pixels.mean()) / (pixels.std() + 1e-9)

    for split in SIZES:
        for row in dataset[split][:15]:
            shown = grey(Image.open(dataset["root"] / row["image"]))
            photo, (x0, y0, x1, y1), angle = sources[row["source"]], _box(row), float(row["angle"])
            flip, step = row["flip"] == "1", (x1 - x0) // 2
            x = x0 + step if x1 + step <= photo.width else x0 - step  # half a box aside
            own, mirror, shifted = (
                np.mean(shown * grey(render_geometry(photo, box, angle, f, SIDE)))
                for box, f in (((x0, y0, x1, y1), flip), ((x0, y0, x1, y1), not flip),
                               ((x, y0, x + x1 - x0, y1), flip)))
            assert own > 0.85 and own > max(mirror, shifted), (row, own, mirror, shifted)


def test_render_geometry_keeps_to_the_box():
    """Pixels outside the box (black here) never reach the view, whatever the rotation."""
    photo = Image.new("RGB", (200, 100), (0, 0, 0))
    photo.paste((255, 255, 255), (50, 20, 130, 100))
    for angle in (-10.0, -3.3, 0.0, 7.5, 10.0):
        view = np.asarray(render_geometry(photo, (50, 20, 130, 100), angle, True, 32))
        assert view.shape == (32, 32, 3) and view.min() >= 250, angle


def _nearest_class_mean(features: dict, labels: dict) -> float:
    """Test accuracy of a nearest-class-mean classifier on standardised features."""
    mean, std = features["train"].mean(0), features["train"].std(0) + 1e-9
    train, test = ((features[s] - mean) / std for s in ("train", "test"))
    classes = sorted(set(labels["train"]))
    centres = np.stack([train[labels["train"] == c].mean(0) for c in classes])
    nearest = np.argmin(((test[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(np.array(classes)[nearest] == labels["test"]))


def _texture(pixels: np.ndarray) -> np.ndarray:
    """Colour-blind texture features: gradient orientation and magnitude histograms."""
    grey = pixels.mean(-1)
    grey = (grey - grey.mean()) / (grey.std() + 1e-6)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * 8).astype(int), 7)
    return np.concatenate([
        np.bincount(orientation.ravel(), magnitude.ravel(), 8) / magnitude.size,
        np.histogram(magnitude, bins=8, range=(0, 2))[0] / magnitude.size])


def test_mean_colour_does_not_identify_the_class_but_texture_does(dataset):
    """Colour jitter hides the photographs' colours; what the views show still tells them apart.

    Measured with the defaults: mean RGB ~0.14 (chance 0.10), texture ~0.45.
    """
    labels = {s: np.array([r["label"] for r in dataset[s]]) for s in SIZES}
    colour = {s: dataset[f"{s}_pixels"].mean(axis=(1, 2)) for s in SIZES}
    texture = {s: np.stack([_texture(p) for p in dataset[f"{s}_pixels"]]) for s in SIZES}
    by_colour = _nearest_class_mean(colour, labels)
    by_texture = _nearest_class_mean(texture, labels)
    assert by_colour < 0.25, by_colour
    assert by_texture > 0.35 and by_texture > by_colour + 0.15, (by_texture, by_colour)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_photo_views(tmp_path / "a", 12, 9, seed=5, size=32)
    generate_photo_views(tmp_path / "again", 12, 9, seed=5, size=32)
    generate_photo_views(tmp_path / "more", 20, 9, seed=5, size=32)
    generate_photo_views(tmp_path / "other", 12, 9, seed=6, size=32)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 12 + 9 + 3
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    # The test split does not depend on train_size.
    assert (tmp_path / "more" / "test.csv").read_bytes() == (tmp_path / "a" / "test.csv"
                                                             ).read_bytes()
    assert (tmp_path / "other" / "train.csv").read_bytes() != (tmp_path / "a" / "train.csv"
                                                               ).read_bytes()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_size": 0}, "train_size must be >= 1"),
    ({"test_size": -3}, "test_size must be >= 1"),
    ({"train_size": 2.5}, "train_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"size": 4}, "size must be >= 8"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_photo_views(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else find_spec(name, *a))
    with pytest.raises(MmfuseError, match=r"'scikit-image'.*mmfuse\[datasets\]"):
        generate_photo_views(tmp_path / "out", 2, 2)
    assert not (tmp_path / "out").exists()


def test_cli_writes_photo_views(tmp_path):
    from typer.testing import CliRunner

    from mmfuse.cli import app

    result = CliRunner().invoke(app, ["datasets", "photo-views", str(tmp_path / "pv"),
                                      "--train", "20", "--test", "10", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["train_rows"], summary["test_rows"], summary["size"]) == (20, 10, SIDE)
    assert len(_read_csv(tmp_path / "pv" / "test.csv")[1]) == 10
    shown = CliRunner().invoke(app, ["datasets", "photo-views", str(tmp_path / "again"),
                                     "--train", "10", "--test", "10"])
    assert "10 training and 10 test images of 10 photographs" in shown.stdout
