"""tests/npu_wheel.py without a wheel and without a registry: skip locally, fail in CI with the reason."""

from __future__ import annotations

import npu_wheel
import pytest


def test_an_unreachable_registry_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(npu_wheel, "CACHE", tmp_path / "cache")
    monkeypatch.delenv("FIA_KIT_TORCH_NPU_WHEEL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    npu_wheel._wheel.cache_clear()
    try:
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match=r"wheel is needed as ground truth: `pip download --no-deps"):
            npu_wheel.wheel_text("torch_npu/profiler/_flops_formulas.py")
        monkeypatch.delenv("CI")
        with pytest.raises(pytest.skip.Exception, match="registry unreachable"):
            npu_wheel.wheel_text("torch_npu/profiler/_flops_formulas.py")
    finally:
        npu_wheel._wheel.cache_clear()  # later tests look for the real wheel again
