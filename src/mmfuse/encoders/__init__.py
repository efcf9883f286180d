"""Encoders: one sub-model per modality, each mapping a batch to
:class:`~mmfuse.features.Features`."""

from . import (  # noqa: F401  (registration)
    audio_cnn,
    bow,
    cnn,
    efficientnet,
    frame_cnn,
    hf,
    minilm,
    rnn,
    tabular,
)
