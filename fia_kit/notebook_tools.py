"""Notebook sources and their executed copies.

Each teaching notebook has a text source, ``notebooks/NN_name.py`` in jupytext's percent format (``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell, ``tags=[...]`` after the marker sets cell tags). The committed
``notebooks/NN_name.ipynb`` is that source executed on this machine's backend::

    python -m fia_kit.notebook_tools build          # execute every source into its .ipynb
    python -m fia_kit.notebook_tools build 03 05    # only notebooks whose name starts with 03 or 05
    python -m fia_kit.notebook_tools check          # exit 1 when a committed notebook and its source disagree

The executed notebook stores what JupyterLab would store on save (nbformat 4.5 with cell ids, the kernel's
``kernelspec`` and ``language_info``, a trailing newline) and a PNG of every plotly figure (``add_static_images``),
so opening it does not mark it modified; widget state (``metadata.widgets``, megabytes with a FigureWidget) and
execution timestamps are not kept.

jupytext and nbclient are test/lab dependencies: they are imported only when a source is read or executed; the
PNGs are drawn by plotly.js in Debian's chromium through playwright (``make browser-deps``), as the browser test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SOURCE_NAME = re.compile(r"^\d\d_\w+\.py$")
SOURCE_FORMAT = "py:percent"
# What JupyterLab writes for the ipykernel "python3" kernel when it starts one for a notebook.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
EXECUTION_TIMEOUT_S = 600
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--headless", "--disable-gpu"]
IMAGE_WIDTH = 1000  # px, for a figure whose layout sets no width (about a notebook's width at 1400 px)
IMAGE_HEIGHT = 360  # px, for a figure whose layout sets no height (what plotly's Lab renderer uses)


def sources(notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebook sources ``NN_name.py`` in ``notebook_dir``, sorted by name."""
    return sorted(p for p in Path(notebook_dir).glob("*.py") if SOURCE_NAME.match(p.name))


def notebook_path(source: str | Path) -> Path:
    """The committed notebook built from ``source``: same folder and name, suffix ``.ipynb``."""
    return Path(source).with_suffix(".ipynb")


def read_source(source: str | Path) -> Any:
    """The unexecuted notebook (an ``nbformat.NotebookNode``) that ``source`` describes.

    Cell metadata keeps only ``tags``; cell ids are derived from each cell's text (stable across rebuilds).
    """
    import jupytext

    notebook = jupytext.read(Path(source), fmt=SOURCE_FORMAT)
    notebook.nbformat, notebook.nbformat_minor = 4, 5
    notebook.metadata = {"kernelspec": dict(KERNELSPEC)}
    seen: dict[str, int] = {}
    for cell in notebook.cells:
        tags = cell.metadata.get("tags")
        cell.metadata = {"tags": list(tags)} if tags else {}
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
    return notebook


def cell_sources(notebook: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """(cell type, source text, tags) for every cell of a notebook (a NotebookNode or its JSON dict)."""
    rows = []
    for cell in notebook["cells"]:
        text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        rows.append((cell["cell_type"], text, tuple(cell.get("metadata", {}).get("tags", ()))))
    return rows


def differences(source: str | Path) -> list[str]:
    """How the committed notebook of ``source`` disagrees with it (empty when they agree)."""
    source = Path(source)
    target = notebook_path(source)
    if not target.exists():
        return [f"{target.name} is missing: run `python -m fia_kit.notebook_tools build {source.name[:2]}`"]
    built = cell_sources(json.loads(target.read_text(encoding="utf-8")))
    wanted = cell_sources(read_source(source))
    problems = []
    if len(built) != len(wanted):
        problems.append(f"{target.name} has {len(built)} cells, {source.name} has {len(wanted)}")
    for index, (got, want) in enumerate(zip(built, wanted, strict=False)):
        if got != want:
            first_line = want[1].splitlines()[0] if want[1] else ""
            problems.append(f"{target.name} cell {index} differs from {source.name} (cell starting {first_line!r})")
    return problems


def strip_widget_state(path: str | Path) -> bool:
    """Remove ``metadata.widgets`` (saved ipywidgets / FigureWidget state) from a notebook file in place.

    Cell outputs that reference widgets keep their view ids and render as "widget not found" until re-run, which
    is what a committed notebook should do. Returns whether anything was removed.
    """
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    if notebook.get("metadata", {}).pop("widgets", None) is None:
        return False
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return True


def execute(notebook: Any, cwd: str | Path = NOTEBOOK_DIR) -> Any:
    """Run every cell of ``notebook`` in a fresh kernel of this Python (working directory ``cwd``), in place."""
    from nbclient import NotebookClient

    client = NotebookClient(notebook, timeout=EXECUTION_TIMEOUT_S, kernel_name=KERNELSPEC["name"],
                            record_timing=False, store_widget_state=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def write(notebook: Any, path: str | Path) -> Path:
    """Save as JupyterLab does (sorted keys, indent 1, trailing newline), without widget state or timestamps."""
    import nbformat

    notebook.metadata.pop("widgets", None)
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.validate(notebook)
    text = nbformat.writes(notebook, version=nbformat.NO_CONVERT)
    path = Path(path)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return path


def add_static_images(notebook: Any) -> int:
    """Add an ``image/png`` drawing to every plotly output that has none, in place; returns how many were added.

    Plotly's JupyterLab renderer shows a stored PNG as it is (the interactive figure replaces it on hover); an
    output without one is drawn and then gets its PNG written into it, which marks a notebook that was only opened
    as modified. GitHub and nbconvert show the PNG too. Drawn by plotly's own plotly.js in headless chromium.
    """
    missing = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
               if PLOTLY_MIME in output.get("data", {}) and "image/png" not in output["data"]]
    if not missing:
        return 0
    import plotly
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is needed to draw the notebooks' plotly figures: run `make browser-deps`")
    script = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    draw = """async ([figure, width, height]) => Plotly.toImage(
        {data: figure.data, layout: figure.layout, config: figure.config || {}},
        {format: 'png', width: figure.layout.width || width, height: figure.layout.height || height})"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.add_script_tag(content=script)
            for output in missing:
                url = page.evaluate(draw, [output["data"][PLOTLY_MIME], IMAGE_WIDTH, IMAGE_HEIGHT])
                output["data"]["image/png"] = url.split(",", 1)[1]
        finally:
            browser.close()
    return len(missing)


def build(source: str | Path) -> Path:
    """Execute ``source``, draw its plotly figures as PNGs and write its notebook next to it; returns its path."""
    source = Path(source)
    notebook = execute(read_source(source), cwd=source.parent)
    add_static_images(notebook)
    return write(notebook, notebook_path(source))


def _selected(prefixes: Sequence[str], notebook_dir: Path) -> list[Path]:
    found = sources(notebook_dir)
    chosen = [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]
    if prefixes and not chosen:
        raise SystemExit(f"no notebook source in {notebook_dir} starts with {' or '.join(prefixes)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fia_kit.notebook_tools", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("build", "check"))
    parser.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 03 (default: all)")
    parser.add_argument("--dir", type=Path, default=NOTEBOOK_DIR, help="folder of the sources (default: notebooks/)")
    args = parser.parse_args(argv)
    chosen = _selected(args.only, args.dir)
    if args.command == "check":
        problems = [line for source in chosen for line in differences(source)]
        print("\n".join(problems) or f"{len(chosen)} notebooks agree with their sources")
        return 1 if problems else 0
    for source in chosen:
        print("building", source.name, "...", flush=True)
        print("wrote", build(source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
