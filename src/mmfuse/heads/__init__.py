"""Heads: turn the fused vector into one output each."""

from . import category  # noqa: F401  (registration)
