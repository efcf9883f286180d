"""Generator for Moving Shapes, a video + text captioning dataset that needs both inputs.

In the spirit of Moving MNIST (Srivastava et al. 2015, "Unsupervised Learning of Video
Representations using LSTMs", ICML, arXiv:1502.04681) and its captioned variant in Sync-DRAW
(Mittal et al. 2017, ACM Multimedia, arXiv:1611.10314), but with coloured shapes whose motion
turns once, and with a text prompt that picks which object to describe. The answer needs both
the clip and the prompt: the same clip gives different captions for different prompts, and the
same prompt gives different captions for different clips.

Layout::

    out_dir/
        videos/train_00000.mp4, ..., videos/test_00000.mp4, ...   MP4 (MPEG-4 Part 2, yuv420p)
        train.csv
        test.csv

Each clip is ``FRAMES`` frames of ``SIZE`` x ``SIZE`` pixels at ``FPS`` frames per second, a
dark background with one or two shapes (exactly half the clips of a split have two, rounded
down). A shape is a ``SHAPES`` kind in a ``COLOURS`` colour, ``SHAPE_SIZE`` pixels across; the
two shapes of a clip have different colours (their kinds may match). Each shape moves at a
constant ``SPEED`` (pixels per frame) in direction ``d1`` through frames ``0 .. TURN_FRAME - 1``
and in direction ``d2 != d1`` from then on (``d2`` may be the opposite of ``d1``); ``up`` is
towards the top of the frame. Start positions are drawn so that each shape stays at least
``MARGIN`` pixels inside the frame throughout, and two shapes never overlap by more than
``MAX_OVERLAP`` of the smaller one's bounding box in any frame (so both stay visible). Shapes are
drawn in ``COLOURS`` order, then light pixel noise (``NOISE``) is added.

Each CSV has the columns ``video,prompt,caption,objects``: the MP4 path relative to ``out_dir``,
the text prompt, the target caption, and the clip's object count (``"1"`` or ``"2"``). A clip
gives consecutive rows: one ``"describe the COLOUR object"`` row per shape, in ``COLOURS`` order,
whose caption is that shape's (see ``caption``: ``"the red circle moves left then up"``), then a
``"describe all objects"`` row whose caption joins every shape's caption with ``" and "`` in
``COLOURS`` order. So a one-shape clip gives 2 rows and a two-shape clip 3.

Output is determined by the arguments: the same seed gives the same CSVs and the same MP4 bytes
(with the same PyAV/FFmpeg build; another FFmpeg version may encode differently, and the decoded
frames then differ only by codec rounding). Train and test draw from independent streams spawned
from the seed, so the test split does not depend on ``train_size``.
"""

from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import require
from .av_digits import _check_int

__all__ = [
    "COLOURS",
    "CSV_HEADER",
    "DIRECTIONS",
    "FPS",
    "FRAMES",
    "PROMPT_ALL",
    "PROMPT_ONE",
    "SHAPES",
    "SIZE",
    "caption",
    "generate_moving_shapes",
]

CSV_HEADER: tuple[str, ...] = ("video", "prompt", "caption", "objects")

FRAMES = 16
SIZE = 64
"""Frame height and width, in pixels."""
FPS = 8
TURN_FRAME = 8
"""First frame of the second motion segment (the step into it is already in ``d2``)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
"""Shape colours as RGB, in the fixed order of drawing, rows and joined captions."""
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Unit steps as ``(dx, dy)`` in image coordinates (y grows downwards)."""

SHAPE_SIZE = (12, 14)
"""Inclusive range of a shape's bounding-box side, in pixels."""
SPEED = (2, 3)
"""Inclusive range of a shape's speed, in whole pixels per frame."""
MARGIN = 1
"""Smallest gap, in pixels, between a shape's bounding box and the frame's edge."""
MAX_OVERLAP = 0.25
"""Largest share of the smaller bounding box that two shapes may cover together in a frame."""
BACKGROUND = 16
"""Grey level of the background (16 is black in video's limited range)."""
NOISE = 4
"""Pixel noise: every channel of every pixel moves by a uniform integer in ``-NOISE..NOISE``
grey levels (0 for none). Uniform integers are drawn several times faster than Gaussians."""
BIT_RATE = 2_000_000
"""Encoder bit rate: far above what 64x64 clips need, so the colours survive encoding."""

PROMPT_ONE = "describe the {} object"
PROMPT_ALL = "describe all objects"

_CODEC = "mpeg4"
_PIXEL_FORMAT = "yuv420p"
_WRITE_THREADS = 4
_MAX_LAYOUT_ATTEMPTS = 1000
_SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Shape:
    """One planned shape: what it looks like, how it moves and where it starts."""

    colour: str
    kind: str
    d1: str
    d2: str
    size: int
    speed: int
    start: tuple[int, int]  # top-left corner (x, y) in frame 0

    def corners(self) -> np.ndarray:
        """Top-left corner ``(x, y)`` in every frame, as an int ``(FRAMES, 2)`` array."""
        return np.asarray(self.start) + _offsets(self.d1, self.d2, self.speed)


@dataclass(frozen=True)
class _Clip:
    """One planned clip: its shapes in ``COLOURS`` order and the seed of its pixel noise."""

    shapes: tuple[_Shape, ...]
    noise_seed: int


def caption(colour: str, shape: str, d1: str, d2: str) -> str:
    """The caption of one shape, e.g. ``"the red circle moves left then up"``.

    Args:
        colour: A key of ``COLOURS``.
        shape: One of ``SHAPES``.
        d1: The direction (a key of ``DIRECTIONS``) of the first segment.
        d2: The direction of the second segment; must differ from ``d1``.

    Raises:
        ValueError: If a value is not one of the accepted ones, or ``d2 == d1``.
    """
    for name, value, accepted in (("colour", colour, COLOURS), ("shape", shape, SHAPES),
                                  ("d1", d1, DIRECTIONS), ("d2", d2, DIRECTIONS)):
        if value not in accepted:
            raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}.")
    if d1 == d2:
        raise ValueError(f"d2 must differ from d1, got both {d1!r}; the motion turns once.")
    return f"the {colour} {shape} moves {d1} then {d2}"


def generate_moving_shapes(
    out_dir: str | Path,
    train_size: int = 24000,
    test_size: int = 300,
    seed: int = 0,
) -> dict:
    """Generate a Moving Shapes video captioning dataset on disk.

    Writes ``videos/{split}_{i:05d}.mp4`` and ``train.csv`` / ``test.csv`` with columns
    ``video,prompt,caption,objects`` (see the module docstring): 2 rows per one-shape clip and
    3 per two-shape clip. Train and test use independent random streams spawned from ``seed``,
    so the test split does not depend on ``train_size``. ``out_dir`` is created if missing;
    files with the same names are overwritten.

    Args:
        out_dir: Directory to write the dataset into.
        train_size: Number of training clips (>= 1).
        test_size: Number of test clips (>= 1).
        seed: Non-negative random seed.

    Returns:
        Summary dict: ``out_dir`` (str), ``train_rows``, ``test_rows``, ``train_clips``,
        ``test_clips`` (ints) and ``seconds``.

    Raises:
        ValueError: If an argument is invalid.
        MmfuseError: If PyAV (the ``video`` extra) is not installed.
    """
    start = time.perf_counter()
    sizes = {"train": _check_int("train_size", train_size, 1, "pass a positive clip count"),
             "test": _check_int("test_size", test_size, 1, "pass a positive clip count")}
    seed = _check_int("seed", seed, 0, "pass a non-negative integer seed")
    require("av", "video", "generating moving-shapes videos")

    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(seed).spawn(len(_SPLITS))
    summary: dict = {"out_dir": str(root)}
    for split, stream in zip(_SPLITS, streams, strict=True):
        clips = _plan_split(sizes[split], np.random.default_rng(stream))
        summary[f"{split}_rows"] = _write_split(root, split, clips)
        summary[f"{split}_clips"] = len(clips)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _offsets(d1: str, d2: str, speed: int) -> np.ndarray:
    """Displacement from frame 0 in every frame, as an int ``(FRAMES, 2)`` array of (dx, dy)."""
    steps = np.array([DIRECTIONS[d1 if t < TURN_FRAME else d2] for t in range(1, FRAMES)])
    return np.vstack([np.zeros((1, 2), int), np.cumsum(steps * speed, axis=0)])


def _plan_split(n: int, rng: np.random.Generator) -> list[_Clip]:
    """Draw every clip of a split: half of them (rounded down) hold two shapes."""
    counts = rng.permutation(np.arange(n) % 2 + 1)
    return [_plan_clip(int(k), rng) for k in counts]


def _plan_clip(n_shapes: int, rng: np.random.Generator) -> _Clip:
    """Draw a clip's shapes and motions, then start positions that keep them apart enough."""
    colours = sorted(rng.choice(len(COLOURS), size=n_shapes, replace=False).tolist())
    looks = []
    for colour in colours:
        d1 = int(rng.integers(len(DIRECTIONS)))
        d2 = (d1 + int(rng.integers(1, len(DIRECTIONS)))) % len(DIRECTIONS)
        looks.append((list(COLOURS)[colour], SHAPES[rng.integers(len(SHAPES))],
                      list(DIRECTIONS)[d1], list(DIRECTIONS)[d2],
                      int(rng.integers(SHAPE_SIZE[0], SHAPE_SIZE[1] + 1)),
                      int(rng.integers(SPEED[0], SPEED[1] + 1))))
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        shapes = tuple(_Shape(*look, start=_draw_start(*look[2:], rng)) for look in looks)
        if len(shapes) == 1 or _overlap(*shapes) <= MAX_OVERLAP:
            return _Clip(shapes, int(rng.integers(2**63)))
    raise RuntimeError("no layout kept the shapes apart; lower SHAPE_SIZE or raise MAX_OVERLAP")


def _draw_start(d1: str, d2: str, size: int, speed: int, rng: np.random.Generator
                ) -> tuple[int, int]:
    """A random frame-0 corner from which the whole path stays ``MARGIN`` inside the frame."""
    offsets = _offsets(d1, d2, speed)
    low = MARGIN - offsets.min(axis=0)
    high = SIZE - MARGIN - size - offsets.max(axis=0)
    x, y = (int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True))
    return x, y


def _overlap(a: _Shape, b: _Shape) -> float:
    """Largest bounding-box intersection over any frame, as a share of the smaller box."""
    ca, cb = a.corners(), b.corners()
    side = np.minimum(ca + a.size, cb + b.size) - np.maximum(ca, cb)
    area = np.prod(np.clip(side, 0, None), axis=1).max()
    return float(area / min(a.size, b.size) ** 2)


@cache
def _mask(kind: str, size: int) -> np.ndarray:
    """A ``(size, size)`` boolean mask of one shape kind (the triangle points up)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    last = size - 1
    if kind == "circle":
        draw.ellipse((0, 0, last, last), fill=1)
    elif kind == "square":
        draw.rectangle((0, 0, last, last), fill=1)
    else:
        draw.polygon([(0, last), (last, last), (last / 2, 0)], fill=1)
    return np.asarray(image, dtype=bool)


def _render(clip: _Clip) -> np.ndarray:
    """The clip's frames as uint8 RGB ``(FRAMES, SIZE, SIZE, 3)``."""
    frames = np.full((FRAMES, SIZE, SIZE, 3), BACKGROUND, np.int16)
    for shape in clip.shapes:
        mask, colour = _mask(shape.kind, shape.size), COLOURS[shape.colour]
        for frame, (x, y) in zip(frames, shape.corners().tolist(), strict=True):
            frame[y: y + shape.size, x: x + shape.size][mask] = colour
    if NOISE > 0:
        rng = np.random.default_rng(clip.noise_seed)
        frames += rng.integers(-NOISE, NOISE + 1, size=frames.shape, dtype=np.int16)
    return np.clip(frames, 0, 255).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray) -> None:
    """Encode uint8 RGB frames as an MP4 (one encoder thread, so the bytes are reproducible)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(_CODEC, rate=FPS)
        stream.width, stream.height = SIZE, SIZE
        stream.pix_fmt = _PIXEL_FORMAT
        stream.bit_rate = BIT_RATE
        stream.thread_count = 1
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def _rows(video: str, clip: _Clip) -> list[tuple[str, str, str, str]]:
    """The clip's CSV rows: one per shape in ``COLOURS`` order, then one for all shapes."""
    captions = [caption(s.colour, s.kind, s.d1, s.d2) for s in clip.shapes]
    objects = str(len(clip.shapes))
    rows = [(video, PROMPT_ONE.format(s.colour), text, objects)
            for s, text in zip(clip.shapes, captions, strict=True)]
    rows.append((video, PROMPT_ALL, " and ".join(captions), objects))
    return rows


def _write_split(root: Path, split: str, clips: list[_Clip]) -> int:
    """Write one split's videos (a few at a time) and its CSV; return the number of rows."""
    videos = [f"videos/{split}_{i:05d}.mp4" for i in range(len(clips))]

    def write(i: int) -> None:
        _write_video(root / videos[i], _render(clips[i]))

    with ThreadPoolExecutor(_WRITE_THREADS) as pool:
        list(pool.map(write, range(len(clips))))  # list() re-raises a failed clip's error
    rows = [row for video, clip in zip(videos, clips, strict=True) for row in _rows(video, clip)]
    with (root / f"{split}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    return len(rows)
