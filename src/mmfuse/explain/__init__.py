"""Explanations: which input, and which part of it, drove a model's predictions.

- :mod:`.importance`: modality importance over a table (drop and permute).
- :mod:`.attribution`: per-row attribution over each input's tokens.
"""

from .importance import modality_importance

__all__ = ["modality_importance"]
