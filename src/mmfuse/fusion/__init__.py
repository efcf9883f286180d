"""Fusions: combine the :class:`~mmfuse.encoders.Features` of all inputs into one vector."""

from . import (  # noqa: F401  (registration)
    attention,
    bilinear,
    concat,
    cross_attention,
    elementwise,
    film,
    gated,
    late,
    relation,
    tensor,
    transformer,
)
