"""Tests for the Sort-of-CLEVR generator (mmfuse.datasets.sort_of_clevr)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfuse.datasets.sort_of_clevr import (
    COLORS,
    NON_RELATIONAL_FAMILIES,
    RELATIONAL_FAMILIES,
    generate_sort_of_clevr,
)

N_TRAIN = 10
N_TEST = 3
ROWS_PER_IMAGE = 20
SHAPE_ANSWERS = {"circle", "square"}
YES_NO = {"yes", "no"}
COUNT_ANSWERS = {str(i) for i in range(1, 7)}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _objects(png: Path, object_size: int) -> dict[str, dict]:
    """Recover each coloured object's shape and centre from the pixels."""
    arr = np.asarray(Image.open(png).convert("RGB"))
    out = {}
    for name, rgb in COLORS.items():
        mask = np.all(arr == np.array(rgb, dtype=np.uint8), axis=-1)
        ys, xs = np.nonzero(mask)
        assert xs.size > 0, f"{name} object missing from {png.name}"
        count = int(mask.sum())
        square_area = object_size**2
        circle_area = math.pi * object_size**2 / 4
        shape = "square" if abs(count - square_area) < abs(count - circle_area) else "circle"
        out[name] = {
            "count": count,
            "shape": shape,
            # Bounding-box centre in continuous pixel coordinates.
            "cx": (xs.min() + xs.max() + 1) / 2,
            "cy": (ys.min() + ys.max() + 1) / 2,
            "w": int(xs.max() - xs.min() + 1),
            "h": int(ys.max() - ys.min() + 1),
        }
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("soc") / "nested" / "sort_of_clevr"
    summary = generate_sort_of_clevr(out, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return out, summary


def test_summary_and_files(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    assert summary == {
        "out_dir": str(out),
        "train_rows": N_TRAIN * ROWS_PER_IMAGE,
        "test_rows": N_TEST * ROWS_PER_IMAGE,
        "train_images": N_TRAIN,
        "test_images": N_TEST,
    }
    pngs = sorted(p.name for p in (out / "images").glob("*.png"))
    assert pngs == [f"test_{i:05d}.png" for i in range(N_TEST)] + [
        f"train_{i:05d}.png" for i in range(N_TRAIN)
    ]
    img = Image.open(out / "images" / "train_00000.png")
    assert img.format == "PNG"
    assert img.mode == "RGB"
    assert img.size == (75, 75)
    arr = np.asarray(img)
    on_object = np.zeros(arr.shape[:2], dtype=bool)
    for rgb in COLORS.values():
        on_object |= np.all(arr == np.array(rgb, dtype=np.uint8), axis=-1)
    # Everything that is not an object is pure white background.
    assert np.all(arr[~on_object] == 255)
    assert on_object.mean() < 0.5


@pytest.mark.parametrize(("split", "n_images"), [("train", N_TRAIN), ("test", N_TEST)])
def test_csv_structure(dataset: tuple[Path, dict], split: str, n_images: int) -> None:
    out, _ = dataset
    header, rows = _read_csv(out / f"{split}.csv")
    assert header == ["image", "question", "answer", "qtype", "family", "target_x", "target_y"]
    assert len(rows) == n_images * ROWS_PER_IMAGE
    for i in range(n_images):
        block = rows[i * ROWS_PER_IMAGE : (i + 1) * ROWS_PER_IMAGE]
        image = f"images/{split}_{i:05d}.png"
        assert {r["image"] for r in block} == {image}
        assert (out / image).is_file()
        assert sum(r["qtype"] == "non-relational" for r in block) == 10
        assert sum(r["qtype"] == "relational" for r in block) == 10
    for r in rows:
        color = next((c for c in COLORS if f" {c} object" in r["question"]), None)
        assert color is not None, r["question"]
        fam, ans = r["family"], r["answer"]
        if r["qtype"] == "non-relational":
            assert fam in NON_RELATIONAL_FAMILIES
        else:
            assert r["qtype"] == "relational"
            assert fam in RELATIONAL_FAMILIES
        if fam in ("shape", "closest", "furthest"):
            assert ans in SHAPE_ANSWERS
        elif fam in ("left", "top"):
            assert ans in YES_NO
        else:
            assert fam == "count"
            assert ans in COUNT_ANSWERS


def test_family_question_templates(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    _, rows = _read_csv(out / "train.csv")
    starts = {
        "shape": "What is the shape of the ",
        "left": "Is the ",
        "top": "Is the ",
        "closest": "What is the shape of the object closest to the ",
        "furthest": "What is the shape of the object furthest from the ",
        "count": "How many objects have the same shape as the ",
    }
    for r in rows:
        assert r["question"].startswith(starts[r["family"]])
    seen = {r["family"] for r in rows}
    # 200 questions: every family should show up.
    assert seen == set(NON_RELATIONAL_FAMILIES) | set(RELATIONAL_FAMILIES)
    assert len({r["question"] for r in rows}) > 12


def test_determinism_and_seed_sensitivity(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    generate_sort_of_clevr(a, n_train=3, n_test=2, seed=7)
    generate_sort_of_clevr(b, n_train=3, n_test=2, seed=7)
    generate_sort_of_clevr(c, n_train=3, n_test=2, seed=8)
    for name in ("train.csv", "test.csv", "images/train_00001.png", "images/test_00001.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    assert (a / "images/train_00000.png").read_bytes() != (
        c / "images/train_00000.png"
    ).read_bytes()
    # Train and test are different streams.
    assert (a / "images/train_00000.png").read_bytes() != (a / "images/test_00000.png").read_bytes()


def test_test_split_independent_of_n_train(tmp_path: Path) -> None:
    generate_sort_of_clevr(tmp_path / "a", n_train=1, n_test=2, seed=3)
    generate_sort_of_clevr(tmp_path / "b", n_train=4, n_test=2, seed=3)
    assert (tmp_path / "a/test.csv").read_bytes() == (tmp_path / "b/test.csv").read_bytes()


def _check_answers_against_pixels(out: Path, split: str, n_images: int, s: int) -> int:
    """Re-derive every answer from the PNGs; return number of rows checked."""
    _, rows = _read_csv(out / f"{split}.csv")
    size = Image.open(out / "images" / f"{split}_00000.png").size[0]
    checked = 0
    for i in range(n_images):
        block = rows[i * ROWS_PER_IMAGE : (i + 1) * ROWS_PER_IMAGE]
        objs = _objects(out / block[0]["image"], s)
        # Every object is complete (an s x s box) and its pixel count matches
        # its shape, which would fail if objects overlapped or were clipped.
        for name, o in objs.items():
            assert (o["w"], o["h"]) == (s, s), (block[0]["image"], name)
            if o["shape"] == "square":
                assert o["count"] == s * s
            else:
                assert abs(o["count"] - math.pi * s * s / 4) < 0.1 * s * s
        centres = {n: np.array([o["cx"], o["cy"]]) for n, o in objs.items()}
        for r in block:
            color = next(c for c in COLORS if f" {c} object" in r["question"])
            me = objs[color]
            # the named object's centre, as fractions of the image side (explain's ground truth)
            assert float(r["target_x"]) == pytest.approx(me["cx"] / size, abs=1e-4)
            assert float(r["target_y"]) == pytest.approx(me["cy"] / size, abs=1e-4)
            fam = r["family"]
            if fam == "shape":
                expected = me["shape"]
            elif fam == "left":
                expected = "yes" if me["cx"] < size / 2 else "no"
            elif fam == "top":
                expected = "yes" if me["cy"] < size / 2 else "no"
            elif fam == "count":
                expected = str(sum(o["shape"] == me["shape"] for o in objs.values()))
            else:
                dists = {
                    n: float(np.linalg.norm(centres[n] - centres[color]))
                    for n in objs
                    if n != color
                }
                pick = min if fam == "closest" else max
                target = pick(dists, key=dists.__getitem__)
                expected = objs[target]["shape"]
            assert r["answer"] == expected, (r, objs)
            checked += 1
    return checked


def test_answers_match_pixels(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    checked = _check_answers_against_pixels(out, "train", N_TRAIN, 11)
    checked += _check_answers_against_pixels(out, "test", N_TEST, 11)
    assert checked == (N_TRAIN + N_TEST) * ROWS_PER_IMAGE


def test_answers_match_pixels_other_geometry(tmp_path: Path) -> None:
    # Even sizes exercise the other parity of centre coordinates.
    generate_sort_of_clevr(tmp_path, n_train=4, n_test=1, seed=5, image_size=64, object_size=8)
    assert Image.open(tmp_path / "images/train_00000.png").size == (64, 64)
    _check_answers_against_pixels(tmp_path, "train", 4, 8)


def test_objects_do_not_overlap(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    s = 11
    for i in range(N_TRAIN):
        objs = _objects(out / "images" / f"train_{i:05d}.png", s)
        arr = np.asarray(Image.open(out / "images" / f"train_{i:05d}.png"))
        coloured = int(np.any(arr != 255, axis=-1).sum())
        # Only the six objects are drawn, and all their pixels are accounted for.
        assert coloured == sum(o["count"] for o in objs.values())
        names = list(objs)
        for a_idx, a in enumerate(names):
            for b in names[a_idx + 1 :]:
                oa, ob = objs[a], objs[b]
                gap = max(abs(oa["cx"] - ob["cx"]), abs(oa["cy"] - ob["cy"]))
                assert gap >= s, (i, a, b)


def test_shapes_are_mixed(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    shapes = [
        o["shape"]
        for i in range(N_TRAIN)
        for o in _objects(out / "images" / f"train_{i:05d}.png", 11).values()
    ]
    # 60 objects at 50/50: both shapes must appear plenty of times.
    assert 10 < shapes.count("square") < 50


def test_overwrite_existing(tmp_path: Path) -> None:
    generate_sort_of_clevr(tmp_path, n_train=2, n_test=1, seed=1)
    first = (tmp_path / "train.csv").read_bytes()
    summary = generate_sort_of_clevr(tmp_path, n_train=2, n_test=1, seed=1)
    assert (tmp_path / "train.csv").read_bytes() == first
    assert summary["train_rows"] == 40


def test_empty_splits(tmp_path: Path) -> None:
    summary = generate_sort_of_clevr(tmp_path, n_train=0, n_test=0)
    assert summary["train_rows"] == summary["test_rows"] == 0
    header, rows = _read_csv(tmp_path / "train.csv")
    assert header == ["image", "question", "answer", "qtype", "family", "target_x", "target_y"]
    assert rows == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_train": -1}, "n_train"),
        ({"n_test": -5}, "n_test"),
        ({"n_train": 1.5}, "n_train"),
        ({"seed": -1}, "seed"),
        ({"image_size": 0}, "image_size"),
        ({"object_size": 0}, "object_size"),
        ({"object_size": -3}, "object_size"),
        ({"image_size": 10, "object_size": 11}, "object_size"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        generate_sort_of_clevr(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_impossible_placement(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="could not place"):
        generate_sort_of_clevr(tmp_path, n_train=1, n_test=0, image_size=30, object_size=11)
