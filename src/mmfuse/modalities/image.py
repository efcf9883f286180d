"""Image preprocessing: decode any Pillow format, convert to RGB, resize, crop, normalise.

Grey, palette and RGBA images are converted to RGB (transparent pixels over white). Decoded
images are cached on disk as uint8 ``[U, H, W, 3]``, one entry per unique file, so each file is
decoded once per run and not at all on a second run with the same settings. Normalisation uses
per-channel mean and std of the training split. Augmentation (horizontal flip, pad-and-crop) is
off by default: a flip would change the answer to "is X on the left?".
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import ImageOptions, InputConfig
from ..data.cache import cache_key, cached_array
from ..data.table import Table, resolve_file
from ..errors import DataError
from ..training.threads import available_cpus
from .base import Column, Preprocessor, unique_values

STATS_SAMPLE = 2000  # images used to estimate the normalisation statistics


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def load_image(path: Path, options: ImageOptions) -> np.ndarray:
    """Decode one image file to uint8 ``[H, W, 3]`` after resizing and optional centre crop.

    Raises:
        OSError, UnidentifiedImageError: the file is missing or not an image.
    """
    with Image.open(path) as img:
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
        height, width = _pair(options.size)
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        if options.crop is not None:
            ch, cw = _pair(options.crop)
            left, top = (width - cw) // 2, (height - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        return np.asarray(img, dtype=np.uint8)


class ImagePreprocessor(Preprocessor):
    """Paths in a column -> cached uint8 images -> normalised float tensors."""

    is_file = True

    def __init__(self, config: InputConfig) -> None:
        self.name, self.column = config.name, config.column
        self.options = ImageOptions.model_validate(config.preprocess)
        self.mean = [0.0, 0.0, 0.0]
        self.std = [1.0, 1.0, 1.0]
        self.use_cache = True

    def spec(self) -> dict:
        size = _pair(self.options.crop if self.options.crop is not None else self.options.size)
        return {"channels": 3, "size": size}

    def encode(self, table: Table) -> Column:
        values = table.column(self.column)
        for row, value in enumerate(values):
            if value is None:
                raise DataError(f"{table.source}, row {row + 1}: column {self.column!r} is empty; "
                                "every row needs an image file")
        unique, index = unique_values([str(v) for v in values])
        first_rows = np.unique(index, return_index=True)[1]
        first_row = {value: int(first_rows[i]) for i, value in enumerate(unique)}
        paths = [resolve_file(v, table, first_row[v], self.column) for v in unique]
        missing = [(first_row[v], v) for v, p in zip(unique, paths, strict=True) if not p.is_file()]
        if missing:
            self._raise_unreadable(table, [(r, v, "file not found") for r, v in missing])
        settings = {"size": _pair(self.options.size), "crop": self.options.crop}
        key = cache_key("image", settings, paths)
        items = cached_array(key, lambda: self._decode_all(table, unique, paths, first_row),
                             self.use_cache)
        return Column(items, index)

    def _decode_all(self, table: Table, values: list[str], paths: list[Path],
                    first_row: dict[str, int]) -> np.ndarray:
        height, width = self.spec()["size"]
        out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
        errors: list[tuple[int, str, str]] = []

        def decode(i: int) -> None:
            try:
                out[i] = load_image(paths[i], self.options)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                errors.append((first_row[values[i]], values[i], str(exc).split("\n")[0]))

        with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
            list(pool.map(decode, range(len(paths))))
        if errors:
            self._raise_unreadable(table, sorted(errors))
        return out

    def _raise_unreadable(self, table: Table, errors: list[tuple[int, str, str]]) -> None:
        lines = [f"  row {row + 1}: {value!r}: {why}" for row, value, why in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(
            f"{table.source}: {len(errors)} unreadable image file(s) in column {self.column!r}:\n"
            + "\n".join(lines) + more + "\nFix or remove these rows and run again."
        )

    def fit_encode(self, table: Table) -> Column:
        """Decode the training images, then learn the per-channel mean and std from them."""
        column = self.encode(table)
        if self.options.normalize:
            self._fit_stats(column.items)
        return column

    def _fit_stats(self, items: np.ndarray) -> None:
        step = max(1, len(items) // STATS_SAMPLE)
        sample = np.asarray(items[::step], dtype=np.float64) / 255.0
        self.mean = sample.mean(axis=(0, 1, 2)).tolist()
        self.std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3).tolist()

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict) -> None:
        self.mean, self.std = list(state["mean"]), list(state["std"])

    def tensors(self, items: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        pixels = torch.from_numpy(np.ascontiguousarray(items)).permute(0, 3, 1, 2).float()
        pixels = pixels.div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
        if train:
            pixels = self._augment(pixels, generator)
        return {"pixels": pixels}

    def _augment(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        opts = self.options
        if opts.flip_horizontal > 0:
            flip = torch.rand(len(pixels), generator=generator) < opts.flip_horizontal
            pixels[flip] = pixels[flip].flip(-1)
        if opts.pad_crop > 0:
            p = opts.pad_crop
            padded = torch.nn.functional.pad(pixels, (p, p, p, p), mode="replicate")
            h, w = pixels.shape[-2:]
            dx, dy = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
            pixels = padded[..., dy:dy + h, dx:dx + w]
        return pixels
