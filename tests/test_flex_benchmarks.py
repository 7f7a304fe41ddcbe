"""The GPU check script's CPU path runs end to end and writes its JSON (it is prepared for a CUDA machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback; on a GPU the sweep is minutes long")
def test_cuda_check_runs_its_cpu_fallback_and_writes_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("OUT", str(tmp_path))
    sys.modules.pop("cuda_check", None)
    import cuda_check

    assert cuda_check.main(["--quick"]) == 0
    saved = json.loads((tmp_path / "cuda_check.json").read_text())
    assert saved["device"].startswith("no CUDA device")
    cases = {row["case"] for row in saved["rows"]}
    assert cases == {"prefill", "decode", "pse+mask", "band", "sink"}
    assert all(row["within_tolerance"] and row["max_abs"] < 1e-4 for row in saved["rows"])
