"""Generator for Photo Views: random views of ten shipped photographs, one class per photograph.

A small natural-image classification set for transfer-learning comparisons (a CNN trained from
scratch against a frozen ImageNet backbone at a few training-set sizes). Every row is a random
view of one photograph, in the spirit of the random-resized-crop and colour-jitter views of
SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML, arXiv:2002.05709). Nothing is downloaded: the photographs ship inside
the scikit-image and scikit-learn wheels (``PHOTOS`` names each class's file):

==========  ==================================  ============================================
label       source (under site-packages)        content
==========  ==================================  ============================================
astronaut   skimage/data/astronaut.png          Eileen Collins in her flight suit (NASA)
cat         skimage/data/chelsea.png            Chelsea the cat's face
coffee      skimage/data/coffee.png             an espresso cup on a saucer, wooden table
rocket      skimage/data/rocket.jpg             Falcon 9 and towers at dusk (SpaceX)
motorcycle  skimage/data/motorcycle_left.png    a motorcycle in a workshop (Middlebury 2014)
palace      sklearn/datasets/images/china.jpg   a Chinese palace tower above a lake, trees
flower      sklearn/datasets/images/flower.jpg  an orange flower before green foliage
bricks      skimage/data/brick.png              a brick wall (greyscale)
grass       skimage/data/grass.png              grass (greyscale)
gravel      skimage/data/gravel.png             gravel (greyscale)
==========  ==================================  ============================================

Layout::

    out_dir/
        images/train_00000.jpg, ..., images/test_00000.jpg, ...   SIZE x SIZE RGB JPEG
        train.csv
        test.csv
        README.txt       classes, source files and their credits and licences

Each CSV has the columns ``image,label,source,box,angle,flip``: the JPEG path relative to
``out_dir``, the class name, the source file (as in the table), the crop box in source pixels as
``"x0 y0 x1 y1"`` (``x1``, ``y1`` exclusive), the rotation in degrees and ``1`` if the view was
mirrored. Classes are balanced: each appears ``n // 10`` or ``n // 10 + 1`` times per split.

How a view is made, and why:

- Train and test see disjoint pixels. Each photograph has a held-out band, ``TEST_FRACTION`` of
  its width or height on the side ``Photo.test_side`` (chosen so that both parts show the
  subject); test boxes lie inside the band, train boxes inside the rest. Test accuracy thus
  measures recognising what a photograph shows, not remembering its pixels.
- Geometry: a square box of ``CROP_SCALE`` times the photograph's shorter side at a random
  position (redrawn, up to ``CONTENT_TRIES`` times, while its grey-level standard deviation is
  below ``CONTENT_STD_RATIO`` of the whole photograph's, so that a view is rarely a patch of
  plain sky or blur, which would not show its class), rotated by up to ``MAX_ROTATION``
  degrees and cut back to the largest square inside the box, mirrored with probability 1/2 and
  resized to ``size`` x ``size``.
- Colour: brightness, contrast and saturation factors (``BRIGHTNESS``, ``CONTRAST``,
  ``SATURATION``), a hue rotation of up to ``HUE`` of the colour circle, greyscale with
  probability ``GREYSCALE_PROBABILITY``, then a colour cast (each channel scaled by a factor in
  ``COLOUR_CAST``) that also tints the greyscale photographs. The photographs differ a lot in
  colour (orange suit, red saucer, grey bricks), and a tiny CNN given ten examples per class
  would learn the mean colour and nothing else. With the defaults, a nearest-class-mean
  classifier on each view's mean RGB scores about 0.14 on the test split (chance is 0.10; 0.39
  without the jitter), while one on colour-blind gradient histograms scores about 0.5. The hue
  turns only a little: turning it freely lowers the mean-RGB score only to about 0.11 (the
  other jitter already hides the colour) but gives blue cats and green coffee, which suit
  ImageNet features less.
- Each view is saved as JPEG at a quality drawn from ``JPEG_QUALITY``.

All ranges are module constants, so the difficulty can be tuned in one place. Output is
determined by the arguments (same seed, same CSVs and same JPEG bytes with the same Pillow
build); train and test draw from independent streams spawned from the seed, so the test split
does not depend on ``train_size``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ..errors import MmfuseError
from .av_digits import _check_int

__all__ = [
    "CSV_HEADER",
    "PHOTOS",
    "TEST_FRACTION",
    "Photo",
    "generate_photo_views",
    "load_photo",
    "render_geometry",
    "split_region",
]

CSV_HEADER: tuple[str, ...] = ("image", "label", "source", "box", "angle", "flip")


@dataclass(frozen=True)
class Photo:
    """One class: its photograph, the side held out for the test split, and its credit."""

    label: str
    source: str  # path under site-packages: "<package>/<folder>/<file>"
    test_side: str  # "left", "right", "top" or "bottom"
    credit: str


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage/data/astronaut.png", "bottom",
          "NASA, portrait of Eileen Collins; public domain"),
    Photo("cat", "skimage/data/chelsea.png", "right", "Stefan van der Walt; CC0"),
    Photo("coffee", "skimage/data/coffee.png", "bottom",
          "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0"),
    Photo("rocket", "skimage/data/rocket.jpg", "bottom", "SpaceX (DSCOVR launch); public domain"),
    Photo("motorcycle", "skimage/data/motorcycle_left.png", "right",
          "Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014), via scikit-image"),
    Photo("palace", "sklearn/datasets/images/china.jpg", "bottom",
          "danielbuechele on Flickr; CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/)"),
    Photo("flower", "sklearn/datasets/images/flower.jpg", "bottom",
          "vultilion on Flickr; CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/)"),
    Photo("bricks", "skimage/data/brick.png", "right", "CC0Textures (Bricks25); CC0"),
    Photo("grass", "skimage/data/grass.png", "right", "linolafett on DeviantArt; CC0"),
    Photo("gravel", "skimage/data/gravel.png", "right", "CC0Textures (Gravel04); CC0"),
)
"""The classes, one photograph each; ``source`` is its path under site-packages."""

_PIP_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn"}

# Geometry.
TEST_FRACTION = 0.4
"""Share of each photograph's width or height held out for the test split."""
CROP_SCALE = (0.25, 0.4)
"""Range of a box's side, as a fraction of the photograph's shorter side (at most
``TEST_FRACTION``, so that a box always fits inside the held-out band)."""
MAX_ROTATION = 10.0
"""Largest rotation, in degrees, either way."""
CONTENT_STD_RATIO = 0.4
"""A box whose grey-level standard deviation is below this share of its whole photograph's is
redrawn (plain sky, blur), up to ``CONTENT_TRIES`` times."""
CONTENT_TRIES = 20
"""Boxes drawn at most per view while looking for one with enough content."""

# Colour.
BRIGHTNESS = (0.6, 1.4)
"""Range of the brightness factor (1 keeps the image)."""
CONTRAST = (0.6, 1.4)
"""Range of the contrast factor (1 keeps the image)."""
SATURATION = (0.3, 1.7)
"""Range of the saturation factor (0 greyscale, 1 keeps the image)."""
HUE = 0.1
"""Largest hue rotation, as a fraction of the colour circle, either way (0.5 would be any hue)."""
GREYSCALE_PROBABILITY = 0.2
"""Chance that a view is turned grey before the colour cast."""
COLOUR_CAST = (0.7, 1.3)
"""Range of the factor each RGB channel is scaled by, drawn per channel."""
JPEG_QUALITY = (40, 95)
"""Inclusive range of the JPEG quality."""

_SPLITS = ("train", "test")


@dataclass(frozen=True)
class _View:
    """Everything drawn for one row: which photograph, where, and how it is jittered."""

    photo: int  # index into PHOTOS
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels, x1 and y1 exclusive
    angle: float  # degrees, counter-clockwise
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float  # fraction of the colour circle
    greyscale: bool
    cast: tuple[float, float, float]
    quality: int


def generate_photo_views(
    out_dir: str | Path,
    train_size: int = 800,
    test_size: int = 400,
    seed: int = 0,
    size: int = 96,
) -> dict:
    """Generate a Photo Views dataset on disk: jittered crops of ten shipped photographs.

    Writes ``images/{split}_{i:05d}.jpg``, ``train.csv`` / ``test.csv`` with columns
    ``image,label,source,box,angle,flip`` and ``README.txt`` (see the module docstring). Train
    and test views come from disjoint parts of each photograph and from independent random
    streams spawned from ``seed``. ``out_dir`` is created if missing; files with the same names
    are overwritten.

    Args:
        out_dir: Directory to write the dataset into.
        train_size: Number of training rows (>= 1).
        test_size: Number of test rows (>= 1).
        seed: Non-negative random seed.
        size: Side of the square output images in pixels (>= 8).

    Returns:
        Summary dict: ``out_dir`` (str), ``train_rows``, ``test_rows``, ``size`` (ints),
        ``classes`` (label -> source file) and ``seconds``.

    Raises:
        ValueError: If an argument is invalid.
        MmfuseError: If scikit-image or scikit-learn (the ``datasets`` extra) is not installed.
    """
    start = time.perf_counter()
    sizes = {"train": _check_int("train_size", train_size, 1, "pass a positive row count"),
             "test": _check_int("test_size", test_size, 1, "pass a positive row count")}
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    size = _check_int("size", size, 8, "pass an image side in pixels, e.g. 96")
    photos = [load_photo(photo) for photo in PHOTOS]
    greys = [np.asarray(photo.convert("L"), dtype=np.float32) for photo in photos]

    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(seed).spawn(len(_SPLITS))
    summary: dict = {"out_dir": str(root)}
    for split, stream in zip(_SPLITS, streams, strict=True):
        views = _plan_split(split, sizes[split], greys, np.random.default_rng(stream))
        _write_split(root, split, views, photos, size)
        summary[f"{split}_rows"] = len(views)
    _write_readme(root, size)
    summary["size"] = size
    summary["classes"] = {photo.label: photo.source for photo in PHOTOS}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def load_photo(photo: Photo) -> Image.Image:
    """Read a class's photograph from its installed package as an RGB ``PIL.Image``.

    Raises:
        MmfuseError: If the package that ships the photograph is not installed, or the file is
            not in it.
    """
    package, _, inside = photo.source.partition("/")
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise MmfuseError(f"generating photo-views needs the package {_PIP_NAMES[package]!r}, "
                          f"which ships {inside}: pip install 'mmfuse[datasets]'")
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.is_file():
        raise MmfuseError(f"{path} is missing from the installed {_PIP_NAMES[package]}; "
                          f"reinstall it with pip install --force-reinstall "
                          f"{_PIP_NAMES[package]}")
    with Image.open(path) as image:
        return image.convert("RGB")


def split_region(width: int, height: int, test_side: str, split: str) -> tuple[int, ...]:
    """The part of a ``width`` x ``height`` photograph a split's boxes lie in: x0, y0, x1, y1.

    The test region is the band of ``TEST_FRACTION`` of the width (``left``/``right``) or the
    height (``top``/``bottom``) on ``test_side``; the train region is the rest.
    """
    horizontal = test_side in ("left", "right")
    extent = width if horizontal else height
    band = round(extent * TEST_FRACTION)
    near = test_side in ("left", "top")  # the band starts at 0
    if (split == "test") == near:
        lo, hi = 0, (band if near else extent - band)
    else:
        lo, hi = (band, extent) if near else (extent - band, extent)
    return (lo, 0, hi, height) if horizontal else (0, lo, width, hi)


def _plan_split(split: str, n: int, greys: list[np.ndarray], rng: np.random.Generator
                ) -> list[_View]:
    """Draw every view of a split; each class appears ``n // 10`` or ``n // 10 + 1`` times."""
    labels = rng.permutation(np.arange(n) % len(PHOTOS))
    floors = [CONTENT_STD_RATIO * float(grey.std()) for grey in greys]
    return [_plan_view(int(k), split, greys[k], floors[k], rng) for k in labels]


def _plan_view(k: int, split: str, grey: np.ndarray, floor: float, rng: np.random.Generator
               ) -> _View:
    """Draw one view of photograph ``k``: its box, then the rest of its jitter."""
    region = split_region(grey.shape[1], grey.shape[0], PHOTOS[k].test_side, split)
    return _View(
        photo=k, box=_draw_box(grey, region, floor, rng),
        angle=round(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), 1),
        flip=bool(rng.random() < 0.5),
        brightness=float(rng.uniform(*BRIGHTNESS)),
        contrast=float(rng.uniform(*CONTRAST)),
        saturation=float(rng.uniform(*SATURATION)),
        hue=float(rng.uniform(-HUE, HUE)),
        greyscale=bool(rng.random() < GREYSCALE_PROBABILITY),
        cast=tuple(float(g) for g in rng.uniform(*COLOUR_CAST, size=3)),
        quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
    )


def _draw_box(grey: np.ndarray, region: tuple[int, ...], floor: float,
              rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A square box inside ``region``, redrawn while its grey-level std is below ``floor``."""
    short = min(grey.shape)
    x0r, y0r, x1r, y1r = region
    for _ in range(CONTENT_TRIES):
        side = min(round(short * rng.uniform(*CROP_SCALE)), x1r - x0r, y1r - y0r)
        x0 = int(rng.integers(x0r, x1r - side + 1))
        y0 = int(rng.integers(y0r, y1r - side + 1))
        if grey[y0:y0 + side, x0:x0 + side].std() >= floor:
            break
    return x0, y0, x0 + side, y0 + side


def render_geometry(photo: Image.Image, box: tuple[int, int, int, int], angle: float,
                    flip: bool, size: int) -> Image.Image:
    """Crop ``box``, rotate by ``angle`` degrees, cut the largest square inside, mirror, resize.

    Only pixels of ``box`` reach the result: the rotated crop is cut back to the largest square
    that stays inside it (side ``s / (|cos a| + |sin a|)``, less a pixel against resampling at the
    edge), so no fill colour and nothing outside the box shows.
    """
    crop = photo.crop(box).rotate(angle, resample=Image.Resampling.BICUBIC)
    side = box[2] - box[0]
    theta = math.radians(angle)
    inner = int(side / (abs(math.cos(theta)) + abs(math.sin(theta)))) - 2
    offset = (side - inner) // 2
    crop = crop.crop((offset, offset, offset + inner, offset + inner))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((size, size), Image.Resampling.LANCZOS)


def _jitter_colour(image: Image.Image, view: _View) -> Image.Image:
    """Apply a view's brightness, contrast, saturation, hue, greyscale and colour cast."""
    image = ImageEnhance.Brightness(image).enhance(view.brightness)
    image = ImageEnhance.Contrast(image).enhance(view.contrast)
    image = ImageEnhance.Color(image).enhance(view.saturation)
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(view.hue * 256)) % 256
    image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    if view.greyscale:
        image = image.convert("L").convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) * np.asarray(view.cast, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _write_split(root: Path, split: str, views: list[_View], photos: list[Image.Image],
                 size: int) -> None:
    """Render and write one split's JPEGs and CSV."""
    with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for i, view in enumerate(views):
            image = f"images/{split}_{i:05d}.jpg"
            pixels = render_geometry(photos[view.photo], view.box, view.angle, view.flip, size)
            _jitter_colour(pixels, view).save(root / image, format="JPEG", quality=view.quality)
            photo = PHOTOS[view.photo]
            writer.writerow((image, photo.label, photo.source, " ".join(map(str, view.box)),
                             f"{view.angle:.1f}", int(view.flip)))


def _write_readme(root: Path, size: int) -> None:
    """Write README.txt: what the dataset is, its classes, and each photograph's credit."""
    lines = [
        "Photo Views, generated by `mmfuse datasets photo-views` (mmfuse.datasets.photo_views).",
        "",
        f"{size}x{size} JPEG views of one photograph per class: random crops of "
        f"{CROP_SCALE[0]:g}-{CROP_SCALE[1]:g} of the shorter side, rotation up to "
        f"{MAX_ROTATION:g} degrees, mirroring, and strong colour jitter.",
        f"Test views come from a held-out band ({TEST_FRACTION:.0%} of the width or height on "
        "the side named below), train views from the rest, so the splits share no pixels.",
        "",
        "label       test band  source (under site-packages) - credit; licence",
    ]
    lines += [f"{p.label:<11} {p.test_side:<10} {p.source} - {p.credit}" for p in PHOTOS]
    (root / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
