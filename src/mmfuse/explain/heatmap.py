"""Heat maps: token attributions drawn over the image they came from, as a PNG.

Each token is a Gaussian at its position (as fractions of the image's width and height) whose
width is half the spacing of the token grid, weighted by its positive attribution (evidence
for the prediction); the sum, scaled to its maximum, is blended over the image in a
black-red-yellow ramp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MIN_SIDE = 256  # small images are enlarged so the map is readable


def heat(points: np.ndarray, values: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[height, width]`` in 0..1: Gaussians at ``points`` ``[K, 2]`` weighted by the positive
    part of ``values``."""
    weights = np.clip(values, 0, None)
    if len(points) == 0 or weights.max(initial=0) <= 0:
        return np.zeros((height, width))
    spacing = 1 / max(1.0, np.sqrt(len(points)))
    sigma = spacing / 2
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    dx = xs[None, :, None] - points[:, 0][None, None, :]
    dy = ys[:, None, None] - points[:, 1][None, None, :]
    field = (np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2)) * weights).sum(-1)
    return field / field.max()


def ramp(level: np.ndarray) -> np.ndarray:
    """Black -> red -> yellow -> white colours ``[..., 3]`` for levels in 0..1."""
    r = np.clip(3 * level, 0, 1)
    g = np.clip(3 * level - 1, 0, 1)
    b = np.clip(3 * level - 2, 0, 1)
    return np.stack([r, g, b], -1)


def draw_heatmap(image_path: Path, points: np.ndarray, values: np.ndarray,
                 out_path: Path) -> Path:
    """Write the image at ``image_path`` with the attribution heat map blended over it."""
    with Image.open(image_path) as img:
        img = img.convert("RGB")
        scale = max(1.0, MIN_SIDE / min(img.size))
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.NEAREST)
    base = np.asarray(img, dtype=np.float64) / 255
    level = heat(points, values, img.width, img.height)
    alpha = (0.65 * level)[..., None]
    blended = (1 - alpha) * base + alpha * ramp(level)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(blended, 0, 1) * 255).astype(np.uint8)).save(out_path)
    return out_path


STRIP_HEIGHT = 128  # each frame of a video strip is scaled to this height
BAR = 24  # the importance bar under each frame


def draw_frame_strip(frames: np.ndarray, values: np.ndarray, out_path: Path) -> Path:
    """Write a video's sampled frames ``[K, H, W, 3]`` side by side, each above a bar whose
    colour and height show its positive attribution (scaled to the largest)."""
    weights = np.clip(np.asarray(values, dtype=np.float64), 0, None)
    levels = weights / weights.max() if weights.max(initial=0) > 0 else weights
    width = max(1, round(frames.shape[2] * STRIP_HEIGHT / frames.shape[1]))
    strip = Image.new("RGB", ((width + 4) * len(frames), STRIP_HEIGHT + BAR + 4), (255,) * 3)
    for k, (frame, level) in enumerate(zip(frames, levels, strict=True)):
        tile = Image.fromarray(frame).resize((width, STRIP_HEIGHT), Image.Resampling.NEAREST)
        strip.paste(tile, (k * (width + 4) + 2, 2))
        height = max(1, round(level * BAR))
        colour = tuple(int(c * 255) for c in ramp(np.array(0.3 + 0.5 * level)))  # never white
        bar = Image.new("RGB", (width, height), colour)
        strip.paste(bar, (k * (width + 4) + 2, 2 + STRIP_HEIGHT + BAR - height))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out_path)
    return out_path
