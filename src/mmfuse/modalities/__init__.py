"""Preprocessing per modality: raw table values -> cached arrays -> batch tensors."""

from __future__ import annotations

from ..config import InputConfig, OutputConfig
from .base import MISSING, Column, Preprocessor


def build_input_preprocessor(config: InputConfig) -> Preprocessor:
    """The preprocessor for one input, by its modality."""
    if config.type == "image":
        from .image import ImagePreprocessor

        return ImagePreprocessor(config)
    if config.type == "audio":
        from .audio import AudioPreprocessor

        return AudioPreprocessor(config)
    if config.type == "video":
        from .video import VideoPreprocessor

        return VideoPreprocessor(config)
    from .text import TextPreprocessor

    return TextPreprocessor(config)


def build_output_preprocessor(config: OutputConfig) -> Preprocessor:
    """The preprocessor (label encoder, or output tokenizer) for one output."""
    if config.type == "text":
        from .text_target import TextTargetPreprocessor

        return TextTargetPreprocessor(config)
    from .category import CategoryPreprocessor

    return CategoryPreprocessor(config)


__all__ = ["MISSING", "Column", "Preprocessor", "build_input_preprocessor",
           "build_output_preprocessor"]
