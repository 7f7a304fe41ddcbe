"""Plain-text and HTML renderings of a captioned table of string cells, for the kit's result objects."""

from __future__ import annotations

import html


def text_table(caption: str, head: list[str], body: list[list[str]]) -> str:
    """The caption, then left-aligned columns two spaces apart (no trailing blanks)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [caption]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    return "\n".join(lines)


def html_table(caption: str, head: list[str], body: list[list[str]]) -> str:
    """The same table as an HTML <table>, every cell escaped."""
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{cells(head, 'th')}</tr>{rows}</table>"
