"""Notebook hygiene: executed notebooks with live widgets store megabytes of widget state; strip it before commit."""

from __future__ import annotations

import json
from pathlib import Path


def strip_widget_state(path: str | Path) -> bool:
    """Remove ``metadata.widgets`` (saved ipywidgets / FigureWidget state) from a notebook file in place.

    Cell outputs that reference widgets keep their view ids and render as "widget not found" until re-run, which
    is what a committed notebook should do. Returns whether anything was removed.
    """
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if notebook.get("metadata", {}).pop("widgets", None) is None:
        return False
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True
