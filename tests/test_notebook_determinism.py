"""Every output nbval compares is determined by the notebook's inputs alone, not by this machine's speed or load.

Three checks, cheapest first:

* **static** (every notebook, milliseconds): values that come from a measuring call (``measure_cpu_peaks``,
  ``profiling.profile``, ``graph_modes``, clocks, thread counts) are followed through assignments, loops,
  comprehensions, attributes and calls; a cell nbval checks (no ``nbval-ignore-output`` tag) must not display one
  (``print``, ``display``, the cell's last expression). Descriptive fields of a measured result (a row's name,
  repeat count, compile count) are facts, not measurements (``DESCRIPTIVE``).
* **perturbed** (CI, the notebooks the static scan finds measuring, ~15 s each): re-executes them with one torch
  thread and a skewed clock, and compares each checked cell's sanitised text with the committed output. Each
  thread's ``time.perf_counter`` / ``time.monotonic`` / ``time.time`` advance by the real interval since that
  thread's previous read times a factor between 1/1000 and 1000 drawn from (seed, the reading function, how often it
  read before): the same on every run, different for each timed interval, so every measured time and every ratio
  of two (a ridge, a speed-up) moves far from the real one. (With ``SKEW_SEED`` the matmul intervals of
  ``measure_cpu_peaks`` come out ~6e4 times longer relative to its copy intervals: the ridge falls below any
  call's intensity, which turned notebook 09's old measured "memory"-bound verdict into "compute".)
* **stress** (opt-in, ``FIA_NOTEBOOK_STRESS=1``; minutes): re-executes every notebook with one torch thread, then
  with the default thread count while every core is kept busy by spinning child processes, and compares likewise.
"""

from __future__ import annotations

import ast
import configparser
import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fia_kit import notebook_tools

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SOURCES = notebook_tools.sources(NOTEBOOK_DIR)
IGNORE_TAG = "nbval-ignore-output"
STRESS = os.environ.get("FIA_NOTEBOOK_STRESS") == "1"

# Calls whose result is measured on this machine (the last name of the called expression).
MEASURING = frozenset({"measure_cpu_peaks", "profile", "graph_modes", "perf_counter", "perf_counter_ns",
                       "monotonic", "monotonic_ns", "time", "time_ns", "process_time", "get_num_threads",
                       "timeit", "getrusage", "max_memory_allocated", "memory_allocated",
                       "cpu_count", "getloadavg"})
# Fields and methods of a measured result that are facts of the request, not measurements.
DESCRIPTIVE = frozenset({"name", "label", "repeats", "warmup", "compiles", "length_copies", "available", "mode",
                         "reason", "backend", "save_json", "shape", "dtype", "len", "type", "isinstance"})
DISPLAYING = frozenset({"print", "display"})


# ------------------------------------------------------------------------------------------------ static check
class _Taint:
    """Which names hold measured values, cell after cell (a notebook shares one namespace)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def measured(self, node: ast.AST | None, local: frozenset[str] = frozenset()) -> bool:
        """Whether evaluating ``node`` yields a value derived from a measurement."""
        if node is None:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.names or node.id in local
        if isinstance(node, ast.Attribute):
            return node.attr not in DESCRIPTIVE and self.measured(node.value, local)
        if isinstance(node, ast.Call):
            name = _called_name(node.func)
            if name in MEASURING:
                return True
            if name in DESCRIPTIVE:
                return False
            parts = [*node.args, *(k.value for k in node.keywords)]
            if isinstance(node.func, ast.Attribute):
                parts.append(node.func.value)
            return any(self.measured(p, local) for p in parts)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            bound = set(local)
            for comp in node.generators:
                if self.measured(comp.iter, frozenset(bound)):
                    bound |= _target_names(comp.target)
                if any(self.measured(cond, frozenset(bound)) for cond in comp.ifs):
                    return True
            elements = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            return any(self.measured(e, frozenset(bound)) for e in elements)
        if isinstance(node, ast.Lambda):
            return False
        return any(self.measured(child, local) for child in ast.iter_child_nodes(node))

    def assign(self, targets: list[ast.AST], measured: bool) -> None:
        for target in targets:
            names = _target_names(target)
            if measured:
                self.names |= names
            elif isinstance(target, ast.Name):
                self.names -= names

    def run(self, statement: ast.stmt) -> None:
        """Follow one top-level statement (and the statements nested in it)."""
        if isinstance(statement, ast.Assign):
            self.assign(statement.targets, self.measured(statement.value))
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)) and statement.value is not None:
            measured = self.measured(statement.value) or (isinstance(statement, ast.AugAssign)
                                                         and self.measured(statement.target))
            self.assign([statement.target], measured)
        elif isinstance(statement, (ast.For, ast.AsyncFor)):
            self.assign([statement.target], self.measured(statement.iter))
        elif isinstance(statement, (ast.With, ast.AsyncWith)):
            for item in statement.items:
                if item.optional_vars is not None:
                    self.assign([item.optional_vars], self.measured(item.context_expr))
        for child in ast.iter_child_nodes(statement):
            if isinstance(child, ast.stmt) and not isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                self.run(child)


def _called_name(func: ast.AST) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _target_names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _displayed(statement: ast.stmt, last: bool) -> Iterator[ast.AST]:
    """What a statement shows: arguments of print/display anywhere in it, and itself if it is the cell's last
    statement and an expression (other than such a call)."""
    for node in ast.walk(statement):
        if isinstance(node, ast.Call) and _called_name(node.func) in DISPLAYING:
            yield from node.args
            yield from (k.value for k in node.keywords if k.arg not in ("file", "flush"))
    if last and isinstance(statement, ast.Expr) and not (isinstance(statement.value, ast.Call)
                                                         and _called_name(statement.value.func) in DISPLAYING):
        yield statement.value


def measured_displays(cells: list[tuple[str, str, tuple[str, ...]]]) -> list[tuple[int, str]]:
    """(code cell index, source of the shown expression) for each measured value a checked cell displays.

    Each top-level statement is followed (twice, so a loop's later iterations see what its body assigns) before
    what it shows is checked."""
    taint, found, index = _Taint(), [], -1
    for kind, text, tags in cells:
        if kind != "code" or not text.strip():
            continue
        index += 1
        body = ast.parse(text).body
        for position, statement in enumerate(body):
            taint.run(statement)
            taint.run(statement)
            if IGNORE_TAG not in tags:
                found += [(index, ast.unparse(shown)) for shown in _displayed(statement, position == len(body) - 1)
                          if taint.measured(shown)]
    return found


def measures(source: Path) -> bool:
    """Whether the notebook calls a measuring function at all."""
    tree = ast.parse("\n".join(text for kind, text, _ in _cells(source) if kind == "code"))
    return any(isinstance(n, ast.Call) and _called_name(n.func) in MEASURING for n in ast.walk(tree))


def _cells(source: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    return notebook_tools.cell_sources(notebook_tools.read_source(source))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_checked_cells_show_nothing_measured(source: Path) -> None:
    found = measured_displays(_cells(source))
    assert not found, (f"{source.name}: checked cells display measured values (code cell, expression): {found}; "
                       f"move them to a cell tagged {IGNORE_TAG} or show a value that does not depend on the machine")


def test_static_check_finds_measured_displays() -> None:
    """The taint follows assignments, loops, comprehensions and calls, and lets descriptive fields through."""
    cells = [("code", "peaks = roofline.measure_cpu_peaks()\nreport = profiling.profile(p, ['reference'])", ()),
             ("code", "place = roofline.roofline(p, report.row('reference').median_s, peaks)\nplace", (IGNORE_TAG,)),
             ("code", "print('bound:', place.bound)", ()),
             ("code", "print([row.name for row in report.rows], [r.repeats for r in report.rows])", ()),
             ("code", "for row in report.rows:\n    s = f'{row.median_s:.1f}'\nprint(s)", ()),
             ("code", "ms = [r.median_s * 1e3 for r in report.rows if r.available]\nms", ()),
             ("code", "import torch\nprint('threads', torch.get_num_threads())", ()),
             ("code", "peaks = DevicePeaks('typed in', 1e12, 1e11)\nprint(peaks.ridge)", ())]
    assert measured_displays(cells) == [(2, "place.bound"), (4, "s"), (5, "ms"), (6, "torch.get_num_threads()")]


# ------------------------------------------------------------------------------------------------ dynamic checks
def _sanitizers() -> list[tuple[re.Pattern[str], str]]:
    config = configparser.ConfigParser()
    config.read(NOTEBOOK_DIR / "sanitize.cfg", encoding="utf-8")
    return [(re.compile(config[s]["regex"]), config[s]["replace"]) for s in config.sections()]


def _shown(cell: dict) -> str:
    """The text nbval compares for a code cell: streams, text/plain and errors, sanitised as sanitize.cfg says."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append("".join(output["text"]))
        elif output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
        else:
            parts.append("".join(output.get("data", {}).get("text/plain", "")))
    text = "".join(parts)
    for pattern, replacement in _sanitizers():
        text = pattern.sub(replacement, text)
    return text


def _differences(committed: dict, fresh: dict) -> list[str]:
    """Checked code cells whose fresh output differs from the committed one."""
    code = lambda nb: [c for c in nb["cells"] if c["cell_type"] == "code"]  # noqa: E731
    problems = []
    for index, (old, new) in enumerate(zip(code(committed), code(fresh), strict=True)):
        if IGNORE_TAG in old.get("metadata", {}).get("tags", []):
            continue
        if _shown(old) != _shown(new):
            problems.append(f"code cell {index}:\n  committed: {_shown(old)!r}\n  this run:  {_shown(new)!r}")
    return problems


SKEWED_CLOCK = """
import hashlib as _hashlib, sys as _sys, threading as _threading, time as _time, torch as _torch
_torch.set_num_threads({threads})
def _skewed(real, seed):
    local = _threading.local()
    def clock():
        now, frame = real(), _sys._getframe(1)
        site = frame.f_code.co_name
        counts = local.__dict__.setdefault("counts", {{}})
        n = counts[site] = counts.get(site, -1) + 1
        if getattr(local, "real", None) is not None:
            draw = _hashlib.sha256(f"{{seed}}:{{site}}:{{n}}".encode()).digest()[0]
            local.shown += (now - local.real) * 10 ** (6 * draw / 255 - 3)
        else:
            local.shown = 1000.0
        local.real = now
        return local.shown
    return clock
for _name in ("perf_counter", "monotonic", "time"):
    setattr(_time, _name, _skewed(getattr(_time, _name), "{seed}:" + _name))
"""
SKEW_SEED = 118
THREADS_ONLY = "import torch as _torch\n_torch.set_num_threads({threads})\n"


def _execute_with(notebook_file: Path, preamble: str) -> dict:
    """Execute the committed notebook's cells after ``preamble`` (a hidden first cell) in a fresh kernel."""
    import nbformat

    committed = nbformat.read(notebook_file, as_version=4)
    fresh = copy.deepcopy(committed)
    fresh.cells.insert(0, nbformat.v4.new_code_cell(preamble))
    notebook_tools.execute(fresh, cwd=notebook_file.parent)
    fresh.cells.pop(0)
    return json.loads(nbformat.writes(fresh))


@contextmanager
def _busy_cores() -> Iterator[None]:
    """Keep every core busy with spinning child processes (killed and reaped on exit, whatever happens)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=10)


MEASURING_SOURCES = [s for s in SOURCES if measures(s)]


def test_the_perturbed_run_covers_the_measuring_notebooks() -> None:
    assert "09_graph_mode_and_profiling.py" in [s.name for s in MEASURING_SOURCES]
    assert "02_layouts.py" not in [s.name for s in MEASURING_SOURCES]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", MEASURING_SOURCES, ids=lambda p: p.name)
def test_checked_outputs_survive_a_skewed_clock_and_one_thread(source: Path) -> None:
    notebook_file = notebook_tools.notebook_path(source)
    fresh = _execute_with(notebook_file, SKEWED_CLOCK.format(threads=1, seed=SKEW_SEED))
    problems = _differences(json.loads(notebook_file.read_text(encoding="utf-8")), fresh)
    assert not problems, f"{notebook_file.name} under a skewed clock and 1 thread:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.skipif(not STRESS, reason="opt-in: FIA_NOTEBOOK_STRESS=1 (re-executes every notebook twice)")
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_checked_outputs_survive_thread_counts_and_busy_cores(source: Path) -> None:
    notebook_file = notebook_tools.notebook_path(source)
    committed = json.loads(notebook_file.read_text(encoding="utf-8"))
    problems = [f"1 thread: {p}" for p in _differences(committed, _execute_with(notebook_file,
                                                                                 THREADS_ONLY.format(threads=1)))]
    with _busy_cores():
        threads = max(1, os.cpu_count() or 1)
        problems += [f"{threads} threads, every core busy: {p}" for p in
                     _differences(committed, _execute_with(notebook_file, THREADS_ONLY.format(threads=threads)))]
    assert not problems, f"{notebook_file.name}:\n" + "\n".join(problems)
