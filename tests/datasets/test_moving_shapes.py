"""Tests for the Moving Shapes generator (mmfuse.datasets.moving_shapes)."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from mmfuse.datasets import moving_shapes  # noqa: E402
from mmfuse.datasets.moving_shapes import (  # noqa: E402
    COLOURS,
    CSV_HEADER,
    DIRECTIONS,
    FPS,
    FRAMES,
    MARGIN,
    MAX_OVERLAP,
    PROMPT_ALL,
    PROMPT_ONE,
    SHAPE_SIZE,
    SHAPES,
    SIZE,
    SPEED,
    TURN_FRAME,
    caption,
    generate_moving_shapes,
)
from mmfuse.errors import MmfuseError  # noqa: E402

SIZES = {"train": 6, "test": 4}
CAPTION = re.compile(r"the (\w+) (\w+) moves (\w+) then (\w+)")
_WINDOW = 22  # side of the square, around a shape's centre, that _kind fits
_PAD = _WINDOW  # zeros around a frame, so a window near its edge stays inside


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _colour_mask(frames: np.ndarray, colour: str) -> np.ndarray:
    """``[F, H, W]`` pixels clearly of one colour: its full channels high, the others low.

    The thresholds are strict because chroma is stored at half resolution: a pixel on a shape's
    outline shares its colour with the background, and counting it would blur the outline.
    """
    on = np.array(COLOURS[colour]) > 0
    pixels = frames.astype(np.int16)
    return np.all(pixels[..., on] > 200, axis=-1) & np.all(pixels[..., ~on] < 60, axis=-1)


def _kind(frame: np.ndarray, colour: str, centre: np.ndarray) -> str:
    """The shape kind whose template best fits one colour's pixels around ``centre``.

    yuv420p keeps colour at half resolution, so a blue or red outline is blurred over 2x2
    blocks and no pixel threshold keeps every kind's outline intact. Instead each kind, size
    and nearby position is drawn, averaged over the same 2x2 blocks, and fitted by least
    squares to how strongly each block shows the colour.
    """
    on = np.array(COLOURS[colour]) > 0
    pixels = np.pad(frame.astype(np.float64) / 255, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)))
    score = np.clip(pixels[..., on].min(axis=-1) - pixels[..., ~on].max(axis=-1), 0, 1)
    top, left = (np.round(centre[::-1]).astype(int) + _PAD - _WINDOW // 2) // 2 * 2
    observed = _blocks(score[top: top + _WINDOW, left: left + _WINDOW])
    best = (np.inf, "")
    for kind in SHAPES:
        for size in range(SHAPE_SIZE[0], SHAPE_SIZE[1] + 1):
            mask = moving_shapes._mask(kind, size)
            # The box's corner, in the window, if the centroid were the box's centre; a
            # triangle's centroid lies lower, so try a few positions around it.
            y0, x0 = np.round(centre[::-1] - size / 2).astype(int) + _PAD - (top, left)
            for dy, dx in np.ndindex(7, 7):
                y, x = y0 + dy - 3, x0 + dx - 3
                if 0 <= min(y, x) and max(y, x) + size <= _WINDOW:
                    drawn = np.zeros((_WINDOW, _WINDOW))
                    drawn[y: y + size, x: x + size] = mask
                    best = min(best, (np.sum((_blocks(drawn) - observed) ** 2), kind))
    return best[1]


def _blocks(image: np.ndarray) -> np.ndarray:
    """Average an even-sided image over 2x2 blocks."""
    return image.reshape(len(image) // 2, 2, -1, 2).mean(axis=(1, 3))


def _by_clip(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    clips: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        clips.setdefault(row["video"], []).append(row)
    return clips


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """One tiny dataset (seed 0) and its summary."""
    root = tmp_path_factory.mktemp("moving_shapes")
    summary = generate_moving_shapes(root, SIZES["train"], SIZES["test"], seed=0)
    return {"root": root, "summary": summary,
            **{split: _read_csv(root / f"{split}.csv")[1] for split in SIZES}}


def test_layout_rows_and_prompts(dataset):
    root, summary = dataset["root"], dataset["summary"]
    assert set(summary) == {"out_dir", "train_rows", "test_rows", "train_clips", "test_clips",
                            "seconds"}
    for split, size in SIZES.items():
        header, rows = _read_csv(root / f"{split}.csv")
        assert tuple(header) == CSV_HEADER
        assert len(rows) == summary[f"{split}_rows"]
        clips = _by_clip(rows)
        assert list(clips) == [f"videos/{split}_{i:05d}.mp4" for i in range(size)]
        assert summary[f"{split}_clips"] == size
        assert sorted(int(r[0]["objects"]) for r in clips.values()) == \
            [1] * (size - size // 2) + [2] * (size // 2)
        for clip_rows in clips.values():
            n = int(clip_rows[0]["objects"])
            assert len(clip_rows) == n + 1
            assert {r["objects"] for r in clip_rows} == {str(n)}
            colours = [r["prompt"].split()[2] for r in clip_rows[:-1]]
            assert [r["prompt"] for r in clip_rows[:-1]] == [PROMPT_ONE.format(c) for c in colours]
            assert colours == [c for c in COLOURS if c in colours]  # distinct, in COLOURS order
            assert clip_rows[-1]["prompt"] == PROMPT_ALL
            assert clip_rows[-1]["caption"] == " and ".join(r["caption"] for r in clip_rows[:-1])
            for row in clip_rows[:-1]:
                colour, shape, d1, d2 = CAPTION.fullmatch(row["caption"]).groups()
                assert row["prompt"] == PROMPT_ONE.format(colour)
                assert shape in SHAPES and d1 in DIRECTIONS and d2 in DIRECTIONS and d1 != d2
    written = {p.relative_to(root).as_posix() for p in (root / "videos").iterdir()}
    assert written == {r["video"] for s in SIZES for r in dataset[s]}


def test_videos_decode_to_16_frames_of_64x64(dataset):
    for video in _by_clip(dataset["train"] + dataset["test"]):
        with av.open(str(dataset["root"] / video)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.average_rate) == ("mpeg4", FPS)
        frames = _decode(dataset["root"] / video)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8


def test_named_colours_are_in_the_frames_and_others_are_not(dataset):
    for video, rows in _by_clip(dataset["train"] + dataset["test"]).items():
        frames = _decode(dataset["root"] / video)
        named = {r["prompt"].split()[2] for r in rows[:-1]}
        for colour in COLOURS:
            mask = _colour_mask(frames, colour)
            if colour in named:
                assert mask.sum(axis=(1, 2)).min() >= 30, (video, colour)
                mean = frames[mask].mean(axis=0)
                assert np.abs(mean - COLOURS[colour]).max() < 30, (video, colour, mean)
            else:
                assert mask.sum() == 0, (video, colour)
        background = frames[~np.any([_colour_mask(frames, c) for c in COLOURS], axis=0)]
        assert np.median(background) < 40  # dark background


def test_captions_match_the_motion_and_shape_in_the_frames(dataset):
    segments = ((0, TURN_FRAME - 1), (TURN_FRAME, FRAMES - 1))
    for video, rows in _by_clip(dataset["train"] + dataset["test"]).items():
        frames = _decode(dataset["root"] / video)
        for row in rows[:-1]:
            colour, shape, d1, d2 = CAPTION.fullmatch(row["caption"]).groups()
            mask = _colour_mask(frames, colour)
            ys, xs = np.indices(mask.shape[1:])
            centres = np.array([[xs[m].mean(), ys[m].mean()] for m in mask])
            for (first, last), direction in zip(segments, (d1, d2), strict=True):
                moved = centres[last] - centres[first]
                unit = np.array(DIRECTIONS[direction])
                # SPEED px per frame along the direction, none across it; codec rounding and
                # partial occlusion move a centroid by a pixel or two.
                along, across = moved @ unit, moved @ unit[::-1]
                assert SPEED[0] * (last - first) - 4 <= along <= SPEED[1] * (last - first) + 4, \
                    (video, colour, direction, moved)
                assert abs(across) < 4, (video, colour, direction, moved)
            kinds = [_kind(frames[t], colour, centres[t]) for t in range(0, FRAMES, 3)]
            kind = max(set(kinds), key=kinds.count)  # the most common; occlusion is brief
            assert kind == shape, (video, colour, kinds)


def test_planned_clips_respect_the_geometry():
    clips = moving_shapes._plan_split(301, np.random.default_rng(5))
    assert sum(len(c.shapes) == 2 for c in clips) == 150
    for clip in clips:
        assert len({s.colour for s in clip.shapes}) == len(clip.shapes)
        assert [s.colour for s in clip.shapes] == [c for c in COLOURS
                                                  if c in {s.colour for s in clip.shapes}]
        for shape in clip.shapes:
            assert shape.d1 != shape.d2
            assert SHAPE_SIZE[0] <= shape.size <= SHAPE_SIZE[1]
            assert SPEED[0] <= shape.speed <= SPEED[1]
            corners = shape.corners()
            assert corners.min() >= MARGIN and corners.max() + shape.size <= SIZE - MARGIN
            steps = np.diff(corners, axis=0) // shape.speed
            assert [tuple(s) for s in steps] == \
                [DIRECTIONS[shape.d1]] * (TURN_FRAME - 1) + \
                [DIRECTIONS[shape.d2]] * (FRAMES - TURN_FRAME)
        if len(clip.shapes) == 2:
            assert moving_shapes._overlap(*clip.shapes) <= MAX_OVERLAP
    kinds = {s.kind for c in clips for s in c.shapes}
    turns = {(s.d1, s.d2) for c in clips for s in c.shapes}
    assert kinds == set(SHAPES) and len(turns) == 12  # every kind and every turn occurs


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    generate_moving_shapes(tmp_path / "again", SIZES["train"], SIZES["test"], seed=0)
    generate_moving_shapes(tmp_path / "other", SIZES["train"], SIZES["test"], seed=1)
    root = dataset["root"]
    for name in ["train.csv", "test.csv", *_by_clip(dataset["train"] + dataset["test"])]:
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes(), name
    video = dataset["train"][0]["video"]
    np.testing.assert_array_equal(_decode(tmp_path / "again" / video), _decode(root / video))
    assert (tmp_path / "other" / "train.csv").read_bytes() != (root / "train.csv").read_bytes()
    assert not np.array_equal(_decode(tmp_path / "other" / video), _decode(root / video))


def test_test_split_does_not_depend_on_train_size(dataset, tmp_path):
    generate_moving_shapes(tmp_path, train_size=1, test_size=SIZES["test"], seed=0)
    root = dataset["root"]
    assert (tmp_path / "test.csv").read_bytes() == (root / "test.csv").read_bytes()
    for video in _by_clip(dataset["test"]):
        assert (tmp_path / video).read_bytes() == (root / video).read_bytes(), video


def test_caption_text_and_its_checks():
    assert caption("red", "circle", "left", "up") == "the red circle moves left then up"
    assert caption("yellow", "triangle", "down", "up") == "the yellow triangle moves down then up"
    with pytest.raises(ValueError, match="colour must be one of red, green, blue, yellow"):
        caption("purple", "circle", "left", "up")
    with pytest.raises(ValueError, match="shape must be one of"):
        caption("red", "star", "left", "up")
    with pytest.raises(ValueError, match="d2 must differ from d1"):
        caption("red", "circle", "left", "left")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train_size": 0}, "train_size must be >= 1"),
    ({"test_size": -3}, "test_size must be >= 1"),
    ({"train_size": 2.5}, "train_size must be an integer"),
    ({"test_size": "10"}, "test_size must be an integer"),
    ({"train_size": True}, "train_size must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": 1.0}, "seed must be an integer"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_moving_shapes(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_pyav_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(MmfuseError, match=r"mmfuse\[video\]"):
        generate_moving_shapes(tmp_path / "out", 1, 1)
    assert not (tmp_path / "out").exists()
