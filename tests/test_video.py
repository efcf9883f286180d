"""Video preprocessing (mmfuse.modalities.video): decoding, frame sampling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from media import moving_square, write_video
from mmfuse.config import InputConfig
from mmfuse.data.table import Table
from mmfuse.errors import DataError
from mmfuse.modalities import MISSING
from mmfuse.modalities.video import VideoOptions, VideoPreprocessor, read_frames, sample_frames
from mmfuse.specs import EncoderSpec


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))


def preprocessor(**preprocess) -> VideoPreprocessor:
    return VideoPreprocessor(InputConfig(name="clip", type="video", preprocess=preprocess))


def table(folder, values) -> Table:
    return Table([{"clip": v} for v in values], folder.resolve(), "clips.csv")


def red_column(frames: np.ndarray) -> np.ndarray:
    """Per frame, the column (x) where the red square is, from its red pixels."""
    red = (frames[..., 0] > 150) & (frames[..., 1] < 110)
    return np.array([np.flatnonzero(f.any(0)).mean() for f in red])


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".gif"])
def test_every_container_decodes_and_keeps_the_motion(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", moving_square(12, 48, 64, direction=1))
    frames = read_frames(path, VideoOptions(size=32, frames=6))
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    xs = red_column(frames)
    assert (np.diff(xs) > 0).all(), f"the square should move right: {xs}"


def test_uniform_sampling_spreads_over_the_clip_and_repeats_short_clips():
    times = [i / 10 for i in range(30)]
    assert sample_frames(times, VideoOptions(frames=4)) == [0, 10, 19, 29]
    assert sample_frames(times[:3], VideoOptions(frames=5)) == [0, 0, 1, 2, 2]


def test_rate_sampling_takes_one_frame_per_period_up_to_the_limit():
    times = [i / 10 for i in range(30)]  # 3 s at 10 fps
    options = VideoOptions(frames=4, sampling="rate", fps=2)
    assert sample_frames(times, options) == [0, 5, 10, 15]
    assert sample_frames(times[:8], options) == [0, 5]  # a 0.8 s clip gives two


def test_rate_sampling_needs_fps():
    from mmfuse.config import load_config
    from mmfuse.errors import ConfigError

    config = {"inputs": [{"name": "v", "type": "video", "preprocess": {"sampling": "rate"}}],
              "outputs": [{"name": "y", "type": "category"}]}
    with pytest.raises(ConfigError, match="sampling: rate needs fps"):
        load_config(config)


def test_clips_of_different_sizes_and_lengths_in_one_column(tmp_path):
    write_video(tmp_path / "a.mp4", moving_square(20, 48, 64, 1), fps=10)
    write_video(tmp_path / "b.mp4", moving_square(6, 96, 80, -1), fps=10)
    prep = preprocessor(size=24, frames=8, sampling="rate", fps=5)
    column = prep.fit_encode(table(tmp_path, ["a.mp4", "b.mp4", " ", "a.mp4"]))
    clips, lengths = column.items
    assert clips.shape == (2, 8, 24, 24, 3) and lengths.tolist() == [8, 3]
    assert column.index.tolist() == [0, 1, MISSING, 0]
    out = prep.batch(column, column.index, False, torch.Generator())
    assert out["pixels"].shape == (2, 8, 3, 24, 24)
    assert out["mask"].sum(1).tolist() == [8, 3]
    assert prep.spec() == EncoderSpec("video", channels=3, size=(24, 24), frames=8)


def test_normalisation_statistics_come_from_real_frames(tmp_path):
    write_video(tmp_path / "a.mp4", moving_square(10, 32, 32, 1))
    prep = preprocessor(size=16, frames=4)
    column = prep.fit_encode(table(tmp_path, ["a.mp4"]))
    out = prep.batch(column, column.index, False, torch.Generator())
    pixels = out["pixels"][out["mask"]]  # [frames, 3, H, W]
    torch.testing.assert_close(pixels.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)


def test_unreadable_clips_are_reported_with_row_and_path(tmp_path):
    write_video(tmp_path / "ok.mp4", moving_square(4, 32, 32, 1))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing")
    (tmp_path / "text.avi").write_text("hello")
    with pytest.raises(DataError) as info:
        preprocessor().fit_encode(table(tmp_path, ["ok.mp4", "broken.mp4", "text.avi"]))
    message = str(info.value)
    assert "2 unreadable video file(s) in column 'clip'" in message
    assert "row 2: 'broken.mp4'" in message and "row 3: 'text.avi'" in message
