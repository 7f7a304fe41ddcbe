"""fia_kit.precision.method12: errors worked by hand, each criterion failing alone, and a real attention output
judged against a float64 golden with a same-dtype eager benchmark."""

from __future__ import annotations

import math

import pytest
import torch

from fia_kit.precision import error_stats, method12

GOLDEN = torch.ones(4, dtype=torch.float64)
BENCH = GOLDEN + torch.tensor([1e-3, 0, 0, 0], dtype=torch.float64)  # MARE 1e-3, MERE 2.5e-4, RMSE 5e-4


def test_error_stats_by_hand():
    s = error_stats(BENCH, GOLDEN)
    assert s.max == pytest.approx(1e-3 / (1 + 1e-7))
    assert s.mean == pytest.approx(2.5e-4 / (1 + 1e-7))
    assert s.rmse == pytest.approx(math.sqrt(1e-6 / 4))
    assert error_stats(torch.tensor([0.0]), torch.tensor([0.0])).max == 0.0  # eps keeps 0/0 away
    assert error_stats(torch.tensor([float("nan")]), torch.tensor([1.0])).max == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        error_stats(torch.ones(3), torch.ones(4))


def test_each_criterion_can_fail_alone():
    close = method12(GOLDEN + torch.tensor([1.5e-3, 0, 0, 0], dtype=torch.float64), BENCH, GOLDEN)
    assert close.passed and close.ratios == pytest.approx({"max": 1.5, "mean": 1.5, "rmse": 1.5})
    # one outlier 11x the benchmark's: max fails (11 > 10); mean 11x and rmse 11x fail too
    spike = method12(GOLDEN + torch.tensor([1.1e-2, 0, 0, 0], dtype=torch.float64), BENCH, GOLDEN)
    assert [f.split(":")[0] for f in spike.failures] == ["max", "mean", "rmse"]
    # spread error 6e-4 everywhere: max 0.6x and rmse 1.2x pass, mean 2.4x fails
    spread = method12(GOLDEN + 6e-4, BENCH, GOLDEN)
    assert spread.ratios == pytest.approx({"max": 0.6, "mean": 2.4, "rmse": 1.2})
    assert spread.failures == ["mean: 2.4x > 2x"]
    assert method12(GOLDEN + 6e-4, BENCH, GOLDEN, mean_factor=2.5).passed  # the limits are parameters
    # 1.1e-3 everywhere: max 1.1x passes, mean 4.4x (loosened to 5x here) passes, rmse 2.2x fails
    rmse_only = method12(GOLDEN + 1.1e-3, BENCH, GOLDEN, mean_factor=5)
    assert rmse_only.failures == ["rmse: 2.2x > 2x"]
    assert "FAIL" in str(rmse_only) and "pass" in str(close)


def test_zero_benchmark_error_allows_only_zero():
    assert method12(GOLDEN, GOLDEN, GOLDEN).passed
    assert not method12(GOLDEN + 1e-9, GOLDEN, GOLDEN).passed


def test_half_precision_attention_against_an_eager_benchmark():
    """fp16 SDPA judged by an fp16 eager softmax(QK^T)V benchmark vs the float64 golden: same-dtype error, pass;
    the same output with a 5 % corrupted head: fail."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 32, generator=g, dtype=torch.float64) for _ in range(3))
    golden = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), -1) @ v
    half = [t.half() for t in (q, k, v)]
    tested = torch.nn.functional.scaled_dot_product_attention(*(t.float() for t in half)).half()
    scores = (half[0].float() @ half[1].float().transpose(-1, -2) / math.sqrt(32)).half()
    benchmark = (torch.softmax(scores.float(), -1).half().float() @ half[2].float()).half()
    assert method12(tested, benchmark, golden).passed
    corrupted = tested.clone()
    corrupted[0, 1] *= 1.05
    assert not method12(corrupted, benchmark, golden).passed


def _perturbed_npu(scale: float):
    """A torch_npu stand-in returning the reference's attention_out times ``scale`` on every element."""
    import types

    from fia_kit.reference import npu_fused_infer_attention_score

    def npu_fused_infer_attention_score_op(query, key, value, **kwargs):
        out, lse = npu_fused_infer_attention_score(query, key, value, **kwargs)
        return out * scale, lse
    npu_fused_infer_attention_score_op.__name__ = "npu_fused_infer_attention_score"
    return types.SimpleNamespace(npu_fused_infer_attention_score=npu_fused_infer_attention_score_op)


def test_compare_shows_method12_beside_the_fixed_tolerances():
    from fia_kit import compare
    from fia_kit.call import parse_call

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 6, 16, generator=g).half() for _ in range(3))
    call = parse_call("v1", q, k, v, {"num_heads": 2, "input_layout": "BNSD", "actual_seq_lengths": [6, 4]})
    same = compare(call, ["compiled"])
    verdict = same.rows[0].method12
    assert verdict.passed and verdict.ratios == pytest.approx({"max": 1.0, "mean": 1.0, "rmse": 1.0}, rel=0.05)
    # 1 % too large everywhere: far beyond the benchmark's fp16 rounding on mean error and RMSE
    off = compare(call, ["npu"], torch_npu=_perturbed_npu(1.01), device="cpu").rows[0].method12
    assert not off.passed and {f.split(":")[0] for f in off.failures} >= {"mean", "rmse"}
    text = same.table()
    assert "method 12 (max/mean/rmse, x ref)" in text and "vs golden (x ref's err)" in text
