"""The flex backend against the reference on hypothesis-generated calls, and each feature it declines.

The two share only the plan (parsing, validation, resolved lengths): a visibility or numerics bug in either shows up
as a difference here. Outputs are compared at the per-dtype tolerances of ``fia_kit.backends.TOLERANCES``; the LSE on
every row, sentinels included (+inf on rows that are not computed, -3.4e38 on decode rows of a batch without
keys, spec 25.1).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fia_kit import flex, reference
from fia_kit.backends import TOLERANCES
from fia_kit.errors import FIAArgumentError
from fia_kit.layouts import convert_layout
from fia_kit.masks import compressed_causal_mask

INT_MAX = 2147483647
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much,
                                                                         HealthCheck.too_slow])


def both(form: str, q, k, v, kwargs: dict):
    """(reference outputs, flex outputs); hypothesis rejects a call the plan refuses (both would refuse it)."""
    name = "npu_fused_infer_attention_score" + ("_v2" if form == "v2" else "")
    try:
        expected = getattr(reference, name)(q, k, v, **kwargs)
    except FIAArgumentError:
        with pytest.raises(FIAArgumentError):
            getattr(flex, name)(q, k, v, **kwargs)
        assume(False)
    with flex.flex_mode("eager"):
        got = getattr(flex, name)(q, k, v, **kwargs)
    return expected, got


def assert_same(expected, got) -> None:
    (ref_out, ref_lse), (out, lse) = expected, got
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    atol, rtol = TOLERANCES[ref_out.dtype]
    torch.testing.assert_close(out.double(), ref_out.double(), atol=atol, rtol=rtol)
    assert lse.shape == ref_lse.shape and lse.dtype == ref_lse.dtype
    assert torch.equal(torch.isposinf(lse), torch.isposinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite].double(), atol=1e-4, rtol=1e-5)


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@st.composite
def dense_calls(draw: st.DrawFn):
    """A non-paged call over layouts, lengths, sparse modes 0-4, pre/next, user masks, inner_precise, pse, GQA,
    shared prefix and left padding (v1), LSE; returns (form, q, k, v, kwargs)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["BNSD", "BSH", "BSND", "BNSD_BSND", "TND"]))
    packed = layout == "TND"
    b = draw(st.integers(1, 3))
    n_kv, g = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    n_q = n_kv * g
    s_q, s_kv = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    d = 64 if packed else draw(st.sampled_from([16, 32]))
    form = "v1" if packed else draw(st.sampled_from(["v1", "v2"]))
    lq = draw(st.lists(st.integers(0, s_q), min_size=b, max_size=b))
    lkv = draw(st.lists(st.integers(0, s_kv), min_size=b, max_size=b))
    decode = not packed and s_q == 1
    mode = draw(st.sampled_from([0, 0, 1, 2, 3, 4]))
    prefix = 0 if packed or form == "v2" else draw(st.sampled_from([0, 0, 3]))
    kv_cols = s_kv + prefix
    kw: dict = dict(input_layout=layout, inner_precise=draw(st.sampled_from([0, 1] if decode else [0, 1, 2, 3])))
    kw["num_heads" if form == "v1" else "num_query_heads"] = n_q
    kw["num_key_value_heads"] = n_kv
    kw["scale" if form == "v1" else "softmax_scale"] = draw(st.sampled_from([0.125, 0.3, 1.0]))
    kw["softmax_lse_flag" if form == "v1" else "return_softmax_lse"] = draw(st.booleans())
    if packed:
        q4, k4, v4 = randn(gen, 1, n_q, sum(lq), d), randn(gen, 1, n_kv, sum(lkv), d), randn(gen, 1, n_kv, sum(lkv), d)
        cum = lambda xs: [sum(xs[: i + 1]) for i in range(len(xs))]  # noqa: E731
        kw["actual_seq_lengths"], kw["actual_seq_lengths_kv"] = cum(lq), cum(lkv)
        mask_rows, mask_cols = max(lq), max(lkv)
    else:
        q4, k4, v4 = randn(gen, b, n_q, s_q, d), randn(gen, b, n_kv, s_kv, d), randn(gen, b, n_kv, s_kv, d)
        kw["actual_seq_lengths" if form == "v1" else "actual_seq_qlen"] = lq
        kw["actual_seq_lengths_kv" if form == "v1" else "actual_seq_kvlen"] = lkv
        mask_rows, mask_cols = s_q, kv_cols
    if mode in (2, 3, 4):
        kw["atten_mask"] = compressed_causal_mask(draw(st.sampled_from([torch.bool, torch.int8])))
    elif mode == 1 or draw(st.booleans()):
        shape = (b, 1, 1, mask_cols) if decode else (b, 1, mask_rows, mask_cols)
        kw["atten_mask"] = torch.rand(shape, generator=gen) < draw(st.sampled_from([0.2, 0.5, 0.9]))
    if mode:
        kw["sparse_mode"] = mode
    if mode in (0, 4) and "atten_mask" in kw:
        kw["pre_tokens"] = draw(st.sampled_from([INT_MAX, 0, 1, 3, -1]))
        kw["next_tokens"] = draw(st.sampled_from([INT_MAX, 0, 2, -1]))
    in_part = layout.partition("_")[0]
    q, k, v = (convert_layout(x, "BNSD", in_part, n).to(dtype) for x, n in ((q4, n_q), (k4, n_kv), (v4, n_kv)))
    if not packed and draw(st.booleans()):
        kw["pse_shift"] = randn(gen, draw(st.sampled_from([1, b])), n_q, s_q, kv_cols).to(dtype)
    if prefix:
        kp, vp = (convert_layout(randn(gen, 1, n_kv, prefix, d), "BNSD", in_part, n_kv).to(dtype) for _ in "kv")
        kw.update(key_shared_prefix=kp, value_shared_prefix=vp,
                  actual_shared_prefix_len=[draw(st.integers(0, prefix))])
    elif form == "v1" and not packed and draw(st.integers(0, 4)) == 0:
        kw["query_padding_size"] = torch.tensor([draw(st.integers(0, s_q - max(lq)))])
        kw["kv_padding_size"] = torch.tensor([draw(st.integers(0, s_kv - max(lkv)))])
    return form, q, k, v, kw


@settings(max_examples=120, **SETTINGS)
@given(case=dense_calls())
def test_flex_matches_the_reference_on_dense_calls(case):
    form, q, k, v, kwargs = case
    assert_same(*both(form, q, k, v, kwargs))


def paged_cache(gen: torch.Generator, k4: torch.Tensor, lengths: list[int], block_size: int, rank: int):
    """A shuffled paged cache holding k4's (B, N, S, D) tokens, written from spec 11's table; and its block table."""
    b, n, s, d = k4.shape
    per_seq = -(-s // block_size)
    num_blocks = b * per_seq + 2
    order = torch.randperm(num_blocks, generator=gen)[: b * per_seq].view(b, per_seq).to(torch.int32)
    c = 16
    shapes = {3: (num_blocks, block_size, n * d), 4: (num_blocks, n, block_size, d),
              5: (num_blocks, n, d // c, block_size, c)}
    cache = torch.randn(shapes[rank], generator=gen, dtype=k4.dtype)  # unused slots hold noise
    for bi in range(b):
        for t in range(s):
            blk, off = int(order[bi, t // block_size]), t % block_size
            for h in range(n):
                if rank == 3:
                    cache[blk, off, h * d:(h + 1) * d] = k4[bi, h, t]
                elif rank == 4:
                    cache[blk, h, off] = k4[bi, h, t]
                else:
                    cache[blk, h, :, off, :] = k4[bi, h, t].view(d // c, c)
    return cache, order


@st.composite
def paged_calls(draw: st.DrawFn):
    """Paged K/V (ranks 3/4/5, shuffled table), decode and prefill, BNSD/BSH/TND queries, masks and modes."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["BNSD", "BSH", "TND"]))
    rank = 3 if layout == "BSH" else draw(st.sampled_from([3, 4, 5]))
    b, n_kv, g = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 4]))
    n_q, d, bs = n_kv * g, 64, 16
    s_kv = draw(st.integers(1, 40))
    lkv = draw(st.lists(st.integers(0, s_kv), min_size=b, max_size=b))
    s_q = draw(st.sampled_from([1, 1, 3]))
    lq = [s_q] * b if layout != "TND" else draw(st.lists(st.integers(1, 3), min_size=b, max_size=b))
    k4, v4 = randn(gen, b, n_kv, s_kv, d), randn(gen, b, n_kv, s_kv, d)
    key, table = paged_cache(gen, k4, lkv, bs, rank)
    value, _ = paged_cache(torch.Generator().manual_seed(1), v4, lkv, bs, rank)
    value = value.clone()
    # the value cache must use the same table: rewrite it through the key's table
    value, _ = _same_table(value, v4, table, bs, rank)
    kw = dict(input_layout=layout, num_heads=n_q, num_key_value_heads=n_kv, scale=d ** -0.5, block_table=table,
              block_size=bs, actual_seq_lengths_kv=lkv, softmax_lse_flag=draw(st.booleans()))
    capacity = table.shape[1] * bs
    if layout == "TND":
        q = randn(gen, sum(lq), n_q, d)
        kw["actual_seq_lengths"] = [sum(lq[: i + 1]) for i in range(b)]
    else:
        q = convert_layout(randn(gen, b, n_q, s_q, d), "BNSD", layout, n_q)
    decode = layout != "TND" and s_q == 1
    mode = draw(st.sampled_from([0, 3, 4])) if not decode else draw(st.sampled_from([0, 3]))
    if mode:
        kw.update(sparse_mode=mode, atten_mask=compressed_causal_mask())
        if mode == 4:
            kw.update(pre_tokens=draw(st.sampled_from([2, 8])), next_tokens=0)
    elif draw(st.booleans()):
        rows = max(lq) if layout == "TND" else s_q
        shape = (b, 1, 1, capacity) if decode else (b, 1, rows, capacity)
        kw["atten_mask"] = torch.rand(shape, generator=gen) < 0.3
    return q.to(dtype), key.to(dtype), value.to(dtype), kw


def _same_table(cache: torch.Tensor, v4: torch.Tensor, table: torch.Tensor, bs: int, rank: int):
    b, n, s, d = v4.shape
    for bi in range(b):
        for t in range(s):
            blk, off = int(table[bi, t // bs]), t % bs
            for h in range(n):
                if rank == 3:
                    cache[blk, off, h * d:(h + 1) * d] = v4[bi, h, t]
                elif rank == 4:
                    cache[blk, h, off] = v4[bi, h, t]
                else:
                    cache[blk, h, :, off, :] = v4[bi, h, t].view(d // 16, 16)
    return cache, table


@settings(max_examples=50, **SETTINGS)
@given(case=paged_calls())
def test_flex_matches_the_reference_on_paged_calls(case):
    q, k, v, kwargs = case
    assert_same(*both("v1", q, k, v, kwargs))


@st.composite
def rope_and_sink_calls(draw: st.DrawFn):
    """MLA rope (D=128 prefill BNSD/TND, D=512 decode BNSD with one kv head), the tree mask (sparse_mode 9, MLA
    D=512, BNSD/BSND) and v2 learnable sinks (TND)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["rope128", "rope512", "sink", "tree"]))
    b = draw(st.integers(1, 2))
    if kind == "tree":
        n_q, n_kv, d, s_q = draw(st.sampled_from([1, 2, 4])), 1, 512, draw(st.integers(1, 4))
        s_kv = draw(st.integers(s_q, 10))
        layout = draw(st.sampled_from(["BNSD", "BSND"]))
    elif kind == "rope512":
        n_q, n_kv, d, s_q, s_kv = draw(st.sampled_from([1, 2, 4])), 1, 512, 1, draw(st.integers(1, 12))
        layout = "BNSD"
    else:
        n_kv = draw(st.sampled_from([1, 2]))
        n_q, d = n_kv * draw(st.sampled_from([1, 2])), 128 if kind == "rope128" else 64
        s_q, s_kv = draw(st.integers(1, 5)), draw(st.integers(1, 8))
        layout = draw(st.sampled_from(["BNSD", "TND"])) if kind == "rope128" else "TND"
    lq = draw(st.lists(st.integers(1, s_q), min_size=b, max_size=b))
    lkv = draw(st.lists(st.integers(1, s_kv), min_size=b, max_size=b))
    if kind == "tree":
        lkv = [max(a, c) for a, c in zip(lq, lkv, strict=True)]  # the tree mask needs L_q <= L_kv
    kw = dict(input_layout=layout, num_query_heads=n_q, num_key_value_heads=n_kv,
              softmax_scale=(d + 64) ** -0.5,
              return_softmax_lse=kind not in ("rope512", "tree") and draw(st.booleans()))
    mode = 9 if kind == "tree" else draw(st.sampled_from([0, 3, 4]))
    if mode == 9:
        tree = torch.rand(b, s_q, s_q, generator=gen) < draw(st.sampled_from([0.3, 0.7, 1.0]))
        kw.update(sparse_mode=9, atten_mask=tree, inner_precise=draw(st.sampled_from([0, 2])))
    elif mode:
        kw.update(sparse_mode=mode, atten_mask=compressed_causal_mask())
        if mode == 4:
            kw.update(pre_tokens=draw(st.sampled_from([1, 4])), next_tokens=draw(st.sampled_from([0, 1])))
    if layout == "TND":
        t_q, t_kv = sum(lq), sum(lkv)
        q, k, v = randn(gen, t_q, n_q, d), randn(gen, t_kv, n_kv, d), randn(gen, t_kv, n_kv, d)
        kw["actual_seq_qlen"] = [sum(lq[: i + 1]) for i in range(b)]
        kw["actual_seq_kvlen"] = [sum(lkv[: i + 1]) for i in range(b)]
        rope_q, rope_k = randn(gen, t_q, n_q, 64), randn(gen, t_kv, n_kv, 64)
    else:
        q, k, v = randn(gen, b, n_q, s_q, d), randn(gen, b, n_kv, s_kv, d), randn(gen, b, n_kv, s_kv, d)
        kw["actual_seq_qlen"], kw["actual_seq_kvlen"] = lq, lkv
        rope_q, rope_k = randn(gen, b, n_q, s_q, 64), randn(gen, b, n_kv, s_kv, 64)
        if layout == "BSND":
            q, k, v, rope_q, rope_k = (x.transpose(1, 2) for x in (q, k, v, rope_q, rope_k))
    if kind == "sink":
        sink_dtype = torch.bfloat16 if dtype != torch.float32 else torch.float32
        kw["learnable_sink"] = (randn(gen, n_q) * 2).to(sink_dtype)
    else:
        kw.update(query_rope=rope_q.to(dtype), key_rope=rope_k.to(dtype))
    return q.to(dtype), k.to(dtype), v.to(dtype), kw


@settings(max_examples=50, **SETTINGS)
@given(case=rope_and_sink_calls())
def test_flex_matches_the_reference_with_rope_and_sinks(case):
    q, k, v, kwargs = case
    assert_same(*both("v2", q, k, v, kwargs))


# ------------------------------------------------------------------------------------------------ declines

def _small(dtype=torch.float16, b=1, n=2, s_q=3, s_kv=5, d=32):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, n, s, d, generator=gen).to(dtype) for s in (s_q, s_kv, s_kv))


def _declines(fn, q, k, v, feature: str, **kwargs) -> None:
    reference_result = getattr(reference, fn.__name__)(q, k, v, **kwargs)  # the call itself is valid
    assert reference_result[0].numel()
    with pytest.raises(flex.FlexUnsupported, match=f"not supported by the flex backend: {feature}") as info:
        fn(q, k, v, **kwargs)
    assert isinstance(info.value, NotImplementedError)


def test_flex_declines_int8_key_value_antiquant():
    q, _, _ = _small(n=2, s_q=1)
    k8, v8 = (torch.randint(-8, 8, (1, 1, 5, 32), dtype=torch.int8) for _ in "kv")
    scale = torch.full((1, 1, 1, 32), 0.05, dtype=torch.float16)
    _declines(flex.npu_fused_infer_attention_score, q, k8, v8, "int8/int4 K/V", num_heads=2,
              num_key_value_heads=1, input_layout="BNSD", key_antiquant_scale=scale, value_antiquant_scale=scale)


def test_flex_declines_int8_output_quantisation():
    q, k, v = _small()
    _declines(flex.npu_fused_infer_attention_score, q, k, v, "int8 output quantisation", num_heads=2,
              input_layout="BNSD", quant_scale2=torch.tensor([0.5]))


def test_flex_declines_int8_full_quantisation():
    q, k, v = (torch.randint(-8, 8, x.shape, dtype=torch.int8) for x in _small())
    _declines(flex.npu_fused_infer_attention_score, q, k, v, "int8 full quantisation", num_heads=2,
              input_layout="BNSD", dequant_scale1=torch.tensor([0.01]), quant_scale1=torch.tensor([50.0]),
              dequant_scale2=torch.tensor([0.02]))


def test_flex_declines_compiled_cpu_with_the_lse():
    q, k, v = _small(torch.float32)
    with flex.flex_mode("compiled"), pytest.raises(flex.FlexUnsupported, match="compiled flex on CPU"):
        flex.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="BNSD", softmax_lse_flag=True)


def test_flex_mode_rejects_unknown_modes():
    with pytest.raises(ValueError, match="flex mode must be one of"):
        with flex.flex_mode("fast"):
            pass


def test_bad_arguments_raise_the_plans_error_before_flex_runs():
    q, k, v = _small()
    with pytest.raises(FIAArgumentError, match="sparse_mode"):
        flex.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=3)
