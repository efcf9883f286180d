"""Encoders: one sub-model per modality, each mapping a batch to :class:`Features`."""

from . import audio_cnn, bow, cnn, efficientnet, frame_cnn, hf, minilm, rnn  # noqa: F401  (registration)
from .base import Features

__all__ = ["Features"]
