"""Video preprocessing: decode with PyAV, sample frames, then resize / crop / normalise.

Any container FFmpeg reads works (MP4, WebM, AVI, MKV, animated GIF). Frames are sampled
``uniform``-ly (``frames`` spread evenly from the first frame to the last; a clip shorter than
that repeats frames, so every clip gives exactly ``frames``) or at a ``rate`` (the first frame
at or after every ``1 / fps`` seconds, at most ``frames``; shorter clips give fewer frames and a
mask). Each kept frame is resized and cropped like an image and cached as uint8
``[U, K, H, W, 3]`` with each clip's frame count; normalisation uses per-channel statistics of
the training frames. Shapes: a batch gives ``pixels [U, K, 3, H, W]`` and ``mask [U, K]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from ..errors import require
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .files import FileModality, FilePreprocessor, UnreadableFile
from .image import (
    ImageOptions,
    augment_pixels,
    channel_stats,
    fit_image,
    output_size,
    pair,
    random_pixels,
    to_pixels,
)

if TYPE_CHECKING:
    from ..config import InputConfig


class VideoOptions(ImageOptions):
    """Video preprocessing: decode, sample frames, then resize / crop / normalise like images."""

    frames: PositiveInt = Field(
        16, description="frames kept per clip (at most, with 'rate'); an event shorter than "
        "the gap between two kept frames can be missed")
    sampling: Literal["uniform", "rate"] = Field(
        "uniform", description="'uniform': FRAMES spread over the clip; 'rate': every 1/FPS s")
    fps: float | None = Field(None, gt=0, description="frames per second with sampling: rate")

    @model_validator(mode="after")
    def _rate_needs_fps(self) -> VideoOptions:
        if self.sampling == "rate" and self.fps is None:
            raise ValueError("sampling: rate needs fps (frames per second to keep)")
        return self


def read_frames(path: Path, options: VideoOptions) -> np.ndarray:
    """Decode a clip and return its sampled frames as uint8 ``[K, H, W, 3]``.

    Raises:
        UnreadableFile: the file is not a video FFmpeg can decode, or it has no frames.
    """
    return read_clip(path, options)[0]


def read_clip(path: Path, options: VideoOptions) -> tuple[np.ndarray, list[float]]:
    """A clip's sampled frames (uint8 ``[K, H, W, 3]``) and the time of each, in seconds from
    the clip's first frame (what ``mmfuse explain`` reports for a video token).

    Raises:
        UnreadableFile: the file is not a video FFmpeg can decode, or it has no frames.
    """
    av = require("av", "video", "reading video files")
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableFile("no video stream (not a video file?)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or 25)
            for frame in container.decode(stream):
                times.append(frame.time if frame.time is not None else len(times) / rate)
                frames.append(fit_image(frame.to_image(), options))
    except av.FFmpegError as exc:
        raise UnreadableFile(f"not a readable video file ({exc})") from None
    if not frames:
        raise UnreadableFile("the file holds no video frames")
    chosen = sample_frames(times, options)
    return np.stack([frames[i] for i in chosen]), [times[i] - times[0] for i in chosen]


def sample_frames(times: list[float], options: VideoOptions) -> list[int]:
    """Indices of the frames to keep, given every decoded frame's time in seconds."""
    count = len(times)
    if options.sampling == "uniform":
        return np.round(np.linspace(0, count - 1, options.frames)).astype(int).tolist()
    start, chosen = times[0], []
    for k in range(options.frames):
        wanted = start + k / options.fps
        later = [i for i in range(chosen[-1] + 1 if chosen else 0, count) if times[i] >= wanted]
        if not later:
            break
        chosen.append(later[0])
    return chosen


class VideoPreprocessor(FilePreprocessor):
    """Paths -> cached uint8 frames -> normalised float tensors with a frame mask."""

    kind = "video"
    pad_axis = 0  # frames, of [K, H, W, 3]

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = VideoOptions.model_validate(config.preprocess)
        self.mean = [0.0, 0.0, 0.0]
        self.std = [1.0, 1.0, 1.0]
        if self.options.normalize and self.options.mean is not None:  # fixed (a pretrained
            # encoder's statistics)
            self.mean, self.std = list(self.options.mean), list(self.options.std)

    def spec(self) -> EncoderSpec:
        return EncoderSpec("video", channels=3, size=output_size(self.options),
                           frames=self.options.frames)

    def settings(self) -> dict:
        o = self.options
        return {"size": pair(o.size), "crop": o.crop, "frames": o.frames,
                "sampling": o.sampling, "fps": o.fps}

    def augments(self) -> bool:
        return self.options.flip_horizontal > 0 or self.options.pad_crop > 0

    def item_shape(self) -> tuple[int, ...]:
        return (self.options.frames, *output_size(self.options), 3)

    def decode(self, path: Path) -> np.ndarray:
        return read_frames(path, self.options)

    def fit_stats(self, items: tuple[np.ndarray, np.ndarray]) -> None:
        """Per-channel mean and std of the real frames (not padding) of up to 500 clips,
        unless fixed ones are given."""
        if self.options.mean is not None:
            return
        clips, lengths = items
        step = max(1, len(clips) // 500)
        self.mean, self.std = channel_stats(clips[i, : lengths[i]]
                                            for i in range(0, len(clips), step))

    def tensors(self, items: tuple[np.ndarray, np.ndarray], train: bool,
                generator: torch.Generator) -> dict:
        clips, lengths = items
        lengths = torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        width = int(lengths.max())
        pixels = to_pixels(clips[:, :width], self.mean, self.std)
        if train:
            pixels = augment_pixels(pixels, self.options, generator)
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        return {"pixels": pixels, "mask": mask}


@MODALITIES.register("video", VideoOptions)
class VideoModality(FileModality):
    """video: a path to a video file (MP4, WebM, MKV, AVI, ...), decoded to sampled frames."""

    name = "video"
    preprocessor = VideoPreprocessor
    default_encoder = "frame_cnn"
    variable_axes = {"pixels": {1: "frames"}, "mask": {1: "frames"}}
    accept = "video/*"

    def example_items(self, prep: VideoPreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> Any:
        spec = prep.spec()
        clips = [np.stack([random_pixels(rng, spec.size) for _ in range(min(s, spec.frames))])
                 for s in sizes]
        return prep.column_of(clips).items
