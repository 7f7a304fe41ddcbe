"""Precision as the op's own tests judge it ("method 12", spec 25.4): against a benchmark, not a fixed tolerance.

    verdict = method12(tested=npu_out, benchmark=bench_out, golden=golden64)
    verdict.passed, verdict.ratios            # {"max": ..., "mean": ..., "rmse": ...}

The tested output (the NPU's) and a benchmark implementation's output (another device, or a same-dtype eager
computation) are both compared with a high-precision golden (float64). Three errors of each against the golden:

* max relative error  MARE = max |x - g| / (|g| + eps)
* mean relative error MERE = mean |x - g| / (|g| + eps)
* root mean square error RMSE = sqrt(mean (x - g)^2)

with eps = 1e-7. The tested output passes when its error is at most ``max_factor`` (10) times the benchmark's on
MARE, and ``mean_factor`` / ``rmse_factor`` (2) times on MERE and RMSE. The limits scale with the benchmark's own
error, so one rule serves every dtype. A benchmark error of exactly zero allows only zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ErrorStats", "Method12", "error_stats", "method12", "EPS", "LIMITS"]

EPS = 1e-7
LIMITS = {"max": 10.0, "mean": 2.0, "rmse": 2.0}


@dataclass(frozen=True)
class ErrorStats:
    """Errors of one output against the golden (float64 arithmetic). max/mean: relative; rmse: absolute."""

    max: float
    mean: float
    rmse: float


def error_stats(x: torch.Tensor, golden: torch.Tensor) -> ErrorStats:
    """MARE, MERE and RMSE of ``x`` against ``golden`` (same shape; any dtypes, compared in float64)."""
    if x.shape != golden.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs golden {tuple(golden.shape)}")
    if not x.numel():
        return ErrorStats(0.0, 0.0, 0.0)
    g = golden.detach().cpu().double()
    diff = (x.detach().cpu().double() - g).abs()
    if not bool(torch.isfinite(diff).all()):
        return ErrorStats(float("inf"), float("inf"), float("inf"))
    rel = diff / (g.abs() + EPS)
    return ErrorStats(float(rel.max()), float(rel.mean()), float(diff.pow(2).mean().sqrt()))


@dataclass(frozen=True)
class Method12:
    """The verdict: both outputs' errors, their ratios (tested / benchmark) and the limits applied."""

    tested: ErrorStats
    benchmark: ErrorStats
    limits: dict[str, float]

    @property
    def ratios(self) -> dict[str, float]:
        def ratio(t: float, b: float) -> float:
            if b == 0:
                return 0.0 if t == 0 else float("inf")
            return t / b
        return {k: ratio(getattr(self.tested, k), getattr(self.benchmark, k)) for k in self.limits}

    @property
    def failures(self) -> list[str]:
        """The criteria broken, e.g. ["max: 12.3x > 10x"]."""
        return [f"{k}: {r:.3g}x > {self.limits[k]:g}x" for k, r in self.ratios.items() if not r <= self.limits[k]]

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {r:.3g}x (<= {self.limits[k]:g}x)" for k, r in self.ratios.items())
        return f"method 12 {'pass' if self.passed else 'FAIL'}: error vs golden / benchmark's: {parts}"


def method12(tested: torch.Tensor, benchmark: torch.Tensor, golden: torch.Tensor, *, max_factor: float = 10.0,
             mean_factor: float = 2.0, rmse_factor: float = 2.0) -> Method12:
    """Judge ``tested`` by the benchmark's error against the same ``golden`` (see the module docstring).

    Args:
        tested: the output under test (e.g. the NPU's attention_out, COMPUTED rows), any shape.
        benchmark: a benchmark implementation's output for the same inputs, same shape.
        golden: the float64 golden, same shape.
    """
    return Method12(error_stats(tested, golden), error_stats(benchmark, golden),
                    {"max": max_factor, "mean": mean_factor, "rmse": rmse_factor})
