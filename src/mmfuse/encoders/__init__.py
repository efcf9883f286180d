"""Encoders: one sub-model per modality, each mapping a batch to
:class:`~mmfuse.features.Features`; each subclasses :class:`Encoder` and declares its
:class:`~mmfuse.specs.EncoderTraits`."""

from . import (  # noqa: F401  (registration)
    audio_cnn,
    bow,
    cnn,
    efficientnet,
    frame_cnn,
    hf,
    lm_text,
    minilm,
    rnn,
    tabular,
)
from .base import Encoder

__all__ = ["Encoder"]
