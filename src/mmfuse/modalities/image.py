"""Image preprocessing: decode any Pillow format, convert to RGB, resize, crop, normalise.

Grey, palette and RGBA images are converted to RGB (transparent pixels over white). Decoded
images are cached on disk as uint8 ``[U, H, W, 3]``, one entry per unique file, so each file is
decoded once per run and not at all on a second run with the same settings. Normalisation uses
per-channel mean and std of the training split. Augmentation (horizontal flip, pad-and-crop) is
off by default: a flip would change the answer to "is X on the left?".
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from ..config_base import StrictModel
from ..data.media import Embedded
from ..registry import MODALITIES
from ..specs import EncoderSpec
from .files import FileModality, FilePreprocessor, UnreadableFile
from .kind import BadValue

if TYPE_CHECKING:
    from ..config import InputConfig

STATS_SAMPLE = 2000  # images used to estimate the normalisation statistics
STATS_CHUNK = 64  # images converted to float at a time while computing them


class ImageOptions(StrictModel):
    """Image preprocessing: decode, convert to RGB, resize, optional centre crop, normalise."""

    size: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        64, description="resize to SIZE or (HEIGHT, WIDTH)")
    crop: PositiveInt | tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="centre crop after resizing")
    normalize: bool = Field(True, description="subtract mean / divide std of the training split")
    mean: tuple[float, float, float] | None = Field(
        None, description="fixed per-channel mean on the 0-1 scale, instead of the training "
        "split's (a pretrained encoder sets the one its weights were trained with)")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        None, description="fixed per-channel std on the 0-1 scale (with mean)")
    flip_horizontal: float = Field(0.0, ge=0, le=1, description="augmentation: flip probability")
    pad_crop: int = Field(0, ge=0, description="augmentation: pad by N px, random crop back")

    @model_validator(mode="after")
    def _crop_fits(self) -> ImageOptions:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both, or neither to use the "
                             "training split's statistics")
        if self.crop is not None:
            size = (self.size, self.size) if isinstance(self.size, int) else self.size
            crop = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            if crop[0] > size[0] or crop[1] > size[1]:
                raise ValueError(f"crop {self.crop} is larger than size {self.size}; "
                                 "use a crop no larger than the resized image")
        return self


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def output_size(options: ImageOptions) -> tuple[int, int]:
    """(height, width) of a preprocessed image: the crop if any, else the resize target."""
    return pair(options.crop if options.crop is not None else options.size)


def load_image(source: Path | BinaryIO | Image.Image, options: ImageOptions) -> np.ndarray:
    """Decode one image (a file, its bytes in a file object, or an image Pillow has opened)
    to uint8 ``[H, W, 3]`` after resizing and optional centre crop.

    Raises:
        OSError, UnidentifiedImageError: the file is missing or not an image.
    """
    if isinstance(source, Image.Image):
        return _rgb_fitted(source, options)
    with Image.open(source) as img:
        return _rgb_fitted(img, options)


def _rgb_fitted(img: Image.Image, options: ImageOptions) -> np.ndarray:
    """An opened image, turned upright by its EXIF orientation, as RGB, fitted to size."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        # convert("RGB") would clip 16-bit values at 255 instead of scaling them
        wide = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if wide.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.round(wide / scale * 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.split()[-1])
    else:
        img = img.convert("RGB")
    return fit_image(img, options)


def fit_image(img: Image.Image, options: ImageOptions) -> np.ndarray:
    """Resize an RGB image to ``options.size``, centre-crop if asked: uint8 ``[H, W, 3]``."""
    height, width = pair(options.size)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    if options.crop is not None:
        ch, cw = pair(options.crop)
        left, top = (width - cw) // 2, (height - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


class ImagePreprocessor(FilePreprocessor):
    """Paths in a column -> cached uint8 images -> normalised float tensors."""

    kind = "image"

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = ImageOptions.model_validate(config.preprocess)
        self.mean = [0.0, 0.0, 0.0]
        self.std = [1.0, 1.0, 1.0]
        if self.options.normalize and self.options.mean is not None:  # fixed (a pretrained
            # encoder's statistics)
            self.mean, self.std = list(self.options.mean), list(self.options.std)

    def spec(self) -> EncoderSpec:
        return EncoderSpec("image", channels=3, size=output_size(self.options))

    def settings(self) -> dict:
        return {"size": pair(self.options.size), "crop": self.options.crop}

    def augments(self) -> bool:
        return self.options.flip_horizontal > 0 or self.options.pad_crop > 0

    def item_shape(self) -> tuple[int, ...]:
        return (*output_size(self.options), 3)

    def decode_embedded(self, file: Embedded) -> np.ndarray:
        """Images decode from memory."""
        return self.decode(io.BytesIO(file.data))

    def decode(self, path: Path | BinaryIO | Image.Image) -> np.ndarray:
        try:
            return load_image(path, self.options)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise UnreadableFile(str(exc)) from None

    def fit_stats(self, items: np.ndarray) -> None:
        """Per-channel mean and std of (a sample of) the training images, unless fixed ones
        are given."""
        if self.options.mean is None:
            step = max(1, len(items) // STATS_SAMPLE)
            sample = items[::step]  # a view: a memory-mapped column is read STATS_CHUNK at a time
            self.mean, self.std = channel_stats(sample[i:i + STATS_CHUNK]
                                                for i in range(0, len(sample), STATS_CHUNK))

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        pixels = to_pixels(items, self.mean, self.std)
        if train:
            pixels = augment_pixels(pixels, self.options, generator)
        return {"pixels": pixels}


def channel_stats(chunks: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``[..., 3]`` pixels given in chunks (each converted
    to float on its own, so the memory used is one chunk's)."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for chunk in chunks:
        pixels = np.asarray(chunk, dtype=np.float64).reshape(-1, 3) / 255.0
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        count += len(pixels)
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(squares / max(1, count) - np.square(mean), 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def to_pixels(items: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> normalised float ``[..., 3, H, W]``."""
    items = np.require(items, requirements=["C", "W"])  # copies a read-only memmap's rows
    pixels = torch.from_numpy(items).movedim(-1, -3).float().div_(255.0)
    shape = (3, 1, 1)
    return (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def augment_pixels(pixels: torch.Tensor, options: ImageOptions,
                   generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per item and a pad-and-crop shift, on ``[N, ..., 3, H, W]``
    (all frames of a clip move together)."""
    if options.flip_horizontal > 0:
        flip = torch.rand(len(pixels), generator=generator) < options.flip_horizontal
        pixels[flip] = pixels[flip].flip(-1)
    if options.pad_crop > 0:
        p = options.pad_crop
        h, w = pixels.shape[-2:]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        padded = torch.nn.functional.pad(flat, (p, p, p, p), mode="replicate")
        dx, dy = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
        pixels = padded[..., dy:dy + h, dx:dx + w].reshape(pixels.shape)
    return pixels


@MODALITIES.register("image", ImageOptions)
class ImageModality(FileModality):
    """image: a path to an image file (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)."""

    name = "image"
    preprocessor = ImagePreprocessor
    default_encoder = "cnn"
    variable_axes = {"pixels": {}}
    accept = "image/*"

    def decode_bytes(self, data: bytes, prep: FilePreprocessor, limits: Any) -> Any:
        """Pillow reads the header first (size, decompression bombs), then decodes in memory."""
        cap = limits.max_image_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))  # reads the header only
                width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadValue(f"image over the limit of {cap} pixels (a decompression bomb?); "
                           "send a smaller image", 413) from None
        except UnidentifiedImageError:
            raise BadValue("not an image file: its content is not a format Pillow reads (PNG, "
                           "JPEG, GIF, BMP, TIFF, WebP, ...)") from None
        except Exception as exc:  # a crafted header may break Pillow's parser in any way
            raise BadValue(f"not a readable image file ({exc})") from None
        with img:  # decoded from the image whose header was read: one parse, not two
            if width * height > cap:
                raise BadValue(f"image of {width}x{height} pixels is over the limit of {cap} "
                               "pixels; send a smaller image", 413)
            return self.decode(prep, img)

    def limits(self, limits: Any) -> dict:
        return {"max_pixels": limits.max_image_pixels}

    def example_items(self, prep: ImagePreprocessor, sizes: list[int],
                      rng: np.random.Generator) -> Any:
        size = prep.spec().size
        return prep.column_of([random_pixels(rng, size) for _ in sizes]).items


def random_pixels(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` image of random pixels (export examples)."""
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)
