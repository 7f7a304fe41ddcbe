"""fia_kit.roofline: FLOPs against brute-force counts over explicit masks, torch_npu's profiler formula, bytes by
hand, and the roofline arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from fia_kit.call import parse_call
from fia_kit.masks import compressed_causal_mask
from fia_kit.roofline import (
    DevicePeaks,
    attention_flops,
    call_cost,
    measure_cpu_peaks,
    minimum_bytes,
    problem_of,
    profiler_flops,
    roofline,
)

N_Q, N_KV, D = 4, 2, 8


def visible(kind: str, q_len: int, kv_len: int, pre: int = 0, nxt: int = 0) -> torch.Tensor:
    """Explicit (q_len, kv_len) bool visibility, True = the pair is computed, written from spec 6.3's table."""
    i = torch.arange(q_len).view(-1, 1)
    j = torch.arange(kv_len).view(1, -1)
    delta = kv_len - q_len
    rules = {
        "all": torch.ones(q_len, kv_len, dtype=torch.bool),
        "left_up": j <= i,
        "right_down": j <= i + delta,
        "band": (j >= i + delta - pre) & (j <= i + delta + nxt),
        "mode0_band": (j - i >= -pre) & (j - i <= nxt),
    }
    return rules[kind].expand(q_len, kv_len)


def bnsd(q_len: int, kv_len: int, batch: int = 2, dtype: torch.dtype = torch.float16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, N_Q, q_len, D, generator=g).to(dtype)
    k = torch.randn(batch, N_KV, kv_len, D, generator=g).to(dtype)
    return q, k, k.clone()


CASES = [
    # (keywords beyond num_heads / layout, per-batch (q_len, kv_len), mask kind, pre, next)
    ({}, [(12, 20), (12, 20)], "all", 0, 0),
    ({"sparse_mode": 2}, [(12, 20), (12, 20)], "left_up", 0, 0),
    ({"sparse_mode": 3, "actual_seq_lengths": [12, 7], "actual_seq_lengths_kv": [20, 5]},
     [(12, 20), (7, 5)], "right_down", 0, 0),
    ({"sparse_mode": 4, "pre_tokens": 3, "next_tokens": 1, "actual_seq_lengths_kv": [20, 14]},
     [(12, 20), (12, 14)], "band", 3, 1),
    ({"sparse_mode": 0, "pre_tokens": 2, "next_tokens": 5, "explicit": True}, [(12, 20), (12, 20)],
     "mode0_band", 2, 5),
]


@pytest.mark.parametrize("keywords, lengths, kind, pre, nxt", CASES)
def test_flops_count_the_pairs_of_an_explicit_mask(keywords, lengths, kind, pre, nxt):
    keywords = dict(keywords)
    q, k, v = bnsd(12, 20)
    if keywords.pop("explicit", False):
        keywords["atten_mask"] = torch.zeros(12, 20, dtype=torch.bool)  # nothing hidden: only the band counts
    elif keywords.get("sparse_mode", 0) in (2, 3, 4):
        keywords["atten_mask"] = compressed_causal_mask()
    call = parse_call("v1", q, k, v, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD", **keywords))
    pairs = sum(int(visible(kind, ql, kl, pre, nxt).sum()) for ql, kl in lengths)
    cost = call_cost(call)
    assert cost.score_pairs == [int(visible(kind, ql, kl, pre, nxt).sum()) for ql, kl in lengths]
    assert cost.flops == 2 * N_Q * pairs * (D + D)


def test_flops_of_packed_tnd_with_causal_mask_and_decode():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(9, N_Q, D, generator=g)
    k = torch.randn(15, N_KV, D, generator=g)
    call = parse_call("v1", q, k, k, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="TND",
                                          sparse_mode=3, atten_mask=compressed_causal_mask(),
                                          actual_seq_lengths=[4, 9], actual_seq_lengths_kv=[6, 15]))
    pairs = int(visible("right_down", 4, 6).sum() + visible("right_down", 5, 9).sum())
    assert attention_flops(problem_of(call)) == 2 * N_Q * pairs * 2 * D
    # decode: S_q == 1 sees every valid key, whatever sparse_mode says (spec 6.5)
    qd, kd, vd = bnsd(1, 20)
    decode = parse_call("v1", qd, kd, vd, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD",
                                               actual_seq_lengths_kv=[20, 3]))
    assert call_cost(decode).score_pairs == [20, 3]


def test_profiler_formula_matches_torch_npu_cases():
    q, k, v = bnsd(16, 16, batch=3)
    base = dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD")
    full = parse_call("v1", q, k, v, base)
    assert profiler_flops(full) == attention_flops(problem_of(full)) == 2 * 3 * N_Q * 16 * 16 * 2 * D
    causal = parse_call("v1", q, k, v, dict(base, sparse_mode=3, atten_mask=compressed_causal_mask()))
    assert profiler_flops(causal) == 2 * 3 * N_Q * (16 * 16 // 2) * 2 * D  # S^2/2: diagonal half-counted
    assert attention_flops(problem_of(causal)) == 2 * 3 * N_Q * (16 * 17 // 2) * 2 * D
    # mode 2 with S_q >= S_kv: S_q*S_kv - S_kv^2/2 (shape-based, lengths ignored)
    q2, k2, v2 = bnsd(16, 8, batch=1)
    left_up = parse_call("v1", q2, k2, v2, dict(base, sparse_mode=2, atten_mask=compressed_causal_mask(),
                                                actual_seq_lengths_kv=[5]))
    assert profiler_flops(left_up) == 2 * N_Q * (16 * 8 - 32) * 2 * D
    # no formula: v2, mode 4, transposing layouts
    band = parse_call("v1", q, k, v, dict(base, sparse_mode=4, atten_mask=compressed_causal_mask(), pre_tokens=2,
                                          next_tokens=0))
    assert profiler_flops(band) is None
    v2call = parse_call("v2", q, k, v, dict(num_query_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD"))
    assert profiler_flops(v2call) is None
    assert call_cost(problem_of(full)).profiler_flops == profiler_flops(full)  # a plan keeps its call's shapes
    bsh = parse_call("v1", q.transpose(1, 2).reshape(3, 16, N_Q * D), k.transpose(1, 2).reshape(3, 16, N_KV * D),
                     v.transpose(1, 2).reshape(3, 16, N_KV * D), dict(base, input_layout="BSH"))
    assert profiler_flops(bsh) == profiler_flops(full)


def test_profiler_formula_tnd_uses_differenced_lengths():
    q = torch.randn(9, N_Q, D)
    k = torch.randn(15, N_KV, D)
    call = parse_call("v1", q, k, k, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="TND",
                                          actual_seq_lengths=[4, 9], actual_seq_lengths_kv=[6, 15]))
    assert profiler_flops(call) == 2 * N_Q * 2 * D * (4 * 6 + 5 * 9)


def test_minimum_bytes_of_a_paged_decode_by_hand():
    batch, block, dim = 2, 16, 16
    g = torch.Generator().manual_seed(2)
    q = torch.randn(batch, N_Q, 1, dim, generator=g).bfloat16()
    cache = torch.randn(8, N_KV, block, dim, generator=g).bfloat16()
    table = torch.tensor([[3, 1, 6, 0], [2, 7, 5, 4]], dtype=torch.int32)
    call = parse_call("v1", q, cache, cache, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD",
                                                  block_table=table, block_size=block,
                                                  actual_seq_lengths_kv=[50, 9], softmax_lse_flag=True))
    by = minimum_bytes(problem_of(call))
    assert by["query"] == batch * N_Q * dim * 2
    assert by["key"] == by["value"] == (50 + 9) * N_KV * dim * 2
    assert by["attention_out"] == batch * N_Q * dim * 2
    assert by["softmax_lse"] == batch * N_Q * 4
    assert by["atten_mask"] == by["pse_shift"] == 0
    cost = call_cost(call)
    assert cost.bytes == sum(by.values())
    assert cost.flops == 2 * N_Q * (50 + 9) * 2 * dim
    assert math.isclose(cost.intensity, cost.flops / cost.bytes)


def test_band_limits_the_keys_and_mask_bytes_counted():
    q, k, v = bnsd(12, 20, batch=2)
    mask = torch.zeros(2, 12, 20, dtype=torch.bool)
    call = parse_call("v1", q, k, v, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD",
                                          atten_mask=mask, pre_tokens=0, next_tokens=3))
    by = minimum_bytes(problem_of(call))
    # row i (0..11) sees keys i..i+3: keys 0..14 are needed (15 of the 20)
    assert by["key"] == 2 * 15 * N_KV * D * 2
    pairs = int(visible("mode0_band", 12, 20, 0, 3).sum())
    assert by["atten_mask"] == 2 * pairs  # per-batch mask planes, 1 byte per in-band element


def test_roofline_arithmetic():
    q, k, v = bnsd(16, 16, batch=1)
    call = parse_call("v1", q, k, v, dict(num_heads=N_Q, num_key_value_heads=N_KV, input_layout="BNSD"))
    cost = call_cost(call)
    peaks = DevicePeaks("test", flops_per_s=1e12, bytes_per_s=1e9)
    roof = roofline(call, seconds=1e-3, peaks=peaks)
    assert roof.achieved_flops_per_s == pytest.approx(cost.flops / 1e-3)
    assert roof.attainable_flops_per_s == pytest.approx(min(1e12, cost.intensity * 1e9))
    assert roof.fraction == pytest.approx(roof.achieved_flops_per_s / roof.attainable_flops_per_s)
    assert roof.bound == ("memory" if cost.intensity < 1e3 else "compute")
    unknown = roofline(call, 1e-3, DevicePeaks("my NPU"))
    assert unknown.attainable_flops_per_s is None and unknown.fraction is None and unknown.bound is None
    assert "enter your device's peak" in unknown.table()
    with pytest.raises(ValueError, match="both peaks"):
        unknown.figure()
    assert roof.figure().data  # plotly figure with the roof and the point
    with pytest.raises(ValueError):
        roofline(call, 0.0, peaks)


def test_measure_cpu_peaks_are_positive_rates():
    peaks = measure_cpu_peaks(size=128, copy_mib=4, repeats=2)
    assert peaks.flops_per_s > 1e6 and peaks.bytes_per_s > 1e6
    assert math.isfinite(peaks.ridge)
