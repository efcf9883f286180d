"""``mmfuse report``: check the arguments, collect the predictions, build the sections, write.

The order is chosen so that a mistake costs nothing: an unwritable ``--out``, a folder without a
bundle, or a table without an output's column fail before any file is decoded; the page is
written to a temporary file beside ``--out`` and renamed, so a failed report never leaves a
half-written file behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..atomic import write_text
from ..data.table import Table, as_table
from ..errors import DataError, MmfuseError, require
from .collect import ReportData, collect
from .gallery import gallery_section
from .html import Section, page
from .outputs import output_section
from .run_sections import (
    config_section,
    curves_section,
    data_section,
    groups_section,
    importance_section,
    timing_section,
)


def write_report(run_dir: str | Path, out_path: str | Path, table: str | Path | list[dict] | Table,
                 by: str | None = None, data_root: str | Path | None = None) -> dict:
    """Write one self-contained HTML report of a trained run on a labelled table.

    Args:
        run_dir: what ``mmfuse train --out`` wrote (or a bundle folder).
        out_path: the HTML file to write (its folder is created).
        table: the labelled table (path, rows or Table), e.g. the run's validation split.
        by: a column to break the metrics down by (as ``evaluate --by``).
        data_root: folder that the table's relative file paths start from.

    Returns:
        ``{"out": path, "bytes": size, "sections": [section ids], "rows": table rows}``.

    Raises:
        MmfuseError: ``--out`` cannot be written, ``run_dir`` holds no bundle, the table lacks
            an output's (or the ``by``) column, or matplotlib is not installed.
    """
    from ..api import Model

    run_dir, out_path = Path(run_dir), Path(out_path)
    check_writable(out_path)
    require("matplotlib", "report", "drawing the report's plots")
    model = Model.load(run_dir)
    data = as_table(table, data_root)
    check_columns(model, data, by)
    report = collect(model, run_dir, data, by)
    sections = build_sections(report)
    document = page(f"mmfuse report: {run_dir.resolve().name}", intro(report), sections)
    size = write_atomically(out_path, document)
    return {"out": str(out_path), "bytes": size, "sections": [s.id for s in sections],
            "rows": len(data)}


def build_sections(report: ReportData) -> list[Section]:
    """Every section, in page order: training, data, each output, groups, importance,
    gallery, config."""
    sections = [curves_section(report), timing_section(report), data_section(report)]
    for spec in report.model.config.outputs:
        sections.append(output_section(report, spec.name))
    if report.by:
        sections.append(groups_section(report))
    sections += [importance_section(report), gallery_section(report), config_section(report)]
    return sections


def intro(report: ReportData) -> list[str]:
    """The lines under the title: which run, which table, when."""
    from .. import __version__

    grouped = f", grouped by {report.by}" if report.by else ""
    return [f"Run {report.run_dir.resolve()} on {report.table.source} "
            f"({len(report.table)} rows{grouped}).",
            f"Written by mmfuse {__version__} on {time.strftime('%Y-%m-%d %H:%M')}."]


def check_writable(out_path: Path) -> None:
    """Fail early, before any work, when ``out_path`` cannot be written."""
    if out_path.is_dir():
        raise MmfuseError(f"--out {str(out_path)!r} is a folder; give a file name, e.g. "
                          f"{str(out_path / 'report.html')!r}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MmfuseError(f"--out {str(out_path)!r}: cannot create its folder "
                          f"{str(out_path.parent)!r} ({exc.strerror}); choose another path") \
            from None
    if not os.access(out_path.parent, os.W_OK) or (out_path.exists()
                                                   and not os.access(out_path, os.W_OK)):
        raise MmfuseError(f"--out {str(out_path)!r} is not writable; choose another path")


def check_columns(model, table: Table, by: str | None) -> None:
    """Every output's column (the true values) and the ``by`` column must be in the table."""
    for name, prep in model.pipeline.outputs.items():
        if not table.has_column(prep.column):
            raise DataError(f"{table.source}: no column {prep.column!r} for output {name!r}; a "
                            "report compares predictions with the true values, so the table "
                            f"needs it (it has: {', '.join(table.rows[0])})")
    if by is not None and not table.has_column(by):
        raise DataError(f"--by {by!r}: {table.source} has no such column; it has: "
                        f"{', '.join(table.rows[0])}")


def write_atomically(out_path: Path, document: str) -> int:
    """Write ``document`` as UTF-8 through a temporary file and a rename; its size in bytes."""
    try:
        return write_text(out_path, document)
    except OSError as exc:
        raise MmfuseError(f"--out {str(out_path)!r}: cannot write the report "
                          f"({exc.strerror}); choose another path") from None
