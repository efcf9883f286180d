"""Output types: what a model predicts, one registered unit per type.

Each output type is one module here that registers its :class:`~.kind.OutputType` (see
``kind.py``): ``category`` (softmax), ``binary`` (yes/no), ``number`` (regression), ``set``
(multi-label) and ``text`` (generated). Its head, the ``nn.Module``, lives in ``heads/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import binary, category, number, set, text  # noqa: F401 (registration)
from .kind import OutputType, output_type, output_type_names

if TYPE_CHECKING:
    from ..config import OutputConfig
    from ..modalities.base import Preprocessor


def build_output_preprocessor(config: OutputConfig) -> Preprocessor:
    """The target preprocessor (labels, statistics, or output tokenizer) for one output."""
    return output_type(config.type).preprocessor(config)


__all__ = ["OutputType", "build_output_preprocessor", "output_type", "output_type_names"]
