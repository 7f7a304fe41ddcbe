"""The real torch_npu 2.13.0 wheel as test ground truth: find it in a cache, or download it, and read its files.

Looked for, in order: ``$FIA_KIT_TORCH_NPU_WHEEL``; the git-ignored ``.cache/wheels/`` of this repo; else ``pip download --no-deps torch_npu==2.13.0`` into ``.cache/wheels/``.
Nothing is imported from the wheel: its files are read as text. When the wheel cannot be had, tests skip, except in
CI (``CI=true``), where they fail with the reason: CI must check against the real wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

VERSION = "2.13.0"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "wheels"
PATTERN = f"torch_npu-{VERSION}-*.whl"


def _cached() -> Path | None:
    given = os.environ.get("FIA_KIT_TORCH_NPU_WHEEL")
    if given:
        return Path(given)
    found = sorted(CACHE.glob(PATTERN)) if CACHE.is_dir() else []
    return found[0] if found else None


@cache
def _wheel() -> tuple[Path | None, str]:
    """(path, "") or (None, why not)."""
    found = _cached()
    if found is not None:
        return found, ""
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", f"torch_npu=={VERSION}", "-d", str(CACHE),
               "--quiet", "--disable-pip-version-check"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{' '.join(command)} failed: {err}"
    found = sorted(CACHE.glob(PATTERN))
    if done.returncode or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel written"]
        return None, f"`{' '.join(command[2:])}` failed (registry unreachable?): {tail[0]}"
    return found[0], ""


def wheel_text(member: str) -> str:
    """The text of ``member`` (e.g. "torch_npu/profiler/_flops_formulas.py") in the wheel; skips (fails in CI)
    when the wheel cannot be found or downloaded."""
    path, why = _wheel()
    if path is None:
        message = f"the torch_npu {VERSION} wheel is needed as ground truth: {why}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    with zipfile.ZipFile(path) as archive:
        return archive.read(member).decode("utf-8")
