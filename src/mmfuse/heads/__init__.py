"""Heads: turn the fused representation into one output each."""

from . import category, text  # noqa: F401  (registration)
