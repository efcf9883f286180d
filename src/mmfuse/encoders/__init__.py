"""Encoders: one sub-model per modality, each mapping a batch to :class:`Features`."""

from . import bow, cnn, minilm, rnn  # noqa: F401  (registration)
from .base import Features

__all__ = ["Features"]
