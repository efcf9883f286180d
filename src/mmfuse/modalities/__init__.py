"""Preprocessing per modality: raw table values -> cached arrays -> batch tensors.

Each input type is one module here that registers its :class:`~.kind.Modality` (see
``kind.py``); output types have their target preprocessors in ``category.py``,
``text_target.py`` and ``targets.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import audio, binary, categorical, image, number, text, video  # noqa: F401 (registration)
from .base import MISSING, Column, Preprocessor
from .kind import modality

if TYPE_CHECKING:
    from ..config import InputConfig, OutputConfig


def build_input_preprocessor(config: InputConfig) -> Preprocessor:
    """The preprocessor for one input, by its modality."""
    return modality(config.type).preprocessor(config)


def build_output_preprocessor(config: OutputConfig) -> Preprocessor:
    """The target preprocessor (labels, statistics, or output tokenizer) for one output."""
    from .category import CategoryPreprocessor
    from .targets import BinaryTargetPreprocessor, NumberTargetPreprocessor, SetTargetPreprocessor
    from .text_target import TextTargetPreprocessor

    targets = {"category": CategoryPreprocessor, "text": TextTargetPreprocessor,
               "number": NumberTargetPreprocessor, "binary": BinaryTargetPreprocessor,
               "set": SetTargetPreprocessor}
    return targets[config.type](config)


__all__ = ["MISSING", "Column", "Preprocessor", "build_input_preprocessor",
           "build_output_preprocessor", "modality"]
