"""``mmfuse report``: one self-contained HTML page about a trained run.

- :mod:`.build`: :func:`write_report`, the entry point (checks, order of sections, writing).
- :mod:`.collect`: one pass of predictions over the table, shared by every section.
- :mod:`.run_sections`: learning curves, config, data statistics, timing, groups, importance.
- :mod:`.outputs`: one section per output, by output type (``OUTPUT_SECTIONS``).
- :mod:`.gallery`: the most confident right and wrong rows with their inputs.
- :mod:`.plots` and :mod:`.html`: matplotlib (Agg) figures as data URIs, and the page.
"""

from .build import write_report

__all__ = ["write_report"]
