"""What every notebook generator shares: cell helpers, the first cell, execution and the write step.

Conventions (all notebooks):
* the first code cell picks the backend (``fia_kit.environment.detect().default_backend()``) and prints it as
  "backend: NAME" (``notebooks/sanitize.cfg`` section [fia-backend] masks NAME, so an Ascend box passes nbval too);
* checks print booleans, shapes and counts, never raw floats, so they read the same on any backend;
* cells whose output is inherently machine-variable (plotly figures, widget views, timings, measured errors) carry
  the tag ``nbval-ignore-output`` and say why in their first line.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from fia_kit.notebook_tools import strip_widget_state

NOTEBOOK_DIR = Path(__file__).resolve().parents[1]
IGNORE_OUTPUT = "nbval-ignore-output"
REASONS = {
    "figure": "# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.\n",
    "widget": "# Widget output is ignored by nbval (tag nbval-ignore-output): widget views carry random model ids.\n",
    "timing": "# Timing output is ignored by nbval (tag nbval-ignore-output): seconds differ on every run.\n",
    "measured": "# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine and backend.\n",
}

SETUP = """\
{stdlib}import torch

import fia_kit
{kit}from fia_kit.backends import TOLERANCES
from fia_kit.call import parse_call
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)
"""


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, ignore: str | None = None) -> nbformat.NotebookNode:
    """A code cell; ``ignore`` (a key of REASONS) tags it nbval-ignore-output and says why in its first line."""
    source = textwrap.dedent(text).strip("\n")
    if ignore:
        return new_code_cell(REASONS[ignore] + source, metadata={"tags": [IGNORE_OUTPUT]})
    return new_code_cell(source)


def setup(stdlib: str = "", kit: str = "", after: str = "") -> nbformat.NotebookNode:
    """The first code cell: imports (``stdlib`` / ``kit`` lines added in place), BACKEND, the backend line."""
    stdlib_block = f"{stdlib}\n\n" if stdlib else ""
    kit_line = f"{kit}\n" if kit else ""
    return code(SETUP.format(stdlib=stdlib_block, kit=kit_line) + textwrap.dedent(after))


def build(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop execution timestamps and the kernel's exact Python version (widget state: ``strip_widget_state``)."""
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def execute(nb: nbformat.NotebookNode) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()


def main(notebooks: Mapping[str, Callable[[], list[nbformat.NotebookNode]]], description: str,
         argv: list[str] | None = None) -> int:
    """Write (and execute) ``notebooks``: name -> function returning its cells; CLI: prefixes, --no-execute."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without outputs")
    args = parser.parse_args(argv)
    for name, cells in notebooks.items():
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        nb = build(cells())
        if not args.no_execute:
            execute(nb)
        nbformat.validate(nb)
        nbformat.write(strip(nb), NOTEBOOK_DIR / name)
        strip_widget_state(NOTEBOOK_DIR / name)
        print("wrote", NOTEBOOK_DIR / name)
    return 0
