"""What every encoder shares: the :class:`Encoder` base class with its declared
:class:`~mmfuse.specs.EncoderTraits`, and the rules of pretrained encoders' frozen parts and of
loading a bundle's weights in their place (their output, :class:`~mmfuse.features.Features`,
lives in ``features.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from torch import nn

from ..specs import EncoderSpec, EncoderTraits


class Encoder(nn.Module):
    """Base of every encoder, a registered one from outside mmfuse included.

    A subclass declares ``traits = EncoderTraits(modalities=(...), ...)`` and, in
    ``__init__(options, spec)``, calls ``super().__init__(spec)`` and sets ``token_dim`` and
    ``pooled_dim``; its ``forward`` returns :class:`~mmfuse.features.Features`.

    Attributes:
        traits: what the encoder can do (a class attribute; an instance replaces it where an
            ability depends on the options, e.g. ``cacheable`` when frozen).
        modality: the input type this instance encodes (one of ``traits.modalities``).
        token_dim: width of each token; pooled_dim: width of the pooled vector.
        film_channels: per block, the channels a FiLM fusion may modulate (encoders whose
            traits say ``film_target``), else None.
        grid: ``(h, w)`` of an image encoder's grid of tokens, for ``mmfuse explain``'s
            positions; None when unknown.
        tokenizer: the text tokenizer a text encoder needs: ``word`` (fitted on the
            training split) or ``pretrained`` (``load_tokenizer(encoder)`` gives it).
        bundle_defaults: for an option added after bundles were saved without it, the value
            that gives the architecture those bundles hold (a bundle records every option
            it was trained with, so only a missing key means "saved before it existed").
    """

    traits: EncoderTraits = EncoderTraits()
    bundle_defaults: dict[str, Any] = {}
    film_channels: tuple[int, ...] | None = None
    grid: tuple[int, int] | None = None
    tokenizer: str = "word"
    token_dim: int
    pooled_dim: int

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.modality = spec.modality

    @classmethod
    def cacheable_with(cls, options: Any) -> bool:
        """Whether an encoder built with ``options`` has a frozen part whose outputs can be
        cached (``traits.cacheable``), decided from the options alone, so that the config is
        checked before any data is read; by default the class's trait."""
        return cls.traits.cacheable

    @classmethod
    def frozen_with(cls, options: Any) -> bool:
        """Whether an encoder built with ``options`` has no trainable parameter at all (a
        backbone that another encoder may cache whole); by default False."""
        return False

    @classmethod
    def default_preprocess(cls, encoder: dict) -> dict:
        """Preprocessing the encoder needs by default, filling what the config leaves out:
        what pretrained weights expect (size, mean, std), or the augmentation a from-scratch
        encoder needs to generalise (``cnn``: a small shift); ``encoder`` is the resolved
        encoder config. None by default."""
        return {}

# --- Explanations ---------------------------------------------------------------------------
#
# Every encoder passes its per-token features through ``self.token_features = nn.Identity()``
# exactly once per forward, as a ``[B, N, D]`` tensor whose N positions are the N tokens it
# returns (cnn grid cells before their coordinates, word embeddings, audio time steps, video
# frame vectors, a Hugging Face model's last hidden states), and computes its tokens and
# pooled vector from them. ``mmfuse explain`` scales that tensor for integrated gradients
# (explain/attribution.py); ``tests/test_encoders.py`` checks the contract for every encoder.

# --- Pretrained encoders -------------------------------------------------------------------
#
# An encoder that starts from pretrained weights implements, beside ``forward``:
#
#   pretrained_parameters() -> list[nn.Parameter]
#       the parameters that came from the pretrained weights (``training.pretrained_lr_multiplier``
#       scales their learning rate);
#   default_preprocess(encoder) -> dict            (a classmethod / staticmethod)
#       preprocessing the weights were trained with (e.g. size, mean, std); it applies to every
#       key the config leaves out, and the resolved config (hence the bundle) records it;
#   cacheable_with(options) -> bool                (a classmethod; ``traits.cacheable``)
#       True when the part run by ``frozen_features`` has no trainable parameter and is
#       deterministic (frozen weights, batch norm and dropout in eval mode), so its outputs can be
#       computed once per item and cached (``cache_features``); decided from the options alone,
#       so ``cache_features: true`` is checked before any data is read, and the built encoder
#       sets ``traits.cacheable`` from it;
#   frozen_with(options) -> bool                   (a classmethod)
#       True when nothing of it trains at all (``frame_cnn`` caches such a backbone whole);
#   frozen_features(**tensors) -> dict[str, Tensor]
#       the frozen part's outputs per item (each ``[U, ...]``);
#   from_frozen(**frozen) -> Features
#       the trainable rest; ``forward(**t) == from_frozen(**frozen_features(**t))``.
#
# While a bundle is loaded, its own weights replace the pretrained ones, so such an encoder
# builds its architecture without reading the pretrained files (``reading_bundle()``): a bundle
# loads without the package or folder that held the weights.

_BUNDLE_WEIGHTS = ContextVar("mmfuse_bundle_weights", default=False)
_BUNDLE_FOLDER: ContextVar[Path | None] = ContextVar("mmfuse_bundle_folder", default=None)


def reading_bundle() -> bool:
    """True while a bundle's model is built: its weights will come from the bundle."""
    return _BUNDLE_WEIGHTS.get()


def bundle_folder() -> Path:
    """The folder of the bundle being read (files it embeds, such as a causal LM's)."""
    folder = _BUNDLE_FOLDER.get()
    if folder is None:
        raise RuntimeError("no bundle is being read")
    return folder


@contextmanager
def weights_from_bundle(folder: Path | None = None) -> Iterator[None]:
    """Build models inside this block without reading pretrained weight files (a causal LM's
    frozen weights excepted: a bundle records them by identity); ``folder`` is the bundle's."""
    token = _BUNDLE_WEIGHTS.set(True)
    folder_token = _BUNDLE_FOLDER.set(folder)
    try:
        yield
    finally:
        _BUNDLE_FOLDER.reset(folder_token)
        _BUNDLE_WEIGHTS.reset(token)
