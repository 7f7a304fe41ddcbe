"""Committed notebooks are executed, clean and small, name their backend and point to the spec.

nbval (``make test``) re-runs every notebook and compares outputs; these checks catch what nbval does not: a notebook
committed without outputs, saved widget state, stored error outputs, a missing backend line or spec pointer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb"))
MAX_FILE_BYTES = 1_500_000
MAX_WIDGET_STATE_BYTES = 4_000
BACKEND_LINE = re.compile(r"backend\W+(reference|compiled|npu-graph|npu)\b", re.IGNORECASE)
SPEC_POINTER = re.compile(r"\bspec(?:ification)?\b\W{0,3}(?:section\s+|§\s*)?\d+(?:\.\d+)?", re.IGNORECASE)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def _text(output: dict) -> str:
    """The text an output shows: stream text or its text/plain representation."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path: Path) -> None:
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, f"{path.name} is {size} bytes: strip widget state or summarise large outputs"
    notebook = _load(path)
    widgets = notebook.get("metadata", {}).get("widgets")
    assert widgets is None or len(json.dumps(widgets)) < MAX_WIDGET_STATE_BYTES, \
        f"{path.name} stores widget state in metadata.widgets: strip it (fia_kit.notebook_tools.strip_widget_state)"
    cells = _code_cells(notebook)
    assert cells, f"{path.name} has no code cells"
    unexecuted = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were never executed: commit it executed"
    errors = [(i, o.get("ename")) for i, c in enumerate(cells) for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name} stores error outputs (code cell, exception): {errors}"
    assert any(c["outputs"] for c in cells), f"{path.name} has no outputs: commit it executed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_names_the_backend(path: Path) -> None:
    first = _code_cells(_load(path))[0]
    shown = "".join(_text(o) for o in first["outputs"])
    assert BACKEND_LINE.search(shown), \
        f"{path.name}: the first code cell must print the backend it ran on, e.g. 'backend: reference'; got {shown!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_points_to_a_spec_section(path: Path) -> None:
    text = "\n".join("".join(c["source"]) for c in _load(path)["cells"])
    assert SPEC_POINTER.search(text), f"{path.name} never refers to a spec section (e.g. 'spec section 6.3')"


def test_checks_can_fail() -> None:
    """The patterns reject what they must: a cell without backend line, text without a spec pointer."""
    assert not BACKEND_LINE.search("import torch\n")
    assert BACKEND_LINE.search("this notebook runs on backend: reference\n")
    assert not SPEC_POINTER.search("see the specification for details")
    assert SPEC_POINTER.search("spec section 6.3") and SPEC_POINTER.search("(spec 5.2)")
