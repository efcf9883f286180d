"""Heads: turn the fused representation into one output each."""

from . import binary, category, causal_lm, causal_lm_labels, number, set, text  # noqa: F401  (registration)
