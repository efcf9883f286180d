"""Fusions: combine the :class:`~mmfuse.encoders.Features` of all inputs into one vector."""

from . import concat, elementwise  # noqa: F401  (registration)
