"""Committed notebooks are executed, clean and small, built from their text sources, and point to the spec.

nbval (``make test``) re-runs every notebook and compares outputs; these checks catch what nbval does not: a notebook
that disagrees with its jupytext source (``notebooks/NN_name.py``), a source ruff rejects, a notebook committed
without outputs or with saved widget state or error outputs, metadata JupyterLab would rewrite on opening, a missing
backend line or spec pointer.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fia_kit import notebook_tools

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb"))
SOURCES = notebook_tools.sources(NOTEBOOK_DIR)
MAX_FILE_BYTES = 1_500_000
MAX_WIDGET_STATE_BYTES = 4_000
BACKEND_LINE = re.compile(r"backend\W+(reference|compiled|npu-graph|npu)\b", re.IGNORECASE)
# A check printed as a verdict ("...== SDPA: True"): a learner reads a value, a table or a figure instead, and the
# assertion lives in tests/ (notebooks/README.md).
BOOLEAN_CHECK = re.compile(r"\b(True|False)\W*$", re.MULTILINE)
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


def test_every_notebook_has_a_source_and_every_source_a_notebook() -> None:
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SOURCES], \
        "each notebooks/NN_name.ipynb is built from notebooks/NN_name.py (see notebooks/README.md)"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_notebook_agrees_with_its_source(source: Path) -> None:
    problems = notebook_tools.differences(source)
    assert not problems, "\n".join(problems) + f"\nrebuild: make notebooks NB={source.name[:2]}"


def test_a_changed_source_is_detected(tmp_path: Path) -> None:
    """The agreement check fails on an edited cell, an added cell and a changed tag."""
    source = next(p for p in SOURCES if '# %% tags=["nbval-ignore-output"]' in p.read_text(encoding="utf-8"))
    copy = tmp_path / source.name
    notebook_tools.notebook_path(copy).write_text(notebook_tools.notebook_path(source).read_text(encoding="utf-8"),
                                                  encoding="utf-8")
    text = source.read_text(encoding="utf-8")
    variants = {
        "as committed": text,
        "edited cell": text.replace("import torch", "import torch  # edited", 1),
        "added cell": text + "\n# %%\nprint('one more cell')\n",
        "dropped tag": text.replace('# %% tags=["nbval-ignore-output"]', "# %%", 1),
    }
    found = {}
    for name, variant in variants.items():
        copy.write_text(variant, encoding="utf-8")
        found[name] = bool(notebook_tools.differences(copy))
    assert found == {"as committed": False, "edited cell": True, "added cell": True, "dropped tag": True}


def test_sources_pass_ruff_with_the_project_config() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it is pinned in the test extras)")
    done = subprocess.run([ruff, "check", "--no-cache", *map(str, SOURCES)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pytest_does_not_collect_the_sources_as_test_modules() -> None:
    """Sources are named NN_name.py, outside pytest's python_files (test_*.py, *_test.py): importing one would run it."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(NOTEBOOK_DIR)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 5 and "no tests collected" in done.stdout, done.stdout + done.stderr


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
def test_notebook_is_stored_as_jupyterlab_saves_it(path: Path) -> None:
    """Opening it in JupyterLab changes nothing: nbformat 4.5, the kernel's kernelspec and language_info, newline."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5), f"{path.name}: not nbformat 4.5"
    assert notebook["metadata"].get("kernelspec") == notebook_tools.KERNELSPEC, f"{path.name}: kernelspec"
    info = notebook["metadata"].get("language_info", {})
    assert info.get("name") == "python" and "version" in info and "codemirror_mode" in info, \
        f"{path.name}: language_info is not the kernel's (JupyterLab would rewrite it): {info}"
    assert text.endswith("}\n"), f"{path.name}: JupyterLab ends the file with a newline"
    assert all(c.get("id") for c in notebook["cells"]), f"{path.name}: cells without ids"
    undrawn = [i for i, c in enumerate(notebook["cells"]) for o in c.get("outputs", [])
               if notebook_tools.PLOTLY_MIME in o.get("data", {}) and "image/png" not in o["data"]]
    assert not undrawn, (f"{path.name}: plotly outputs of cells {undrawn} have no stored PNG; plotly's Lab renderer "
                         "would write one on opening (marking the notebook modified): rebuild it")


def test_static_images_are_real_pngs_of_the_figure_size() -> None:
    """``add_static_images`` draws each plotly output into a PNG of the layout's size (read from its IHDR)."""
    if not Path(notebook_tools.CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (`make browser-deps`)")
    import base64
    import struct

    import nbformat
    import plotly.graph_objects as go

    figure = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout=dict(width=480, height=300))
    output = nbformat.v4.new_output("display_data", data={notebook_tools.PLOTLY_MIME: figure.to_plotly_json()})
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig", outputs=[output])])
    assert notebook_tools.add_static_images(notebook) == 1
    png = base64.b64decode(notebook.cells[0].outputs[0]["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (480, 300)
    assert notebook_tools.add_static_images(notebook) == 0  # already drawn: nothing to add


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shows_values_not_boolean_checks(path: Path) -> None:
    """No output line ends in True/False: show the number, a table or a figure; assert in tests/."""
    found = [(i, line) for i, c in enumerate(_code_cells(_load(path))) for o in c["outputs"]
             for line in _text(o).splitlines() if BOOLEAN_CHECK.search(line)]
    assert not found, f"{path.name} prints checks as booleans (code cell, line): {found}"


def _private_reaches(code: str) -> list[str]:
    """What ``code`` takes from fia_kit outside its public surface: names not in ``fia_kit.__all__``, modules that
    are not public submodules (``fia_kit.masks`` is one, ``fia_kit.kernel`` is not), private names."""
    import ast

    import fia_kit

    public = set(fia_kit.__all__)
    modules = {name for name in public if inspect.ismodule(getattr(fia_kit, name))}
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fia_kit":
            parts = node.module.split(".")
            if len(parts) == 1:
                found += [f"from fia_kit import {a.name}" for a in node.names if a.name not in public]
            elif len(parts) > 2 or parts[1] not in modules:
                found.append(f"from {node.module} import ...")
            else:
                found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("fia_kit.")
                      and a.name.split(".")[1] not in modules]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "fia_kit" \
                and node.attr not in public:
            found.append(f"fia_kit.{node.attr}")
    return found


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_notebook_uses_only_the_public_surface(source: Path) -> None:
    """Notebooks teach what users may call: ``fia_kit.__all__`` and the public submodules, nothing private."""
    assert _private_reaches(source.read_text(encoding="utf-8")) == [], source.name


def test_checks_can_fail() -> None:
    """The patterns reject what they must: a cell without backend line, text without a spec pointer, a verdict."""
    assert not BACKEND_LINE.search("import torch\n")
    assert BACKEND_LINE.search("this notebook runs on backend: reference\n")
    assert not SPEC_POINTER.search("see the specification for details")
    assert SPEC_POINTER.search("spec section 6.3") and SPEC_POINTER.search("(spec 5.2)")
    assert sorted(_private_reaches("from fia_kit.kernel import run_plan\nimport fia_kit\nfia_kit.kernel\n"
                                   "from fia_kit import _LAZY\nfrom fia_kit.masks import _band\n")) == [
        "fia_kit.kernel", "from fia_kit import _LAZY", "from fia_kit.kernel import ...",
        "from fia_kit.masks import _band"]
    assert _private_reaches("import fia_kit\nfrom fia_kit import plan\nfrom fia_kit.masks import "
                            "compressed_causal_mask\nfia_kit.masks.INT_MAX\n") == []
    assert BOOLEAN_CHECK.search("== SDPA with repeat_interleave(G): True\n") and BOOLEAN_CHECK.search("False")
    assert not BOOLEAN_CHECK.search("BNSD paged: True q_lens: (5,)\nmax |a - b| 0.0005 x tolerance 0.2 yes\n")
