"""The report's HTML: sections, tables, figures and the page around them.

Everything is inline (one ``<style>`` block, images as data URIs, no scripts), so the file opens
anywhere, offline, and can be mailed or attached as it is. Every piece of text that comes from
the data (labels, questions, captions, column names) goes through :func:`esc`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430;
       max-width: 1100px; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d5dae1; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-bottom: .3rem; }
section { margin: 2rem 0; }
nav ol { columns: 2; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #d5dae1; padding: .2rem .5rem; text-align: left;
         vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f1f3f6; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: 12px; }
figure { margin: .5rem 0; }
figure img { max-width: 100%; height: auto; }
.note { color: #5b6574; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; }
.card { border: 1px solid #d5dae1; border-radius: 6px; padding: .5rem; width: 220px;
        font-size: 12px; }
.card.right { border-left: 4px solid #2e8b57; }
.card.wrong { border-left: 4px solid #c0392b; }
.card img { width: 96px; height: auto; image-rendering: pixelated; display: block; }
.card audio { width: 200px; }
.card .field { margin: .2rem 0; overflow-wrap: anywhere; }
.card .label { color: #5b6574; }
"""


@dataclass
class Section:
    """One ``<section id=...>`` of the report: its id (an HTML id), heading and body HTML."""

    id: str
    title: str
    body: str

    def render(self) -> str:
        return f'<section id="{self.id}">\n<h2>{esc(self.title)}</h2>\n{self.body}\n</section>'


def esc(value: object) -> str:
    """``value`` as text that is safe inside HTML elements and attributes."""
    return html.escape(str(value), quote=True)


def paragraph(text: str, note: bool = False) -> str:
    """A ``<p>`` of plain text (escaped); ``note`` greys it."""
    return f'<p class="note">{esc(text)}</p>' if note else f"<p>{esc(text)}</p>"


def cell(value: object) -> str:
    """A table cell: numbers right-aligned (floats to 4 places), anything else escaped text."""
    if isinstance(value, bool) or value is None:
        return f"<td>{esc('' if value is None else value)}</td>"
    if isinstance(value, float):
        return f'<td class="num">{"n/a" if value != value else f"{value:.4f}"}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{esc(value)}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    """An HTML table with a header row; cells formatted by :func:`cell`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def figure(uri: str, alt: str) -> str:
    """An inline image (a ``data:`` URI) with its alternative text."""
    return f'<figure><img src="{uri}" alt="{esc(alt)}"></figure>'


def page(title: str, lines: list[str], sections: list[Section]) -> str:
    """The whole document: title, a few lines about the run, contents, then the sections."""
    contents = "\n".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in sections)
    intro = "\n".join(paragraph(line) for line in lines)
    body = "\n".join(s.render() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header>\n<h1>{esc(title)}</h1>\n{intro}\n"
            f'<nav id="contents" aria-label="contents"><strong>Contents</strong>\n'
            f"<ol>\n{contents}\n</ol></nav>\n</header>\n<main>\n{body}\n</main>\n</body>\n"
            f"</html>\n")
