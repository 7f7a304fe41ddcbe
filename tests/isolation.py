"""Run a test's measurement in a fresh Python process, so that the rest of the suite cannot change what it measures.

A memory bound read from the process's peak RSS (``fia_kit.profiling.peak_memory`` on CPU) counts every
allocation the process made; inside a combined run, other tests' caches and freed-but-kept pages can push it over
the bound. ``in_child(function)`` imports the test module afresh in a child interpreter and calls ``function`` (a
module-level function without arguments) there: an AssertionError in the child fails the test with the child's
output, ``pytest.skip`` in the child skips it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SKIPPED = 77  # the child's exit status for pytest.skip

_CHILD = """
import importlib, sys
sys.path[:0] = {paths!r}
import pytest
try:
    getattr(importlib.import_module({module!r}), {name!r})()
except pytest.skip.Exception as skip:
    print(skip.msg)
    sys.exit({skipped})
"""


def in_child(function: Callable[[], None], timeout_s: float = 300) -> None:
    """Call ``function`` in a fresh interpreter (bounded by ``timeout_s``); fail or skip as it did there."""
    code = _CHILD.format(paths=[str(TESTS), str(ROOT)], module=function.__module__, name=function.__name__,
                         skipped=SKIPPED)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode == SKIPPED:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, f"in a child process ({function.__name__}):\n{done.stdout}\n{done.stderr}"
