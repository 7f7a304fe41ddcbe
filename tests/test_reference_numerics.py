"""The reference op's numbers against independent references (spec 3-14, 21).

Goldens: torch's scaled_dot_product_attention (SDPA; its bool mask means True = attend, the opposite of FIA's
True = masked), flex_attention with mask_mod/score_mod, explicit float64 logsumexp, and tiny cases worked by hand.
Inputs are laid out by hand here (permute/reshape), never through the kit's layout code.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

from fia_kit.masks import compressed_causal_mask
from fia_kit.reference import compute_dtype
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2

F64 = torch.float64
TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, F64: 1e-10}  # spec 21


# ------------------------------------------------------------------------------------------------ helpers

def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def lay(x: torch.Tensor, part: str) -> torch.Tensor:
    """(B, N, S, D) -> layout ``part`` by hand. TND/NTD pack the B batches of equal length S back to back."""
    b, n, s, d = x.shape
    if part == "BSH":
        return x.transpose(1, 2).reshape(b, s, n * d)
    if part == "BSND":
        return x.transpose(1, 2).contiguous()
    if part == "BNSD":
        return x
    if part == "NBSD":
        return x.transpose(0, 1).contiguous()
    if part == "TND":
        return x.transpose(1, 2).reshape(b * s, n, d)
    if part == "NTD":
        return x.transpose(1, 2).reshape(b * s, n, d).transpose(0, 1).contiguous()
    if part == "NSD":
        assert b == 1
        return x[0]
    raise AssertionError(part)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
         vis: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA golden on (B, N, S, D) tensors in float64; vis (B|1, S_q, S_kv) True = attend; empty rows -> 0."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    mask = None if vis is None else vis[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    if vis is not None:
        out = out.masked_fill(~vis.any(-1)[:, None, :, None], 0.0)
    return out


def scores_lse(q: torch.Tensor, k: torch.Tensor, scale: float, vis: torch.Tensor | None = None,
               pse: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, S_q) natural-log LSE of scale*QK^T (+pse), masked, in float64 (GQA by repeat_interleave)."""
    k = k.to(F64).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = scale * q.to(F64) @ k.transpose(-1, -2)
    if pse is not None:
        s = s + pse.to(F64)
    if vis is not None:
        s = s.masked_fill(~vis[:, None], -math.inf)
    return torch.logsumexp(s, dim=-1)


def band(s_q: int, s_kv: int, lo: float, hi: float, batch: int = 1) -> torch.Tensor:
    """(batch, s_q, s_kv) bool: True where lo <= j - i <= hi."""
    i = torch.arange(s_q)[:, None]
    j = torch.arange(s_kv)[None, :]
    return ((j - i >= lo) & (j - i <= hi)).expand(batch, s_q, s_kv)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = F64) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(actual.to(F64), expected.to(F64), atol=tol, rtol=tol)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask_mod=None, score_mod=None,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention (eager, CPU) output and natural-log LSE."""
    b, _, s_q, _ = q.shape
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, b, None, s_q, k.shape[2], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                  enable_gqa=q.shape[1] != k.shape[1], return_aux=AuxRequest(lse=True))
    return out, aux.lse


# ------------------------------------------------------------------------------------------------ layouts

LAYOUTS = ["BSH", "BSND", "BNSD", "BNSD_BSND", "BSH_BNSD", "BSND_BNSD", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD",
           "TND", "NTD", "TND_NTD", "NTD_TND", "NSD"]
OUT_SHAPES = {  # spec 4.2/4.3 with B=2 (NSD: 1), N_q=4, S=5 (T=10), Dv=8
    "BSH": (2, 5, 32), "BSND": (2, 5, 4, 8), "BNSD": (2, 4, 5, 8), "BNSD_BSND": (2, 5, 4, 8),
    "BSH_BNSD": (2, 4, 5, 8), "BSND_BNSD": (2, 4, 5, 8), "BSH_NBSD": (4, 2, 5, 8), "BSND_NBSD": (4, 2, 5, 8),
    "BNSD_NBSD": (4, 2, 5, 8), "TND": (10, 4, 8), "NTD": (4, 10, 8), "TND_NTD": (4, 10, 8), "NTD_TND": (10, 4, 8),
    "NSD": (4, 5, 8),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_matches_sdpa(layout: str, gen: torch.Generator) -> None:
    b = 1 if layout == "NSD" else 2
    n_q, n_kv, s, d = 4, 2, 5, 8
    q, k, v = rand(gen, b, n_q, s, d), rand(gen, b, n_kv, s, d), rand(gen, b, n_kv, s, d)
    in_part, _, out_part = layout.partition("_")
    out_part = out_part or in_part
    kw = dict(num_heads=n_q, num_key_value_heads=n_kv, scale=0.3, input_layout=layout, softmax_lse_flag=True)
    if in_part in ("TND", "NTD"):
        kw.update(actual_seq_lengths=[s * (i + 1) for i in range(b)], actual_seq_lengths_kv=[s * (i + 1) for i in range(b)])
    out, lse = fia(lay(q, in_part), lay(k, in_part), lay(v, in_part), **kw)
    assert tuple(out.shape) == OUT_SHAPES[layout]
    close(out, lay(sdpa(q, k, v, 0.3), out_part))
    expected_lse = scores_lse(q, k, 0.3)  # (B, N, S)
    if in_part in ("TND", "NTD"):
        assert lse.shape == (b * s, n_q, 1)
        close(lse[..., 0], expected_lse.transpose(1, 2).reshape(b * s, n_q))
    else:
        assert lse.shape == (b, n_q, s, 1)
        close(lse[..., 0], expected_lse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["BSH", "BNSD", "TND"])
def test_half_precision_within_spec_tolerance(layout: str, dtype: torch.dtype, gen: torch.Generator) -> None:
    b, n, s, d = 2, 2, 16, 32
    q, k, v = (rand(gen, b, n, s, d, dtype=dtype) for _ in range(3))
    part = layout
    kw = dict(num_heads=n, scale=d ** -0.5, input_layout=layout, softmax_lse_flag=True)
    if layout == "TND":
        kw.update(actual_seq_lengths=[s, 2 * s], actual_seq_lengths_kv=[s, 2 * s])
    out, lse = fia(lay(q, part), lay(k, part), lay(v, part), **kw)
    assert out.dtype == dtype and lse.dtype == torch.float32
    close(out, lay(sdpa(q, k, v, d ** -0.5), part), dtype)
    expected_lse = scores_lse(q, k, d ** -0.5)
    got = lse[..., 0] if layout != "TND" else lse[..., 0].reshape(b, s, n).transpose(1, 2)
    close(got, expected_lse, torch.float32)  # float32 from the same (rounded) inputs


def test_compute_dtype_float64_on_half_inputs(gen: torch.Generator) -> None:
    """With compute_dtype(float64) only the final cast to float16 separates the op from a float64 golden."""
    q, k, v = (rand(gen, 2, 2, 9, 32, dtype=torch.float16) for _ in range(3))
    with compute_dtype(F64):
        out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.2)
    torch.testing.assert_close(out, sdpa(q, k, v, 0.2).to(torch.float16), atol=0, rtol=0)


def test_lse_not_requested_is_empty(gen: torch.Generator) -> None:
    q = rand(gen, 1, 2, 3, 8, dtype=torch.float16)
    _, lse1 = fia(q, q, q, num_heads=2, input_layout="BNSD")
    _, lse2 = fia_v2(q, q, q, num_query_heads=2, input_layout="BNSD")
    for lse in (lse1, lse2):
        assert lse.shape == (0,) and lse.dtype == torch.float32
    _, lse3 = fia_v2(q, q, q, num_query_heads=2, input_layout="BNSD", return_softmax_lse=True)
    assert lse3.shape == (1, 2, 3, 1)


def test_v1_and_v2_spellings_agree(gen: torch.Generator) -> None:
    q, k, v = rand(gen, 2, 4, 6, 8), rand(gen, 2, 2, 7, 8), rand(gen, 2, 2, 7, 8)
    common = dict(input_layout="BNSD", num_key_value_heads=2)
    o1, l1 = fia(q, k, v, num_heads=4, scale=0.4, actual_seq_lengths=[3, 6], actual_seq_lengths_kv=[5, 7],
                 softmax_lse_flag=True, **common)
    o2, l2 = fia_v2(q, k, v, num_query_heads=4, softmax_scale=0.4, actual_seq_qlen=[3, 6], actual_seq_kvlen=[5, 7],
                    return_softmax_lse=True, **common)
    o3, _ = fia_v2(q, k, v, num_query_heads=4, softmax_scale=0.4, actual_seq_lengths=[3, 6],
                   actual_seq_lengths_kv=[5, 7], **common)  # founding-document aliases (spec 1.3)
    vis = torch.stack([band(6, 7, -99, 99)[0] & (torch.arange(7) < n)[None] for n in (5, 7)])
    vis[0, 3:] = False
    expected = sdpa(q, k, v, 0.4, vis)
    close(o1, expected)
    close(o2, expected)
    close(o3, expected)
    torch.testing.assert_close(l1, l2)


# ------------------------------------------------------------------------------------------------ masks

def test_mode0_explicit_masks_3d_4d_oversized(gen: torch.Generator) -> None:
    b, n, s_q, s_kv, d = 2, 2, 5, 7, 8
    q, k, v = rand(gen, b, n, s_q, d), rand(gen, b, n, s_kv, d), rand(gen, b, n, s_kv, d)
    big = torch.rand(b, s_q + 3, s_kv + 9, generator=gen) < 0.4
    big[:, :, 0] = False  # every row keeps key 0 visible
    expected = sdpa(q, k, v, 0.5, ~big[:, :s_q, :s_kv])
    for mask in (big, big[:, None], big.to(torch.int8), big.to(torch.uint8)[:, None]):
        out, _ = fia(q, k, v, num_heads=n, input_layout="BNSD", scale=0.5, atten_mask=mask)
        close(out, expected)
    shared = big[:1]  # batch 1 broadcasts
    out, _ = fia(q, k, v, num_heads=n, input_layout="BNSD", scale=0.5, atten_mask=shared)
    close(out, sdpa(q, k, v, 0.5, ~shared[:, :s_q, :s_kv]))


@pytest.mark.parametrize("s_q, s_kv", [(6, 6), (4, 9), (9, 4)])
@pytest.mark.parametrize("mode", [2, 3])
def test_causal_modes_match_sdpa(mode: int, s_q: int, s_kv: int, gen: torch.Generator) -> None:
    q, k, v = rand(gen, 2, 2, s_q, 8), rand(gen, 2, 2, s_kv, 8), rand(gen, 2, 2, s_kv, 8)
    out, lse = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.35, sparse_mode=mode,
                   atten_mask=compressed_causal_mask(), softmax_lse_flag=True)
    hi = 0 if mode == 2 else s_kv - s_q  # mode 2 anchors top-left, mode 3 bottom-right (spec 6.3)
    vis = band(s_q, s_kv, -10**9, hi)
    close(out, sdpa(q, k, v, 0.35, vis))
    rows = vis[0].any(-1)
    close(lse[:, :, rows, 0], scores_lse(q, k, 0.35, vis)[:, :, rows])
    if mode == 2 and s_q == s_kv:
        close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.35))


def test_mode3_right_down_per_batch_lengths(gen: torch.Generator) -> None:
    q, k, v = rand(gen, 2, 2, 6, 8), rand(gen, 2, 2, 9, 8), rand(gen, 2, 2, 9, 8)
    lq, lkv = [6, 4], [3, 9]
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.35, sparse_mode=3,
                 atten_mask=compressed_causal_mask(torch.int8), actual_seq_lengths=lq, actual_seq_lengths_kv=lkv)
    vis = torch.zeros(2, 6, 9, dtype=torch.bool)
    for bi in range(2):
        vis[bi, : lq[bi], : lkv[bi]] = band(lq[bi], lkv[bi], -10**9, lkv[bi] - lq[bi])[0]
    close(out, sdpa(q, k, v, 0.35, vis))


@pytest.mark.parametrize("pre, nxt", [(2, 1), (0, 3), (4, -1), (-1, 2)])
def test_mode4_band_against_flex_attention(pre: int, nxt: int, gen: torch.Generator) -> None:
    s_q, s_kv = 7, 11
    q, k, v = rand(gen, 1, 4, s_q, 8), rand(gen, 1, 2, s_kv, 8), rand(gen, 1, 2, s_kv, 8)
    out, lse = fia(q, k, v, num_heads=4, num_key_value_heads=2, input_layout="BNSD", scale=0.3, sparse_mode=4,
                   pre_tokens=pre, next_tokens=nxt, atten_mask=compressed_causal_mask(), softmax_lse_flag=True)
    delta = s_kv - s_q

    def mask_mod(b, h, i, j):
        return (j >= i + delta - pre) & (j <= i + delta + nxt)

    golden, golden_lse = flex(q, k, v, 0.3, mask_mod=mask_mod)
    close(out, golden)
    vis = band(s_q, s_kv, delta - pre, delta + nxt)
    close(out, sdpa(q, k, v, 0.3, vis))
    rows = vis[0].any(-1)
    close(lse[0, :, rows, 0], golden_lse[0][:, rows])


def test_mode0_mask_with_pre_next_band(gen: torch.Generator) -> None:
    q, k, v = rand(gen, 1, 2, 6, 8), rand(gen, 1, 2, 6, 8), rand(gen, 1, 2, 6, 8)
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 3, 2] = True
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.5, atten_mask=mask, pre_tokens=2, next_tokens=1)
    vis = band(6, 6, -2, 1) & ~mask  # left-up origin in mode 0 (spec 6.3)

    def mask_mod(b, h, i, j):
        return (j - i >= -2) & (j - i <= 1) & ~((i == 3) & (j == 2))

    close(out, sdpa(q, k, v, 0.5, vis))
    close(out, flex(q, k, v, 0.5, mask_mod=mask_mod)[0])


def test_pse_shift_against_flex_score_mod(gen: torch.Generator) -> None:
    b, n, s_q, s_kv = 2, 2, 5, 6
    q, k, v = rand(gen, b, n, s_q, 8), rand(gen, b, n, s_kv, 8), rand(gen, b, n, s_kv, 8)
    pse = rand(gen, b, n, s_q + 2, s_kv + 3)  # oversized: top-left corner used (spec 9)
    out, lse = fia(q, k, v, num_heads=n, input_layout="BNSD", scale=0.4, pse_shift=pse, softmax_lse_flag=True)
    corner = pse[:, :, :s_q, :s_kv]

    def score_mod(score, bi, h, i, j):
        return score + corner[bi, h, i, j]  # flex has already multiplied by scale: scale*QK + pse

    golden, golden_lse = flex(q, k, v, 0.4, score_mod=score_mod)
    close(out, golden)
    close(lse[..., 0], golden_lse)
    close(lse[..., 0], scores_lse(q, k, 0.4, pse=corner))


# ------------------------------------------------------------------------------------------------ lengths

@pytest.mark.parametrize("as_tensor", [False, True])
def test_actual_lengths_per_batch_and_broadcast(as_tensor: bool, gen: torch.Generator) -> None:
    q, k, v = rand(gen, 3, 2, 5, 8), rand(gen, 3, 2, 7, 8), rand(gen, 3, 2, 7, 8)
    wrap = (lambda x: torch.tensor(x, dtype=torch.int64)) if as_tensor else list
    for lq, lkv in (([3, 5, 1], [7, 2, 4]), ([4], [6]), ([2, 5, 5, 9], [1, 7, 3, 0])):  # broadcast / extra values
        out, lse = fia(lay(q, "BSH"), lay(k, "BSH"), lay(v, "BSH"), num_heads=2, scale=0.3,
                       actual_seq_lengths=wrap(lq), actual_seq_lengths_kv=wrap(lkv), softmax_lse_flag=True)
        lq3 = (lq * 3)[:3] if len(lq) == 1 else lq[:3]
        lkv3 = (lkv * 3)[:3] if len(lkv) == 1 else lkv[:3]
        vis = torch.zeros(3, 5, 7, dtype=torch.bool)
        for bi in range(3):
            vis[bi, : lq3[bi], : lkv3[bi]] = True
        close(out, lay(sdpa(q, k, v, 0.3, vis), "BSH"))
        for bi in range(3):
            close(lse[bi, :, : lq3[bi], 0], scores_lse(q, k, 0.3, vis)[bi, :, : lq3[bi]])


def pack(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, N, S, D) -> (sum lengths, N, D): batch b's first lengths[b] tokens, back to back (TND)."""
    return torch.cat([x[bi, :, :n].transpose(0, 1) for bi, n in enumerate(lengths)])


@pytest.mark.parametrize("mode", [0, 3])
def test_tnd_cumulative_lengths(mode: int, gen: torch.Generator) -> None:
    lq, lkv = [3, 5, 2], [4, 6, 1]
    q, k, v = rand(gen, 3, 4, 5, 8), rand(gen, 3, 2, 6, 8), rand(gen, 3, 2, 6, 8)
    extra = dict(sparse_mode=3, atten_mask=compressed_causal_mask()) if mode == 3 else {}
    out, lse = fia(pack(q, lq), pack(k, lkv), pack(v, lkv), num_heads=4, num_key_value_heads=2, scale=0.3,
                   input_layout="TND", actual_seq_lengths=[3, 8, 10], actual_seq_lengths_kv=[4, 10, 11],
                   softmax_lse_flag=True, **extra)
    assert out.shape == (10, 4, 8) and lse.shape == (10, 4, 1)
    vis = torch.zeros(3, 5, 6, dtype=torch.bool)
    for bi in range(3):
        hi = lkv[bi] - lq[bi] if mode == 3 else 10**9
        vis[bi, : lq[bi], : lkv[bi]] = band(lq[bi], lkv[bi], -10**9, hi)[0]
    expected = sdpa(q, k, v, 0.3, vis)
    close(out, pack(expected, lq))
    exp_lse = scores_lse(q, k, 0.3, vis).unsqueeze(-1)
    rows = pack(vis.any(-1)[:, None, :, None].expand(3, 4, 5, 1), lq)
    close(lse[rows], pack(exp_lse, lq)[rows])


# ------------------------------------------------------------------------------------------------ paged

def paged_cache(k: torch.Tensor, rank: int, block_size: int, gen: torch.Generator,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter dense (B, N_kv, S, D) keys into a cache of shuffled blocks; returns (cache, int32 block_table)."""
    b, n, s, d = k.shape
    per_seq = -(-s // block_size)
    num_blocks = b * per_seq + 3  # a few unused blocks
    ids = torch.randperm(num_blocks, generator=gen)[: b * per_seq].view(b, per_seq)
    store = torch.full((num_blocks, n, block_size, d), 1e6, dtype=k.dtype)  # garbage in unused slots
    for bi in range(b):
        for blk in range(per_seq):
            chunk = k[bi, :, blk * block_size:(blk + 1) * block_size]
            store[ids[bi, blk], :, : chunk.shape[1]] = chunk
    if rank == 4:
        cache = store
    elif rank == 3:
        cache = store.transpose(1, 2).reshape(num_blocks, block_size, n * d)
    else:  # NZ: (blocks, N, D/16, bs, 16)
        cache = store.view(num_blocks, n, block_size, d // 16, 16).permute(0, 1, 3, 2, 4).contiguous()
    return cache, ids.to(torch.int32)


@pytest.mark.parametrize("lkv", [[37, 20], [0, 33]])  # an empty sequence gives a zero output (spec 5.4)
@pytest.mark.parametrize("rank", [3, 4, 5])
def test_paged_cache_ranks(rank: int, lkv: list[int], gen: torch.Generator) -> None:
    b, n_q, n_kv, s_q, s_kv, d, bs = 2, 4, 2, 3, 40, 32, 16
    q, k, v = rand(gen, b, n_q, s_q, d), rand(gen, b, n_kv, s_kv, d), rand(gen, b, n_kv, s_kv, d)
    kc, table = paged_cache(k, rank, bs, torch.Generator().manual_seed(5))
    vc, table_v = paged_cache(v, rank, bs, torch.Generator().manual_seed(5))
    assert torch.equal(table, table_v)
    out, _ = fia(q, kc, vc, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.2,
                 block_table=table, block_size=bs, actual_seq_lengths_kv=lkv)
    vis = torch.zeros(b, s_q, s_kv, dtype=torch.bool)
    for bi, n in enumerate(lkv):
        vis[bi, :, :n] = True
    close(out, sdpa(q, k, v, 0.2, vis))


def test_paged_tnd_per_batch_kv_lengths(gen: torch.Generator) -> None:
    lq, lkv, bs = [2, 3], [30, 17], 16
    q, k, v = rand(gen, 2, 2, 3, 16), rand(gen, 2, 1, 32, 16), rand(gen, 2, 1, 32, 16)
    kc, table = paged_cache(k, 3, bs, torch.Generator().manual_seed(8))
    vc, _ = paged_cache(v, 3, bs, torch.Generator().manual_seed(8))
    out, _ = fia(pack(q, lq), kc, vc, num_heads=2, num_key_value_heads=1, input_layout="TND", scale=0.25,
                 actual_seq_lengths=[2, 5], actual_seq_lengths_kv=lkv, block_table=table, block_size=bs,
                 sparse_mode=3, atten_mask=compressed_causal_mask())
    vis = torch.zeros(2, 3, 32, dtype=torch.bool)
    for bi in range(2):
        vis[bi, : lq[bi], : lkv[bi]] = band(lq[bi], lkv[bi], -10**9, lkv[bi] - lq[bi])[0]
    close(out, pack(sdpa(q, k, v, 0.25, vis), lq))


# ------------------------------------------------------------------------------------------------ by hand

def counting_values(s_kv: int, d: int = 16) -> torch.Tensor:
    """(1, 1, s_kv, d) values where key j holds j + 1 everywhere: a uniform softmax gives readable means."""
    return (torch.arange(s_kv, dtype=F64) + 1)[None, None, :, None].expand(1, 1, s_kv, d).contiguous()


def uniform_rows(mode: int, s_q: int, s_kv: int, **kw) -> list[float]:
    """Output rows (first column) for zero queries, so every visible key has the same score."""
    q = torch.zeros(1, 1, s_q, 16, dtype=F64)
    k = torch.randn(1, 1, s_kv, 16, dtype=F64, generator=torch.Generator().manual_seed(0))  # irrelevant: q = 0
    if mode in (2, 3, 4):
        kw.setdefault("atten_mask", compressed_causal_mask())
    out, _ = fia(q, k, counting_values(s_kv), num_heads=1, input_layout="BNSD", sparse_mode=mode, **kw)
    return out[0, 0, :, 0].tolist()


@pytest.mark.parametrize("mode, s_q, s_kv, kw, expected", [
    (3, 4, 2, {}, [0.0, 0.0, 1.0, 1.5]),  # right-down: the first S_q - S_kv rows see nothing
    (2, 4, 2, {}, [1.0, 1.5, 1.5, 1.5]),  # left-up: query 0 sees key 0
    (3, 2, 4, {}, [2.0, 2.5]),  # delta = 2: row 0 sees keys 0..2
    (2, 2, 4, {}, [1.0, 1.5]),
    (4, 3, 5, dict(pre_tokens=1, next_tokens=0), [2.5, 3.5, 4.5]),  # keys i+1..i+2
    (4, 4, 4, dict(pre_tokens=0, next_tokens=1), [1.5, 2.5, 3.5, 4.0]),
    (0, 3, 3, dict(atten_mask=torch.zeros(1, 3, 3, dtype=torch.bool), pre_tokens=0, next_tokens=1),
     [1.5, 2.5, 3.0]),  # mode 0 band, left-up origin
    (0, 3, 3, dict(pre_tokens=0, next_tokens=0), [2.0, 2.0, 2.0]),  # no mask: pre/next ignored
])
def test_sparse_modes_by_hand(mode: int, s_q: int, s_kv: int, kw: dict, expected: list[float]) -> None:
    assert uniform_rows(mode, s_q, s_kv, **kw) == pytest.approx(expected, abs=1e-12)


def test_rows_past_lengths_and_empty_kv_are_zero(gen: torch.Generator) -> None:
    q, k, v = rand(gen, 2, 2, 4, 16), rand(gen, 2, 2, 5, 16), rand(gen, 2, 2, 5, 16)
    q[0, :, 2:] = 1e30  # garbage in padding rows
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", actual_seq_lengths=[2, 4], actual_seq_lengths_kv=[5, 0])
    assert torch.equal(out[0, :, 2:], torch.zeros(2, 2, 16, dtype=F64))
    assert torch.equal(out[1], torch.zeros(2, 4, 16, dtype=F64))
    assert out[0, :, :2].abs().sum() > 0


def test_fully_masked_rows_and_inner_precise(gen: torch.Generator) -> None:
    q, k = rand(gen, 1, 1, 2, 16), rand(gen, 1, 1, 4, 16)
    v = counting_values(4)
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, 0] = True  # row 0 fully masked
    mask[0, 1, 1:] = True  # row 1 sees only key 0
    kw = dict(num_heads=1, input_layout="BNSD", sparse_mode=1, atten_mask=mask)
    loose, _ = fia(q, k, v, inner_precise=0, **kw)
    assert loose[0, 0, 0].tolist() == pytest.approx([2.5] * 16)  # -1e12 fill: uniform mean of V (spec 7)
    assert loose[0, 0, 1].tolist() == pytest.approx([1.0] * 16)
    strict, _ = fia(q, k, v, inner_precise=2, **kw)
    assert torch.equal(strict[0, 0, 0], torch.zeros(16, dtype=F64))  # row-invalid correction
    assert strict[0, 0, 1].tolist() == pytest.approx([1.0] * 16)


def test_learnable_sink_by_hand(gen: torch.Generator) -> None:
    lens = [3, 2]
    q = torch.zeros(5, 2, 16, dtype=F64)
    k = rand(gen, 5, 2, 16)
    v = torch.arange(1, 6, dtype=F64)[:, None, None].expand(5, 2, 16).contiguous()
    sink = torch.tensor([math.log(2.0), 0.0], dtype=F64)
    out, _ = fia_v2(q, k, v, num_query_heads=2, input_layout="TND", actual_seq_qlen=[3, 5], actual_seq_kvlen=[3, 5],
                    learnable_sink=sink)
    # all scores 0: out = sum_j v_j / (L + exp(sink)), not scaled by softmax_scale (spec 13)
    assert out[:3, 0, 0].tolist() == pytest.approx([6 / 5] * 3)
    assert out[:3, 1, 0].tolist() == pytest.approx([6 / 4] * 3)
    assert out[3:, 0, 0].tolist() == pytest.approx([9 / 4] * 2)
    assert out[3:, 1, 0].tolist() == pytest.approx([9 / 3] * 2)
    # random scores, mode 3: p_j = exp(s_j) / (sum exp(s) + exp(sink))
    q = rand(gen, 5, 2, 16)
    out, _ = fia_v2(q, k, v, num_query_heads=2, input_layout="TND", actual_seq_qlen=[3, 5], actual_seq_kvlen=[3, 5],
                    learnable_sink=sink, softmax_scale=0.5, sparse_mode=3, atten_mask=compressed_causal_mask())
    for start, n in ((0, lens[0]), (3, lens[1])):
        s = 0.5 * torch.einsum("ihd,jhd->hij", q[start:start + n], k[start:start + n])
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
        w = s.exp() / (s.exp().sum(-1, keepdim=True) + sink.exp()[:, None, None])
        close(out[start:start + n], torch.einsum("hij,jhd->ihd", w, v[start:start + n]))


def test_shared_prefix_founding_example_small(gen: torch.Generator) -> None:
    # spec 1.4 at a small size: keys = prefix[:P] + kv[:L_kv]; rows past L_q are 0
    q, k, v = rand(gen, 1, 2, 6, 16), rand(gen, 1, 2, 10, 16), rand(gen, 1, 2, 10, 16)
    kp, vp = rand(gen, 1, 2, 8, 16), rand(gen, 1, 2, 8, 16)
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.25, pre_tokens=65535, next_tokens=65535,
                 actual_seq_lengths=[2], actual_seq_lengths_kv=[5], key_shared_prefix=kp, value_shared_prefix=vp,
                 actual_shared_prefix_len=torch.tensor([3]))
    keys = torch.cat([kp[:, :, :3], k[:, :, :5]], dim=2)
    values = torch.cat([vp[:, :, :3], v[:, :, :5]], dim=2)
    close(out[:, :, :2], sdpa(q[:, :, :2], keys, values, 0.25))
    assert torch.equal(out[:, :, 2:], torch.zeros(1, 2, 4, 16, dtype=F64))
    # mode 3 shifts by delta = P + L_kv - L_q, prefix included (spec 14)
    out3, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.25, sparse_mode=3,
                  atten_mask=compressed_causal_mask(), actual_seq_lengths=[4], actual_seq_lengths_kv=[2],
                  key_shared_prefix=kp, value_shared_prefix=vp, actual_shared_prefix_len=[1])
    keys, values = torch.cat([kp[:, :, :1], k[:, :, :2]], 2), torch.cat([vp[:, :, :1], v[:, :, :2]], 2)
    close(out3[:, :, :4], sdpa(q[:, :, :4], keys, values, 0.25, band(4, 3, -10**9, -1)))


def test_pse_added_after_scaling() -> None:
    q = torch.ones(1, 1, 1, 16, dtype=F64)
    k = torch.zeros(1, 1, 2, 16, dtype=F64)
    k[0, 0, 0] = 1.0  # q.k = (16, 0)
    v = counting_values(2)
    pse = torch.tensor([0.0, 4.0], dtype=F64).view(1, 1, 1, 2)
    out, _ = fia(q, k, v, num_heads=1, input_layout="BNSD", scale=0.5, pse_shift=pse)
    # scale*QK + pse = (8, 4); scale*(QK + pse) would be (8, 2)
    w0 = 1 / (1 + math.exp(4 - 8))
    assert out[0, 0, 0, 0].item() == pytest.approx(w0 * 1 + (1 - w0) * 2, abs=1e-12)
    wrong = 1 / (1 + math.exp(2 - 8))
    assert out[0, 0, 0, 0].item() != pytest.approx(wrong * 1 + (1 - wrong) * 2, abs=1e-6)


@pytest.mark.parametrize("d, n_q, n_kv, s_q", [(128, 2, 2, 4), (512, 4, 1, 1), (512, 2, 1, 3)])
def test_mla_rope_concatenates_scores(d: int, n_q: int, n_kv: int, s_q: int, gen: torch.Generator) -> None:
    s_kv = 6
    q, k, v = rand(gen, 1, n_q, s_q, d), rand(gen, 1, n_kv, s_kv, d), rand(gen, 1, n_kv, s_kv, d)
    qr, kr = rand(gen, 1, n_q, s_q, 64), rand(gen, 1, n_kv, s_kv, 64)
    scale = (d + 64) ** -0.5
    out, _ = fia_v2(q, k, v, query_rope=qr, key_rope=kr, num_query_heads=n_q, num_key_value_heads=n_kv,
                    input_layout="BNSD", softmax_scale=scale)
    # scores = scale * (q.k + q_rope.k_rope); values without rope (spec 12)
    expected = sdpa(torch.cat([q, qr], -1), torch.cat([k, kr], -1), v, scale)
    assert out.shape == (1, n_q, s_q, d)
    close(out, expected)


def test_decode_ignores_sparse_mode_pre_next_and_query_lengths(gen: torch.Generator) -> None:
    q, k, v = rand(gen, 2, 2, 1, 16), rand(gen, 2, 2, 6, 16), rand(gen, 2, 2, 6, 16)
    lkv = [6, 4]
    vis = torch.stack([torch.arange(6) < n for n in lkv])[:, None, :]
    expected = sdpa(q, k, v, 0.3, vis)
    for kw in (dict(sparse_mode=2, atten_mask=compressed_causal_mask()),
               dict(sparse_mode=4, pre_tokens=0, next_tokens=0, atten_mask=compressed_causal_mask()),
               dict(actual_seq_lengths=[0, 0]),
               dict(pre_tokens=0, next_tokens=0)):
        out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.3, actual_seq_lengths_kv=lkv, **kw)
        close(out, expected)
    # the explicit decode mask (B, S_kv) still applies
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 0] = True
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.3, actual_seq_lengths_kv=lkv, atten_mask=mask)
    close(out, sdpa(q, k, v, 0.3, vis & ~mask[:, None]))
