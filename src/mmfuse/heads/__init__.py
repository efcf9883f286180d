"""Heads: turn the fused representation into one output each."""

from . import binary, category, number, set, text  # noqa: F401  (registration)
