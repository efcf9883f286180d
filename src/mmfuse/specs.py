"""Small frozen contracts between stages, with no string keys to misspell.

- What a fitted preprocessor tells the model it builds: :class:`EncoderSpec` for an input's
  encoder, :class:`TargetSpec` for an output's head. Both are made by the preprocessors
  (``Preprocessor.spec()``, ``Preprocessor.target_spec()``) after they are fitted on the
  training split, or loaded from a bundle: sizes, vocabularies, label sets and statistics.
- What a built encoder tells the fusion: :class:`InputDims`, one per input (``model.py``).
- What a component declares it can do: :class:`EncoderTraits` on every encoder class
  (``encoders/base.py``), :class:`FusionTraits` on every fusion (``fusion/base.py``).
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


@dataclass(frozen=True)
class InputDims:
    """What a fusion (and a head that reads the inputs) knows of one encoded input.

    Attributes:
        token_dim: width of each token (``Features.tokens[..., D]``).
        pooled_dim: width of the pooled vector (``Features.pooled[..., P]``).
        modality: the input type (``image``, ``text``, ...).
        film_channels: per block, the channels a FiLM fusion may modulate; None when the
            encoder cannot be modulated (``EncoderTraits.film_target``).
        token_positions: the last two token channels are (x, y) positions.
        tabular: one value per row (number, category, binary), no positions or channels.
        query: an input type that conditions the others (text) by default.
    """

    token_dim: int
    pooled_dim: int
    modality: str = ""
    film_channels: tuple[int, ...] | None = None
    token_positions: bool = False
    tabular: bool = False
    query: bool = False


@dataclass(frozen=True)
class EncoderTraits:
    """What an encoder class can do beside encoding, declared once as its ``traits``.

    The class attribute holds what is known before the encoder is built (the config reads it);
    an encoder whose abilities depend on its options replaces it on the instance in
    ``__init__`` (``dataclasses.replace(self.traits, cacheable=options.freeze)``).

    Attributes:
        modalities: the input types it encodes; an input of another type is a config error.
        film_target: a FiLM fusion can modulate its blocks (it then gives ``film_channels``);
            the default fusion is ``film`` when a text input can condition such an input.
        token_positions: the last two channels of its tokens are (x, y) positions (the
            relation fusion's ``relative_position`` needs them).
        cacheable: the part run by ``frozen_features`` has nothing to train and is
            deterministic, so its outputs can be computed once per item (``cache_features``).
    """

    modalities: tuple[str, ...] = ()
    film_target: bool = False
    token_positions: bool = False
    cacheable: bool = False


@dataclass(frozen=True)
class FusionTraits:
    """What a fusion declares beside fusing, as its ``traits`` (decided in its ``__init__``).

    Attributes:
        serial: ``(target, source)`` when the fusion modulates an encoder (FiLM): the model
            encodes ``source`` first, then ``target`` once per row with the modulation, so
            ``target``'s features cannot be cached.
        attention_over: the input whose tokens the fusion weighs with attention weights it
            exposes as ``last_attention`` ``[B, N]`` (``mmfuse explain``'s attention
            method), or None.
    """

    serial: tuple[str, str] | None = None
    attention_over: str | None = None
