"""Properties of the reference op that must hold for any input (hypothesis, derandomized).

- the same call in any input_layout gives the same values (spec 4);
- a paged cache read through any block table equals the contiguous K/V (spec 11);
- GQA equals MHA with each KV head repeated G times (spec 10);
- padding beyond the actual lengths never changes valid rows (spec 5.4);
- LSE-weighted outputs of two KV halves merge into the whole call (spec 8).
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fia_kit.masks import compressed_causal_mask
from fia_kit.reference import npu_fused_infer_attention_score as fia

F64 = torch.float64
PROPERTY = settings(max_examples=12, deadline=None, derandomize=True)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@st.composite
def problems(draw: st.DrawFn, packed_ok: bool = True) -> dict:
    """A random small problem: canonical float64 (B, N, S, D) tensors plus valid lengths and sparse mode."""
    b = draw(st.integers(1, 3))
    n_kv = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3]))
    s_q, s_kv = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    d = draw(st.sampled_from([16, 32]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n_kv * g, s_q, d, generator=gen, dtype=F64)
    k = torch.randn(b, n_kv, s_kv, d, generator=gen, dtype=F64)
    v = torch.randn(b, n_kv, s_kv, d, generator=gen, dtype=F64)
    lq = draw(st.lists(st.integers(0, s_q), min_size=b, max_size=b)) if s_q > 1 else [1] * b  # S_q=1 ignores it
    lkv = draw(st.lists(st.integers(0, s_kv), min_size=b, max_size=b))
    mode = draw(st.sampled_from([0, 2, 3]))
    return dict(q=q, k=k, v=v, lq=lq, lkv=lkv, mode=mode, scale=draw(st.floats(0.05, 1.0)))


def call_kwargs(p: dict, layout: str, **extra) -> dict:
    kw = dict(num_heads=p["q"].shape[1], num_key_value_heads=p["k"].shape[1], scale=p["scale"],
              input_layout=layout, actual_seq_lengths=p["lq"], actual_seq_lengths_kv=p["lkv"],
              softmax_lse_flag=True)
    if p["mode"]:
        kw.update(sparse_mode=p["mode"], atten_mask=compressed_causal_mask())
    kw.update(extra)
    return kw


LAYOUTS = ["BSH", "BSND", "BNSD_BSND", "BSH_BNSD", "BSND_BNSD", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD",
           "TND", "NTD", "TND_NTD", "NTD_TND", "NSD"]
PACKED = {"TND", "NTD", "TND_NTD", "NTD_TND"}


def from_bnsd(x: torch.Tensor, part: str) -> torch.Tensor:
    """A (B, N, S, D) tensor in layout ``part`` (spec 4.2), by plain permutes; TND/NTD/NSD take B == 1."""
    b, n, s, d = x.shape
    return {"BSH": lambda: x.permute(0, 2, 1, 3).reshape(b, s, n * d), "BSND": lambda: x.permute(0, 2, 1, 3),
            "BNSD": lambda: x, "NBSD": lambda: x.permute(1, 0, 2, 3), "TND": lambda: x[0].permute(1, 0, 2),
            "NTD": lambda: x[0], "NSD": lambda: x[0]}[part]()


def to_bnsd(x: torch.Tensor, part: str, heads: int) -> torch.Tensor:
    """The inverse of ``from_bnsd``."""
    return {"BSH": lambda: x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3),
            "BSND": lambda: x.permute(0, 2, 1, 3), "BNSD": lambda: x, "NBSD": lambda: x.permute(1, 0, 2, 3),
            "TND": lambda: x.permute(1, 0, 2)[None], "NTD": lambda: x[None], "NSD": lambda: x[None]}[part]()


@PROPERTY
@given(p=problems(), layout=st.sampled_from(LAYOUTS))
def test_any_layout_gives_the_same_values(p: dict, layout: str) -> None:
    if layout in PACKED or layout == "NSD":  # one batch: packed lengths are the batch's own, cumulatively
        p = dict(p, q=p["q"][:1], k=p["k"][:1], v=p["v"][:1], lq=p["lq"][:1], lkv=p["lkv"][:1])
    if layout in PACKED and p["q"].shape[2] == 1 and p["mode"] == 2:
        # BNSD with S_q == 1 is decode and ignores sparse_mode (spec 6.5); a packed one-token batch keeps its
        # mode, and left-up causal (2) then shows it key 0 only. Right-down (3) agrees with decode.
        p = dict(p, mode=3)
    n_q = p["q"].shape[1]
    golden, golden_lse = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD"))
    in_part, _, out_part = layout.partition("_")
    out_part = out_part or in_part
    q, k, v = (from_bnsd(x, in_part) for x in (p["q"], p["k"], p["v"]))
    out, lse = fia(q, k, v, **call_kwargs(p, layout))
    close(to_bnsd(out, out_part, n_q), golden)
    if in_part in ("TND", "NTD"):
        rows = p["lq"][0]
        got, want = lse[:rows, :, 0].transpose(0, 1), golden_lse[0, :, :rows, 0]
    else:
        got, want = lse, golden_lse
    # A batch without keys: BNSD with S_q == 1 is a "legacy IFA" shaped decode on the FIA route (LSE
    # float32(-3.4e38)), a packed layout writes +inf; both mean "no key" (fia_kit.lse). Compare which rows have keys, then the values of those rows.
    assert torch.equal(_has_keys(got), _has_keys(want))
    close(got[_has_keys(got)], want[_has_keys(want)])


def _has_keys(lse: torch.Tensor) -> torch.Tensor:
    # +inf, -FLT_MAX (legacy IFA) or float32(-3.4e38) (the FIA route's decode sentinel, fia_kernel_nonquant.h:112)
    return ~(torch.isposinf(lse) | (lse <= -3.0e38))


@PROPERTY
@given(p=problems(), rank=st.sampled_from([3, 4, 5]), spare=st.integers(0, 4), data=st.data())
def test_paged_equals_contiguous(p: dict, rank: int, spare: int, data: st.DataObject) -> None:
    bs = 16
    b, n_kv, s_kv, d = p["k"].shape
    per_seq = -(-s_kv // bs)
    num_blocks = b * per_seq + spare
    order = data.draw(st.permutations(range(num_blocks)))
    table = torch.tensor(order[: b * per_seq], dtype=torch.int32).view(b, per_seq)
    gen = torch.Generator().manual_seed(7)
    stores = []
    for dense in (p["k"], p["v"]):
        store = torch.randn(num_blocks, n_kv, bs, d, generator=gen, dtype=F64) * 1e3  # garbage everywhere
        for bi in range(b):
            for t in range(s_kv):
                store[table[bi, t // bs], :, t % bs] = dense[bi, :, t]
        if rank == 3:
            store = store.transpose(1, 2).reshape(num_blocks, bs, n_kv * d)
        elif rank == 5:  # NZ: (blocks, N_kv, D/16, block_size, 16)
            store = store.view(num_blocks, n_kv, bs, d // 16, 16).permute(0, 1, 3, 2, 4).contiguous()
        stores.append(store)
    golden, golden_lse = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD"))
    out, lse = fia(p["q"], stores[0], stores[1], **call_kwargs(p, "BNSD", block_table=table, block_size=bs))
    close(out, golden)
    close(lse, golden_lse)


@PROPERTY
@given(p=problems())
def test_gqa_equals_repeated_kv_heads(p: dict) -> None:
    g = p["q"].shape[1] // p["k"].shape[1]
    out, lse = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD"))
    k, v = p["k"].repeat_interleave(g, dim=1), p["v"].repeat_interleave(g, dim=1)
    out_mha, lse_mha = fia(p["q"], k, v, **call_kwargs(p, "BNSD", num_key_value_heads=0))
    close(out, out_mha)
    close(lse, lse_mha)


@PROPERTY
@given(p=problems(), garbage=st.sampled_from([1e30, -1e30, float("inf"), float("nan")]))
def test_padding_never_changes_valid_rows(p: dict, garbage: float) -> None:
    out, lse = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD"))
    q, k, v = p["q"].clone(), p["k"].clone(), p["v"].clone()
    for bi, (lq, lkv) in enumerate(zip(p["lq"], p["lkv"], strict=True)):
        q[bi, :, lq:] = garbage
        k[bi, :, lkv:] = garbage
        v[bi, :, lkv:] = garbage
    out2, lse2 = fia(q, k, v, **call_kwargs(p, "BNSD"))
    close(out2, out)
    for bi, lq in enumerate(p["lq"]):
        close(lse2[bi, :, :lq], lse[bi, :, :lq])
        assert not out2[bi, :, lq:].any()  # padding rows are exactly 0


@PROPERTY
@given(p=problems(), split=st.floats(0.0, 1.0))
def test_lse_merge_of_two_kv_halves(p: dict, split: float) -> None:
    """O = sum_k e^{lse_k - m} O_k / sum_k e^{lse_k - m} over two disjoint key ranges (spec 8)."""
    p = dict(p, mode=0, lkv=[p["k"].shape[2]] * len(p["lkv"]))  # unmasked: both halves see all their keys
    s_kv = p["k"].shape[2]
    assume(s_kv > 1)  # one key cannot be split
    m = max(1, min(s_kv - 1, round(split * s_kv)))
    whole, whole_lse = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD"))
    first, lse1 = fia(p["q"], p["k"], p["v"], **call_kwargs(p, "BNSD", actual_seq_lengths_kv=[m]))
    second, lse2 = fia(p["q"], p["k"][:, :, m:], p["v"][:, :, m:],
                       **call_kwargs(p, "BNSD", actual_seq_lengths_kv=None))
    top = torch.maximum(lse1, lse2)
    w1, w2 = (lse1 - top).exp(), (lse2 - top).exp()
    merged = (w1 * first + w2 * second) / (w1 + w2)
    merged_lse = top + (w1 + w2).log()
    for bi, lq in enumerate(p["lq"]):
        close(merged[bi, :, :lq], whole[bi, :, :lq])
        close(merged_lse[bi, :, :lq], whole_lse[bi, :, :lq])
