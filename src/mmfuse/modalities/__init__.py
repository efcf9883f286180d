"""Preprocessing per modality: raw table values -> cached arrays -> batch tensors.

Each input type is one module here that registers its :class:`~.kind.Modality` (see
``kind.py``); output types, with their target preprocessors, live in ``outputs/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import audio, binary, categorical, image, number, text, video  # noqa: F401 (registration)
from .base import MISSING, Column, Preprocessor
from .kind import modality

if TYPE_CHECKING:
    from ..config import InputConfig


def build_input_preprocessor(config: InputConfig) -> Preprocessor:
    """The preprocessor for one input, by its modality."""
    return modality(config.type).preprocessor(config)


__all__ = ["MISSING", "Column", "Preprocessor", "build_input_preprocessor", "modality"]
