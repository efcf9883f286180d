"""``cnn``: a configurable stack of conv -> batch norm -> ReLU blocks for images.

A ``film`` fusion can modulate each block after batch norm (see ``fusion/film.py``).

The image enters with two more channels, each pixel's normalised (x, y) (CoordConv, Liu et
al. 2018, ``coords``), so features can say where as well as what. The last feature map becomes
a grid of spatial tokens; each token carries its normalised (x, y) position as two extra
channels, as in the relation-network paper (Santoro et al. 2017), so a fusion can reason about
where things are. The pooled vector is a projection of the max over cells (``pool: max``, the
default: one detector shared by every place, which with ``coords`` still knows where), of the
mean, or of the flattened grid (``pool: flatten``: a weight per cell, which must learn each
shape at each place and, on a small table, memorises where the training shapes sat instead).
By default the image is also shifted by up to ``PAD_CROP`` pixels while training
(``preprocess.pad_crop``). How these defaults were chosen (on ``photo_qa``, shape questions
went from 45-58% to 88-95% of new pictures, side stayed at 100%):
``benchmarks/results/image_defaults.md``.

Shapes: pixels ``[B, 3, H, W]`` -> tokens ``[B, h*w, C+2]``, pooled ``[B, dim]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..features import Features, all_present
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder

PAD_CROP = 6
"""Pixels of the default training shift (``preprocess.pad_crop``) of a ``cnn``'s images."""


class CNNOptions(Options):
    channels: list[int] = Field([32, 64, 64, 64], min_length=1)
    kernel_size: int = Field(3, ge=1)
    stride: int = Field(2, ge=1)
    pool: Literal["flatten", "mean", "max"] = Field(
        "max", description="the pooled vector from the grid: 'max' and 'mean' share one "
        "detector across places (with coords they still know where); 'flatten' weighs every "
        "cell apart and needs far more data to learn a shape at every place")
    dim: int = Field(256, ge=1, description="width of the pooled vector")
    dropout: float = Field(0.0, ge=0, lt=1)
    coords: bool = Field(True, description="CoordConv (Liu et al. 2018): the image enters with "
                         "two more channels, its pixels' (x, y), so a pooled feature can say "
                         "where as well as what")


@ENCODERS.register("cnn", CNNOptions)
class CNNEncoder(Encoder):
    """Conv + batch-norm stack; spatial tokens with 2-D positions and a pooled vector."""

    # a FiLM fusion can modulate its blocks; the last two token channels are (x, y)
    traits = EncoderTraits(modalities=("image",), film_target=True, token_positions=True)
    bundle_defaults = {"coords": False}  # bundles saved before the option (pool is recorded)

    def __init__(self, options: CNNOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        blocks: list[nn.Module] = []
        in_ch = spec.channels + 2 * options.coords
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, spec.size[0]),
                                torch.linspace(-1, 1, spec.size[1]), indexing="ij")
        self.register_buffer("pixel_coords", torch.stack([xs, ys])[None] if options.coords
                             else None, persistent=False)
        for out_ch in options.channels:
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, out_ch, options.kernel_size, options.stride,
                          options.kernel_size // 2, bias=False),
                nn.BatchNorm2d(out_ch),
            ))
            in_ch = out_ch
        self.body = nn.ModuleList(blocks)
        self.film_channels = tuple(options.channels)  # what a FiLM fusion may modulate
        with torch.no_grad():
            h, w = self._grid(torch.zeros(2, spec.channels, *spec.size), None).shape[-2:]
        if h * w == 1:
            raise ConfigError(
                f"cnn: a {spec.size[0]}x{spec.size[1]} image shrinks to a 1x1 map after "
                f"{len(options.channels)} stride-{options.stride} layers, which batch norm cannot "
                "train on; use a larger image size, fewer channels entries or a smaller stride")
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys], -1).reshape(1, h * w, 2))
        self.token_dim = in_ch + 2
        self.num_tokens = h * w
        self.pool = options.pool
        pool_in = self.token_dim * h * w if options.pool == "flatten" else self.token_dim
        self.project = nn.Sequential(
            nn.Linear(pool_in, options.dim), nn.ReLU(inplace=True), nn.Dropout(options.dropout)
        )
        self.pooled_dim = options.dim
        self.grid = (h, w)
        self.image_size = tuple(spec.size)
        self.kernel_size, self.stride = options.kernel_size, options.stride
        self.token_features = nn.Identity()  # explain: attributions are taken here

    @classmethod
    def default_preprocess(cls, encoder: dict) -> dict:
        """A shift of up to ``PAD_CROP`` pixels while training unless the config sets
        ``pad_crop``: with it a small training set teaches shape rather than where each
        training shape sat."""
        return {"pad_crop": PAD_CROP}

    def token_centres(self) -> torch.Tensor:
        """Each token's receptive-field centre ``[h*w, 2]`` as (x, y) fractions of the image's
        width and height (0..1, x from the left, y from the top).

        A stride-``s`` layer with kernel ``k`` and padding ``p`` centres output cell ``j`` on
        input position ``s * j - p + (k - 1) / 2``; composing the layers maps a token back to
        pixels. (The ``(x, y)`` channels the tokens carry are a -1..1 grid, for the fusion.)"""
        k, s = self.kernel_size, self.stride
        axes = []
        for cells, pixels in zip(self.grid, self.image_size, strict=True):
            centre = torch.arange(cells, dtype=torch.float64)
            for _ in self.body:
                centre = s * centre - k // 2 + (k - 1) / 2
            axes.append(((centre + 0.5) / pixels).float())
        ys, xs = torch.meshgrid(axes[0], axes[1], indexing="ij")
        return torch.stack([xs, ys], -1).reshape(-1, 2)

    def _grid(self, pixels: torch.Tensor, film: list | None) -> torch.Tensor:
        x = pixels
        if self.pixel_coords is not None:
            x = torch.cat([x, self.pixel_coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        for i, block in enumerate(self.body):
            x = block(x)
            if film is not None:  # FiLM (Perez et al. 2018): per-row scale and shift per channel
                gamma, beta = film[i]
                x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            x = torch.relu(x)
        return x

    def forward(self, pixels: torch.Tensor, film: list | None = None) -> Features:
        """Encode images; ``film`` optionally holds one ``(gamma, beta)`` ``[B, C]`` per block."""
        grid = self._grid(pixels, film)
        cells = self.token_features(grid.flatten(2).transpose(1, 2))  # [B, h*w, C]
        tokens = torch.cat([cells, self.coords.expand(cells.shape[0], -1, -1)], dim=-1)
        if self.pool == "flatten":
            summary = tokens.flatten(1)
        elif self.pool == "mean":
            summary = tokens.mean(1)
        else:
            summary = tokens.amax(1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        present = all_present(tokens.shape[0], tokens.device)
        return Features(tokens, mask, self.project(summary), present)
