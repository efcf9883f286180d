"""``mmfuse report``: one self-contained HTML page about a trained run.

- :mod:`.build`: :func:`write_report`, the entry point (checks, order of sections, writing).
- :mod:`.collect`: one pass of predictions over the table, shared by every section.
- :mod:`.run_sections`: learning curves, config, data statistics, timing, groups, importance.
- :mod:`.outputs`: one section per output: its output type's own
  (``OutputType.report_section``), else its metrics beside its baseline's.
- :mod:`.gallery`: the most confident right and wrong rows with their inputs.
- :mod:`.plots` and :mod:`.html`: matplotlib (Agg) figures as data URIs, and the page. Both are
  leaves (they import no other part of mmfuse but errors), so output types build their
  sections from them.
"""

from __future__ import annotations

from typing import Any


def write_report(*args: Any, **kwargs: Any) -> dict:
    """Write the report of a run (:func:`.build.write_report`); imported on first use, so
    that importing :mod:`.html` or :mod:`.plots` loads no model code."""
    from .build import write_report as write

    return write(*args, **kwargs)


__all__ = ["write_report"]
