"""Cached frozen features: a frozen pretrained encoder runs once per unique item, not per epoch.

An input whose encoder's pretrained part is frozen (``cacheable``) and whose preprocessing has
no random augmentation gives the same features for an item in every epoch. So, before the first
epoch, :func:`cache_frozen_features` runs that frozen part (``frozen_features``) over each unique
item of the training and validation columns, in batches, and stores its outputs in the on-disk
cache as float16. Training then reads them and runs only the trainable rest of the encoder
(``from_frozen``: a projection, positions, pooling, a temporal model). The switch is the input's
``cache_features`` (``auto`` turns it on exactly in that case).

The cache key is a hash of the frozen weights, the encoder's options, the preprocessing settings
and learned statistics, and the items' identity (the decode cache's key of the files, or the
token ids of a text column), so a second run on the same data encodes nothing, and any change
makes a new entry. float16 keeps about three significant digits: cached and live features agree
within a relative 1e-3 of the features' scale (``tests/data/test_features.py``). The bundle still
holds the whole encoder: ``predict``, ``serve`` and ``export`` run it live.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..atomic import write_text
from ..device import to_device
from ..errors import ConfigError
from ..modalities.base import Column, select
from ..registry import ENCODERS
from .cache import cache_dir, cached_arrays

BATCH = 32  # items per forward pass of the frozen part
NOT_FROZEN = ("its encoder {encoder!r} has no frozen pretrained part (set freeze: true, where "
              "the encoder has it)")
AUGMENTS = "its preprocessing augments at random (turn the augmentation off)"


@dataclass
class FeatureColumn(Column):
    """A column whose items are an encoder's cached frozen outputs, one array per output name
    (``names``); a batch hands them to the encoder's ``from_frozen``."""

    names: tuple[str, ...] = ()

    def item_tensors(self, prep, unique: np.ndarray, train: bool,
                     generator: torch.Generator) -> dict:
        """The model's input for items ``unique``: ``{"frozen": {name: tensor}}``."""
        parts = select(self.items, unique)
        frozen = {}
        for name, part in zip(self.names, parts, strict=True):
            tensor = torch.from_numpy(np.ascontiguousarray(part))
            frozen[name] = tensor.float() if tensor.is_floating_point() else tensor
        return {"frozen": frozen}


def caching_inputs(pipeline) -> list:
    """The inputs (their configs) whose features are cached, by each one's ``cache_features``.

    Raises:
        ConfigError: ``cache_features: true`` on an input that cannot be cached (its encoder
            trains, or its preprocessing augments at random), naming why.
    """
    names = []
    serial_target = (pipeline.model.fusion.traits.serial or (None, None))[0]
    for spec in pipeline.config.inputs:
        if spec.cache_features is False:
            continue
        encoder = pipeline.model.encoders[spec.name]
        why = None
        if not encoder.traits.cacheable:
            why = NOT_FROZEN.format(encoder=spec.encoder["type"])
        elif pipeline.inputs[spec.name].augments():
            why = AUGMENTS
        elif spec.name == serial_target:
            why = "the fusion modulates its encoder per row"
        if why is None:
            names.append(spec)
        elif spec.cache_features is True:
            raise cannot_cache(spec, why)
    return names


def check_cache_settings(pipeline) -> None:
    """Before any data is read: ``cache_features: true`` where the config shows it cannot
    apply (the encoder, with its options, has no frozen part: ``Encoder.cacheable_with``; the
    preprocessing augments at random). A fusion that modulates the encoder (FiLM's target) is
    known once the model is built, and checked by :func:`caching_inputs`.

    Raises:
        ConfigError: naming the input and why.
    """
    for spec in pipeline.config.inputs:
        if spec.cache_features is not True:
            continue
        builder = ENCODERS.get(spec.encoder["type"]).builder
        if not builder.cacheable_with(ENCODERS.options(spec.encoder)):
            raise cannot_cache(spec, NOT_FROZEN.format(encoder=spec.encoder["type"]))
        if pipeline.inputs[spec.name].augments():
            raise cannot_cache(spec, AUGMENTS)


def cannot_cache(spec, why: str) -> ConfigError:
    """The error of ``cache_features: true`` on an input that cannot be cached, and why."""
    return ConfigError(f"inputs.{spec.name}.cache_features: true, but {why}; or use "
                       "cache_features: auto")


def cache_frozen_features(pipeline, tables: list, progress: bool = False) -> list:
    """``tables`` (EncodedTables, or None) with each caching input's column replaced by its
    cached frozen features; encodes what the on-disk cache lacks, with a progress bar."""
    columns = [dict(table.inputs) if table is not None else None for table in tables]
    for spec in caching_inputs(pipeline):
        encoder, prep = pipeline.model.encoders[spec.name], pipeline.inputs[spec.name]
        encoding = encoder_digest(encoder, spec.encoder, spec.preprocess, prep.state())
        for table_columns in columns:
            if table_columns is not None and table_columns[spec.name].items is not None:
                table_columns[spec.name] = feature_column(
                    encoder, prep, table_columns[spec.name], encoding,
                    f"caching {spec.name} features", progress)
    return [replace(table, inputs=c) if table is not None else None
            for table, c in zip(tables, columns, strict=True)]


def feature_column(encoder: nn.Module, prep, column: Column, encoding: hashlib._Hash,
                   label: str, progress: bool = False) -> FeatureColumn:
    """The frozen features of every item of ``column``, from the cache or computed now;
    ``encoding`` is :func:`encoder_digest` of the encoder and its preprocessing."""
    key = features_key(encoding, column)
    names_file = cache_dir() / f"{key}.names.json"

    def build(_allocate) -> tuple[np.ndarray, ...]:  # features are computed in RAM, then saved
        found = run_frozen(encoder, prep, column, label, progress)
        write_text(names_file, json.dumps(list(found)))  # before the entry counts as complete
        return tuple(found.values())

    arrays = cached_arrays(key, build)
    return FeatureColumn(arrays, column.index, column.is_file, key,
                         tuple(json.loads(names_file.read_text())))


@torch.no_grad()
def run_frozen(encoder: nn.Module, prep, column: Column, label: str = "",
               progress: bool = False) -> dict[str, np.ndarray]:
    """``encoder.frozen_features`` over every item of ``column``: float outputs as float16."""
    was_training = encoder.training
    encoder.eval()
    count = len(column.items[0] if isinstance(column.items, tuple) else column.items)
    generator = torch.Generator().manual_seed(0)
    device = next(encoder.parameters()).device
    chunks: dict[str, list[np.ndarray]] = {}
    with _progress(label, count, progress) as advance:
        for start in range(0, count, BATCH):
            unique = np.arange(start, min(count, start + BATCH))
            outputs = encoder.frozen_features(**to_device(
                prep.tensors(select(column.items, unique), False, generator), device))
            for out_name, tensor in outputs.items():
                array = tensor.cpu().numpy()
                chunks.setdefault(out_name, []).append(
                    array.astype(np.float16) if array.dtype.kind == "f" else array)
            advance(len(unique))
    encoder.train(was_training)
    return {out_name: _join(parts) for out_name, parts in chunks.items()}


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along items, padding later axes (token counts of text) to the longest."""
    shape = [max(sizes) for sizes in zip(*(p.shape[1:] for p in parts), strict=True)]
    padded = [np.pad(p, [(0, 0)] + [(0, s - n) for s, n in zip(shape, p.shape[1:],
                                                                strict=True)])
              for p in parts]
    return np.concatenate(padded)


def encoder_digest(encoder: nn.Module, options: dict, preprocess: dict,
                   state: dict) -> hashlib._Hash:
    """A hash of the frozen weights, the encoder's options and the preprocessing, computed
    once per input (a text encoder's weights run to tens of MB) and extended per column."""
    digest = hashlib.sha256(json.dumps([options, preprocess, state], sort_keys=True,
                                       default=str).encode())
    frozen = [p for p in encoder.parameters() if not p.requires_grad]
    for tensor in [*frozen, *encoder.buffers()]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest


def features_key(encoding: hashlib._Hash, column: Column) -> str:
    """The cache key: :func:`encoder_digest`, then the identity of the column's items."""
    digest = encoding.copy()
    if column.key is not None:
        digest.update(column.key.encode())
    else:  # no file identities: the items themselves (token ids of a text column)
        for part in column.items if isinstance(column.items, tuple) else (column.items,):
            digest.update(np.ascontiguousarray(part).tobytes())
    return f"features-{digest.hexdigest()[:32]}"


class _progress:
    """A rich progress bar over items (a no-op when disabled); yields ``advance(n)``."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled, self.bar = label, total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(f"[bold]{self.label}", BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
