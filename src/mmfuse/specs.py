"""What a fitted preprocessor tells the model it builds: :class:`EncoderSpec` for an input's
encoder, :class:`TargetSpec` for an output's head.

Both are made by the preprocessors (``Preprocessor.spec()``, ``Preprocessor.target_spec()``)
after they are fitted on the training split, or loaded from a bundle, and are read by the
encoders and heads when they build their layers: sizes, vocabularies, label sets and target
statistics, with no string keys to misspell.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncoderSpec:
    """The shape of what one input's preprocessor gives its encoder.

    Attributes:
        modality: the input type (``image``, ``text``, ``number``, ...).
        channels: colour channels of images and video frames; audio channels.
        size: ``(height, width)`` of images and video frames.
        frames: video frames per clip.
        feature_dim: audio features per frame (mel bands, MFCCs, or 1 for a waveform).
        vocab_size: text tokens, or the values of a category input with its unknown bucket.
        pad_id: the padding token of a text input.
        width: values per row of a number or binary input.
    """

    modality: str
    channels: int = 0
    size: tuple[int, int] | None = None
    frames: int | None = None
    feature_dim: int | None = None
    vocab_size: int | None = None
    pad_id: int = 0
    width: int = 1


@dataclass(frozen=True)
class TargetSpec:
    """What one output's head needs from its fitted target preprocessor.

    Attributes:
        labels: the class labels (category, binary, set), or the output vocabulary (text).
        counts: training rows per label (category, binary, set).
        mean: the training targets' mean (number outputs; targets are trained normalised).
        std: the training targets' standard deviation (number outputs).
        calibration: what was fitted on the validation split after training: ``temperature``
            (category outputs with ``calibrate: true``), ``threshold`` (binary outputs with
            ``threshold: auto``).
        top_set: a set output's most frequent label set in training (its baseline).
        json_bool: a binary output's labels were JSON booleans (predictions stay booleans).
    """

    labels: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    mean: float = 0.0
    std: float = 1.0
    calibration: dict[str, float] = field(default_factory=dict)
    top_set: list[str] = field(default_factory=list)
    json_bool: bool = False
