"""The reference's half-precision P·V (issue 24): off by default, "auto" by the CPU's capability, forced both ways.

Both evaluations must meet spec 21's tolerances against float64 goldens (``golden.attention``); the half one must
also be exactly the documented formula (spec 3.6), written here independently in float64 with explicit roundings.
"""

from __future__ import annotations

import pytest
import torch
from golden import attention, causal, paged_cache

from fia_kit import cpu_features
from fia_kit.call import parse_call
from fia_kit.kernel import HALF_PV_DEFAULT, HALF_PV_ENV, half_precision_pv, uses_half_pv
from fia_kit.planning import build_plan
from fia_kit.reference import npu_fused_infer_attention_score as fia

F64 = torch.float64
TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}  # spec 21
HALVES = [torch.bfloat16, torch.float16]


def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual.to(F64), expected.to(F64), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(24)


# ------------------------------------------------------------------------------------------------ the choice

def _plan(dtype: torch.dtype, **extra):
    q, k, v = (torch.zeros(1, 2, 4, 16, dtype=dtype) for _ in range(3))
    return build_plan(parse_call("v1", q, k, v, dict(num_heads=2, input_layout="BNSD", **extra)))


@pytest.mark.parametrize("dtype", HALVES)
def test_off_by_default_forced_either_way_auto_by_the_cpu(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HALF_PV_ENV, raising=False)
    monkeypatch.setattr(cpu_features, "multiplies_in_hardware", lambda d: True)
    plan = _plan(dtype)
    assert HALF_PV_DEFAULT == "off" and uses_half_pv(plan, torch.float32) is None  # even on a capable CPU
    with half_precision_pv("on"):
        assert uses_half_pv(plan, torch.float32) == dtype
        assert uses_half_pv(plan, torch.float64) is None  # golden compute never rounds P
    with half_precision_pv("off"):
        assert uses_half_pv(plan, torch.float32) is None
    for capable in (False, True):
        monkeypatch.setattr(cpu_features, "multiplies_in_hardware", lambda d, c=capable: c and d == dtype)
        with half_precision_pv("auto"):
            assert uses_half_pv(plan, torch.float32) == (dtype if capable else None)
    for value, expected in [("1", dtype), ("on", dtype), ("auto", dtype), ("0", None), ("bogus", None)]:
        monkeypatch.setenv(HALF_PV_ENV, value)
        assert uses_half_pv(plan, torch.float32) == expected, value
    monkeypatch.setenv(HALF_PV_ENV, "1")
    with half_precision_pv("off"):  # the block outranks the environment
        assert uses_half_pv(plan, torch.float32) is None
    with pytest.raises(ValueError, match="half_precision_pv"):
        with half_precision_pv("yes"):
            pass


def test_never_for_float32_values() -> None:
    with half_precision_pv("on"):
        assert uses_half_pv(_plan(torch.float32), torch.float32) is None


@pytest.mark.parametrize("dtype", HALVES)
def test_capability_needs_the_instructions_and_onednn(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = cpu_features.HALF_MATMUL_FLAGS[dtype][0]
    name = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    for flags, onednn, expected in [({"avx2"}, True, False), ({flag}, False, False), ({flag, "avx2"}, True, True)]:
        cpu_features.multiplies_in_hardware.cache_clear()
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda f=frozenset(flags): f)
        monkeypatch.setattr(torch.ops.mkldnn, name, lambda o=onednn: o)
        assert cpu_features.multiplies_in_hardware(dtype) is expected, (flags, onednn)
    cpu_features.multiplies_in_hardware.cache_clear()
    assert cpu_features.multiplies_in_hardware(torch.float32) is False


def test_this_cpu_without_the_instructions_falls_back() -> None:
    """On an AVX2-only CPU (the dev container) the capability is False: "auto" keeps float32 P·V."""
    flags = cpu_features.cpu_flags()
    cpu_features.multiplies_in_hardware.cache_clear()
    if not flags or any(f in flags for fs in cpu_features.HALF_MATMUL_FLAGS.values() for f in fs):
        pytest.skip("this CPU has half-precision matrix instructions (or no /proc/cpuinfo)")
    assert not any(cpu_features.multiplies_in_hardware(d) for d in HALVES)
    with half_precision_pv("auto"):
        assert uses_half_pv(_plan(torch.bfloat16), torch.float32) is None


# ------------------------------------------------------------------------------------------------ numerics

@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", HALVES)
def test_dense_causal_gqa_within_spec_tolerance(dtype: torch.dtype, half: bool, gen: torch.Generator) -> None:
    n_q, n_kv, s, d = 4, 2, 40, 32
    q, k, v = rand(gen, 1, n_q, s, d, dtype=dtype), rand(gen, 1, n_kv, s, d, dtype=dtype), \
        rand(gen, 1, n_kv, s, d, dtype=dtype)
    with half_precision_pv("on" if half else "off"):
        out, lse = fia(q, k, v, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=d ** -0.5,
                       sparse_mode=0, atten_mask=~causal(s, s), softmax_lse_flag=True)
    gold_out, gold_lse = attention(q[0], k[0], v[0], d ** -0.5, causal(s, s))
    close(out[0], gold_out, dtype)
    torch.testing.assert_close(lse[0, ..., 0].to(F64), gold_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", HALVES)
def test_paged_decode_within_spec_tolerance(dtype: torch.dtype, half: bool, rank: int, gen: torch.Generator) -> None:
    """Block-major values (views or converted chunks) and a last block cut at L_kv."""
    n_q, n_kv, d, bs, lengths = 8, 2, 32, 16, [50, 16, 33]
    keys = [rand(gen, n_kv, n, d, dtype=dtype) for n in lengths]
    values = [rand(gen, n_kv, n, d, dtype=dtype) for n in lengths]
    k_cache, table = paged_cache(keys, bs, rank)
    v_cache, _ = paged_cache(values, bs, rank)
    q = rand(gen, len(lengths), n_q, 1, d, dtype=dtype)
    with half_precision_pv("on" if half else "off"):
        out, _ = fia(q, k_cache, v_cache, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD",
                     scale=d ** -0.5, block_table=table, block_size=bs, actual_seq_lengths_kv=lengths)
    for b in range(len(lengths)):
        gold, _ = attention(q[b], keys[b], values[b], d ** -0.5)
        close(out[b], gold, dtype)


@pytest.mark.parametrize("dtype", HALVES)
def test_half_pv_is_the_documented_formula(dtype: torch.dtype, gen: torch.Generator) -> None:
    """One value chunk (dense keys): out = round(round(round(P) V) / sum P), P = exp(s - max s), spec 3.6.

    Written in float64 with the roundings explicit; the reference's float32 scores and sums differ from float64's
    by ~1e-7 relative, so a few outputs may land one rounding step apart: at most one unit in the last place.
    """
    n, s, d = 2, 24, 16
    q, k, v = (rand(gen, 1, n, s, d, dtype=dtype) for _ in range(3))
    with half_precision_pv("on"):
        out, _ = fia(q, k, v, num_heads=n, input_layout="BNSD", scale=0.5)
    scores = 0.5 * q[0].to(F64) @ k[0].to(F64).transpose(-1, -2)
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    weighted = (p.to(dtype).to(F64) @ v[0].to(F64)).to(dtype).to(F64)
    expected = (weighted / p.sum(-1, keepdim=True)).to(dtype)
    ulp = torch.finfo(dtype).eps * expected.to(F64).abs().clamp_min(torch.finfo(dtype).tiny)
    assert float(((out[0].to(F64) - expected.to(F64)).abs() / ulp).max()) <= 1.0
    unrounded = (p @ v[0].to(F64) / p.sum(-1, keepdim=True)).to(dtype)
    assert not torch.equal(expected, unrounded)  # the formula is observable at this size: the test can fail
