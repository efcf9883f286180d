"""Generator for the Sort-of-CLEVR visual question answering benchmark.

Sort-of-CLEVR was introduced by Santoro et al. (2017), "A simple neural network
module for relational reasoning", NeurIPS 2017 (arXiv:1706.01427). Each image
holds six objects, one per colour, each a square or a circle, on a white
background. Every image comes with non-relational questions (about one object on
its own) and relational questions (about how one object relates to the others).

This module writes a real on-disk dataset::

    out_dir/
        images/train_00000.png, ..., images/test_00000.png, ...
        train.csv
        test.csv

Each CSV has the columns ``image,question,answer,qtype,family,target_x,target_y``;
``image`` is the PNG path relative to ``out_dir``; ``target_x`` and ``target_y`` are the centre
of the object the question names (by colour), as fractions of the image's width and height
(x from the left, y from the top): the ground truth that ``mmfuse explain``'s heat maps are
checked against. Every image gets 10 non-relational and
10 relational questions, written as 20 consecutive rows.

Geometry conventions: an object occupies an ``object_size`` x ``object_size``
block of pixels whose top-left pixel is ``(x0, y0)``; its centre is
``(x0 + object_size / 2, y0 + object_size / 2)`` in continuous image
coordinates (pixel ``i`` spans ``[i, i + 1)``), so the image midline is
``image_size / 2``. To keep every answer unambiguous, layouts are resampled if
an object's centre lies exactly on a midline or if any object has two equally
close (or equally far) other objects.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "NON_RELATIONAL_FAMILIES",
    "RELATIONAL_FAMILIES",
    "SHAPES",
    "generate_sort_of_clevr",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "yellow": (255, 255, 0),
    "gray": (128, 128, 128),
}
"""Object colours in a fixed order; each image holds exactly one object of each."""

SHAPES: tuple[str, str] = ("square", "circle")
"""Possible object shapes."""

NON_RELATIONAL_FAMILIES: tuple[str, str, str] = ("shape", "left", "top")
"""Question families with ``qtype == "non-relational"``."""

RELATIONAL_FAMILIES: tuple[str, str, str] = ("closest", "furthest", "count")
"""Question families with ``qtype == "relational"``."""

CSV_HEADER: tuple[str, ...] = ("image", "question", "answer", "qtype", "family", "target_x",
                               "target_y")

_N_NON_RELATIONAL = 10
_N_RELATIONAL = 10
_BACKGROUND = (255, 255, 255)
_MIN_DIST_FACTOR = 1.5
_CANDIDATES_PER_ATTEMPT = 64
_MAX_LAYOUT_ATTEMPTS = 500

_COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_N_OBJECTS = len(_COLOR_NAMES)

_TEMPLATES: dict[str, str] = {
    "shape": "What is the shape of the {} object?",
    "left": "Is the {} object on the left of the image?",
    "top": "Is the {} object at the top of the image?",
    "closest": "What is the shape of the object closest to the {} object?",
    "furthest": "What is the shape of the object furthest from the {} object?",
    "count": "How many objects have the same shape as the {} object?",
}


def _check_int(name: str, value: object, minimum: int, fix: str) -> int:
    """Validate that ``value`` is an integer >= ``minimum``.

    Args:
        name: Argument name, used in the error message.
        value: Value to check.
        minimum: Smallest allowed value.
        fix: Hint appended to the error message.

    Returns:
        The value as a plain ``int``.

    Raises:
        ValueError: If ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}; {fix}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; {fix}.")
    return int(value)


def _sample_layout(rng: np.random.Generator, image_size: int, object_size: int) -> np.ndarray:
    """Sample top-left corners for six non-overlapping objects.

    Candidate corners are drawn in batches and accepted greedily when their
    centre is at least ``1.5 * object_size`` from every accepted centre, which
    also guarantees the axis-aligned ``object_size`` boxes do not overlap.
    Layouts with a centre on an image midline or with tied closest/furthest
    distances are rejected so every question has exactly one answer.

    Args:
        rng: Random generator to draw from.
        image_size: Side of the square image in pixels.
        object_size: Side of each object's bounding box in pixels.

    Returns:
        Integer array of shape ``(6, 2)`` with ``(x0, y0)`` per object, in
        ``COLORS`` order.

    Raises:
        ValueError: If no valid layout is found after many attempts.
    """
    high = image_size - object_size  # inclusive upper bound for x0 / y0
    # Work in doubled coordinates so centres (x0 + s/2) are integers.
    min_dist2 = (2 * _MIN_DIST_FACTOR * object_size) ** 2
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        cands = rng.integers(0, high + 1, size=(_CANDIDATES_PER_ATTEMPT, 2))
        centres2 = 2 * cands + object_size
        # Never put a centre exactly on a midline (left/top would be ambiguous).
        ok = np.all(centres2 != image_size, axis=1)
        chosen: list[int] = []
        for i in np.flatnonzero(ok):
            c = centres2[i]
            if all(float(np.sum((c - centres2[j]) ** 2)) >= min_dist2 for j in chosen):
                chosen.append(int(i))
                if len(chosen) == _N_OBJECTS:
                    break
        if len(chosen) < _N_OBJECTS:
            continue
        pts = centres2[chosen]
        d2 = np.sum((pts[:, None, :] - pts[None, :, :]) ** 2, axis=-1)
        if _has_distance_ties(d2):
            continue
        return cands[chosen]
    raise ValueError(
        f"could not place {_N_OBJECTS} non-overlapping objects of "
        f"object_size={object_size} in an image of image_size={image_size} after "
        f"{_MAX_LAYOUT_ATTEMPTS} attempts; increase image_size or decrease "
        "object_size."
    )


def _has_distance_ties(d2: np.ndarray) -> bool:
    """Return whether any object's closest or furthest neighbour is tied.

    Args:
        d2: Symmetric ``(n, n)`` integer matrix of squared centre distances.

    Returns:
        True if some row has a repeated minimum or maximum off-diagonal entry.
    """
    n = d2.shape[0]
    for i in range(n):
        row = np.sort(np.delete(d2[i], i))
        if row[0] == row[1] or row[-1] == row[-2]:
            return True
    return False


def _draw_image(
    corners: np.ndarray, shapes: np.ndarray, image_size: int, object_size: int
) -> Image.Image:
    """Render one scene.

    Args:
        corners: ``(6, 2)`` top-left corners, in ``COLORS`` order.
        shapes: ``(6,)`` indices into ``SHAPES``.
        image_size: Side of the square image in pixels.
        object_size: Side of each object's bounding box in pixels.

    Returns:
        The RGB image.
    """
    img = Image.new("RGB", (image_size, image_size), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    for (x0, y0), shape, color in zip(
        corners.tolist(), shapes.tolist(), COLORS.values(), strict=True
    ):
        box = (x0, y0, x0 + object_size - 1, y0 + object_size - 1)
        if SHAPES[shape] == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.ellipse(box, fill=color)
    return img


def _answer(
    family: str,
    obj: int,
    centres2: np.ndarray,
    d2: np.ndarray,
    shapes: np.ndarray,
    image_size: int,
) -> str:
    """Compute the answer to one question.

    Args:
        family: Question family name.
        obj: Index of the queried object (its colour index).
        centres2: ``(6, 2)`` doubled centres ``(2 * cx, 2 * cy)``.
        d2: ``(6, 6)`` squared distances between doubled centres.
        shapes: ``(6,)`` indices into ``SHAPES``.
        image_size: Side of the square image in pixels.

    Returns:
        The answer string.
    """
    if family == "shape":
        return SHAPES[shapes[obj]]
    if family == "left":
        return "yes" if centres2[obj, 0] < image_size else "no"
    if family == "top":
        return "yes" if centres2[obj, 1] < image_size else "no"
    if family == "count":
        return str(int(np.sum(shapes == shapes[obj])))
    dist = d2[obj].astype(np.float64)
    if family == "closest":
        dist[obj] = np.inf
        return SHAPES[shapes[int(np.argmin(dist))]]
    if family == "furthest":
        dist[obj] = -np.inf
        return SHAPES[shapes[int(np.argmax(dist))]]
    raise AssertionError(f"unknown family {family!r}")  # pragma: no cover


def _generate_split(
    split: str,
    n_images: int,
    rng: np.random.Generator,
    out_dir: Path,
    image_size: int,
    object_size: int,
) -> tuple[int, int]:
    """Generate one split's images and CSV.

    Args:
        split: Split name (``"train"`` or ``"test"``).
        n_images: Number of images to generate.
        rng: Random generator for this split.
        out_dir: Dataset root directory (``images/`` must exist).
        image_size: Side of the square image in pixels.
        object_size: Side of each object's bounding box in pixels.

    Returns:
        ``(rows_written, images_written)``.
    """
    rows = 0
    csv_path = out_dir / f"{split}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for idx in range(n_images):
            corners = _sample_layout(rng, image_size, object_size)
            shapes = rng.integers(0, len(SHAPES), size=_N_OBJECTS)
            rel_path = f"images/{split}_{idx:05d}.png"
            _draw_image(corners, shapes, image_size, object_size).save(
                out_dir / rel_path, format="PNG"
            )

            centres2 = 2 * corners + object_size
            d2 = np.sum((centres2[:, None, :] - centres2[None, :, :]) ** 2, axis=-1)
            n_q = _N_NON_RELATIONAL + _N_RELATIONAL
            colors = rng.integers(0, _N_OBJECTS, size=n_q).tolist()
            fams = rng.integers(0, 3, size=n_q).tolist()
            for q in range(n_q):
                if q < _N_NON_RELATIONAL:
                    qtype, family = "non-relational", NON_RELATIONAL_FAMILIES[fams[q]]
                else:
                    qtype, family = "relational", RELATIONAL_FAMILIES[fams[q]]
                obj = colors[q]
                question = _TEMPLATES[family].format(_COLOR_NAMES[obj])
                answer = _answer(family, obj, centres2, d2, shapes, image_size)
                target_x, target_y = (centres2[obj] / (2 * image_size)).tolist()
                writer.writerow((rel_path, question, answer, qtype, family,
                                 f"{target_x:.4f}", f"{target_y:.4f}"))
                rows += 1
    return rows, n_images


def generate_sort_of_clevr(
    out_dir: str | Path,
    n_train: int = 9800,
    n_test: int = 200,
    seed: int = 0,
    image_size: int = 75,
    object_size: int = 11,
) -> dict:
    """Generate a Sort-of-CLEVR dataset on disk (Santoro et al., 2017).

    Writes ``images/{split}_{i:05d}.png`` (RGB, white background, six objects:
    one square or circle per colour in ``COLORS``) and ``train.csv`` /
    ``test.csv`` with columns ``image,question,answer,qtype,family,target_x,target_y``
    (the named object's centre as fractions of the image side). Each image
    has 10 non-relational questions (families ``shape``, ``left``, ``top``) and
    10 relational questions (families ``closest``, ``furthest``, ``count``),
    each about an independently sampled colour, written as 20 consecutive rows.

    Answers: ``shape``/``closest``/``furthest`` -> ``"circle"`` or
    ``"square"``; ``left``/``top`` -> ``"yes"`` or ``"no"`` (centre coordinate
    below ``image_size / 2``); ``count`` -> ``"1"`` .. ``"6"`` (the queried
    object included).

    Output is fully determined by the arguments: train and test use two
    independent streams spawned from ``seed`` (so the test split does not
    depend on ``n_train``). ``out_dir`` is created if missing; existing files
    with the same names are overwritten, other files are left alone.

    Args:
        out_dir: Directory to write the dataset into.
        n_train: Number of training images (>= 0).
        n_test: Number of test images (>= 0).
        seed: Non-negative random seed.
        image_size: Side of the square images in pixels (> 0).
        object_size: Side of each object (square side / circle diameter) in
            pixels (> 0, at most ``image_size``).

    Returns:
        Summary dict with keys ``out_dir`` (str), ``train_rows``, ``test_rows``,
        ``train_images`` and ``test_images`` (ints).

    Raises:
        ValueError: If an argument is invalid, or if six non-overlapping objects
            cannot be placed for the given ``image_size`` and ``object_size``.
    """
    n_train = _check_int("n_train", n_train, 0, "pass a non-negative image count")
    n_test = _check_int("n_test", n_test, 0, "pass a non-negative image count")
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    image_size = _check_int("image_size", image_size, 1, "pass a positive image side in pixels")
    object_size = _check_int("object_size", object_size, 1, "pass a positive object size in pixels")
    if object_size > image_size:
        raise ValueError(
            f"object_size ({object_size}) must not exceed image_size "
            f"({image_size}); decrease object_size or increase image_size."
        )

    # Fail fast on impossible geometry, even when both splits are empty. This
    # uses a throwaway generator so the split streams are unaffected.
    _sample_layout(np.random.default_rng(seed), image_size, object_size)

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)

    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    train_rows, train_images = _generate_split(
        "train",
        n_train,
        np.random.default_rng(train_seq),
        root,
        image_size,
        object_size,
    )
    test_rows, test_images = _generate_split(
        "test",
        n_test,
        np.random.default_rng(test_seq),
        root,
        image_size,
        object_size,
    )
    return {
        "out_dir": str(root),
        "train_rows": train_rows,
        "test_rows": test_rows,
        "train_images": train_images,
        "test_images": test_images,
    }
