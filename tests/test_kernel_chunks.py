"""The tile loop reading keys chunk by chunk, and the probabilities figures read: against float64 goldens.

``fia_kit.kernel.CHUNK_KEYS`` is made small here so a paged cache is read over several chunks (and a block cut by
L_kv), which the other tests' short sequences never need. Goldens are written from the dense tensors by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fia_kit
from fia_kit import kernel, quant
from fia_kit.masks import compressed_causal_mask
from fia_kit.planning import plan as make_plan
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as kernel_fia_v2

F64 = torch.float64
BS = 16  # block size (the op takes multiples of 16)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "CHUNK_KEYS", 2 * BS)  # two blocks per chunk


def golden(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, vis: torch.Tensor,
           sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 output and probabilities of (B, N, S, D) tensors; vis (B, S_q, S_kv) True = attend; GQA by repeat."""
    g = q.shape[1] // k.shape[1]
    k, v = k.to(F64).repeat_interleave(g, 1), v.to(F64).repeat_interleave(g, 1)
    s = (scale * q.to(F64) @ k.transpose(-1, -2)).masked_fill(~vis[:, None], -math.inf)
    m = s.amax(-1, keepdim=True).clamp(min=-1e300)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    if sink is not None:
        total = total + torch.exp(sink.to(F64).view(1, -1, 1, 1) - m)
    p = torch.where(total > 0, e / total, torch.zeros_like(e))
    return p @ v, p


def scatter_paged(x: torch.Tensor, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (B, N_kv, S, D) into a shuffled cache whose unused slots hold NaN (never to be read)."""
    b, n, s, d = x.shape
    per_seq = -(-s // BS)
    ids = torch.randperm(b * per_seq + 2, generator=gen)[: b * per_seq].view(b, per_seq)
    store = torch.full((b * per_seq + 2, n, BS, d), math.nan, dtype=x.dtype)
    for bi in range(b):
        for blk in range(per_seq):
            part = x[bi, :, blk * BS:(blk + 1) * BS]
            store[ids[bi, blk], :, :part.shape[1]] = part
    if rank == 3:
        store = store.transpose(1, 2).reshape(store.shape[0], BS, n * d)
    elif rank == 5:
        store = store.view(store.shape[0], n, BS, d // 16, 16).permute(0, 1, 3, 2, 4).contiguous()
    return store, ids.to(torch.int32)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("s_q", [1, 5])
def test_paged_cache_over_many_chunks(rank: int, s_q: int, gen: torch.Generator) -> None:
    lkv, n_q, n_kv, d = [87, 37], 4, 2, 32  # 87: six blocks, the last cut; chunks of two blocks
    q = torch.randn(2, n_q, s_q, d, generator=gen, dtype=F64)
    k, v = (torch.randn(2, n_kv, 96, d, generator=gen, dtype=F64) for _ in range(2))
    for bi, n in enumerate(lkv):
        k[bi, :, n:], v[bi, :, n:] = math.nan, math.nan
    kc, table = scatter_paged(k, rank, torch.Generator().manual_seed(3))
    vc, _ = scatter_paged(v, rank, torch.Generator().manual_seed(3))
    causal = dict(sparse_mode=3, atten_mask=compressed_causal_mask()) if s_q > 1 else {}
    out, lse = fia(q, kc, vc, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.3,
                   block_table=table, block_size=BS, actual_seq_lengths_kv=lkv, softmax_lse_flag=True, **causal)
    vis = torch.zeros(2, s_q, 96, dtype=torch.bool)
    for bi, n in enumerate(lkv):
        i, j = torch.arange(s_q)[:, None], torch.arange(n)[None, :]
        vis[bi, :, :n] = (j - i <= n - s_q) if s_q > 1 else True
    expected, _ = golden(q, k.nan_to_num(0.0), v.nan_to_num(0.0), 0.3, vis)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    s = 0.3 * q @ k.nan_to_num(0.0).repeat_interleave(2, 1).transpose(-1, -2)
    torch.testing.assert_close(lse[..., 0], torch.logsumexp(s.masked_fill(~vis[:, None], -math.inf), -1))


@pytest.mark.parametrize("rank", [3, 4])
def test_paged_band_starting_inside_a_block(rank: int, gen: torch.Generator) -> None:
    """sparse_mode 4, pre 20: rows see keys [i + d - 20, i + d] (d = L_kv - L_q), from the middle of a block on;
    the float cache is read in place (block views); probabilities of one kv head's query heads, then all heads."""
    lkv, s_q, n_q, n_kv, d = 87, 2, 4, 2, 32
    q = torch.randn(1, n_q, s_q, d, generator=gen, dtype=F64)
    k, v = (torch.randn(1, n_kv, 96, d, generator=gen, dtype=F64) for _ in range(2))
    k[:, :, lkv:], v[:, :, lkv:] = math.nan, math.nan
    kc, table = scatter_paged(k, rank, torch.Generator().manual_seed(5))
    vc, _ = scatter_paged(v, rank, torch.Generator().manual_seed(5))
    problem = make_plan("v1", q, kc, vc, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.3,
                        block_table=table, block_size=BS, actual_seq_lengths_kv=[lkv], sparse_mode=4,
                        pre_tokens=20, next_tokens=0, atten_mask=compressed_causal_mask())
    i, j = torch.arange(s_q)[:, None], torch.arange(96)[None, :]
    delta = lkv - s_q
    vis = ((j >= i + delta - 20) & (j <= i + delta))[None]
    expected, p = golden(q, k.nan_to_num(0.0), v.nan_to_num(0.0), 0.3, vis)
    torch.testing.assert_close(kernel.batch_probabilities(problem, 0, [3, 2])[..., :lkv], p[0, [3, 2], :, :lkv])
    out = kernel.run_plan(problem).attention_out
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", [4, 5])
def test_paged_per_token_scales_follow_the_chunks(mode: int, gen: torch.Generator) -> None:
    d, lens, blocks = 16, [83, 22], 10
    table = torch.tensor([[7, 2, 9, 0, 4, 5], [3, 1, 8, 6, 6, 6]], dtype=torch.int32)
    kc, vc = (torch.randint(-128, 128, (blocks, 1, BS, d), generator=gen, dtype=torch.int8) for _ in range(2))
    ks, vs = (torch.rand(blocks, 1, BS, generator=gen) + 0.1 for _ in range(2))
    shape = (blocks, BS) if mode == 4 else (blocks, 1, BS)
    q = torch.randn(2, 2, 1, d, generator=gen)
    out, _ = fia(q, kc, vc, num_heads=2, num_key_value_heads=1, input_layout="BNSD", scale=0.05,
                 block_table=table, block_size=BS, actual_seq_lengths_kv=lens,
                 key_antiquant_scale=ks.reshape(shape), value_antiquant_scale=vs.reshape(shape),
                 key_antiquant_mode=mode, value_antiquant_mode=mode)
    for bi, n in enumerate(lens):
        rows = torch.cat([torch.arange(BS) + BS * int(t) for t in table[bi]])[:n]
        kf = (ks.reshape(-1, 1)[rows] * kc.reshape(-1, d)[rows].double()).view(1, 1, n, d)
        vf = (vs.reshape(-1, 1)[rows] * vc.reshape(-1, d)[rows].double()).view(1, 1, n, d)
        expected, _ = golden(q[bi:bi + 1], kf, vf, 0.05, torch.ones(1, 1, n, dtype=torch.bool))
        torch.testing.assert_close(out[bi:bi + 1].double(), expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------ probabilities

def causal_case(gen: torch.Generator, s: int = 37, n_q: int = 4, n_kv: int = 2, d: int = 16):
    """A causal GQA call with learnable sinks (v2, TND: one sequence of s tokens) and its dense golden inputs."""
    q = torch.randn(1, n_q, s, d, generator=gen, dtype=F64)
    k, v = (torch.randn(1, n_kv, s, d, generator=gen, dtype=F64) for _ in range(2))
    sink = torch.randn(n_q, generator=gen, dtype=F64)
    tnd = [x[0].transpose(0, 1).contiguous() for x in (q, k, v)]
    problem = make_plan("v2", *tnd, num_query_heads=n_q, num_key_value_heads=n_kv, input_layout="TND",
                        softmax_scale=0.3, sparse_mode=3, atten_mask=compressed_causal_mask(), learnable_sink=sink,
                        actual_seq_qlen=[s], actual_seq_kvlen=[s])
    vis = torch.ones(s, s, dtype=torch.bool).tril()[None]
    return problem, golden(q, k, v, 0.3, vis, sink)[1]


def test_probabilities_match_a_dense_softmax(gen: torch.Generator) -> None:
    problem, p = causal_case(gen)
    heads = [3, 1]
    torch.testing.assert_close(kernel.batch_probabilities(problem, 0, heads), p[0, heads])


@pytest.mark.parametrize("sample_rows", [False, True])
def test_pooled_probabilities_are_the_block_maxima(sample_rows: bool, gen: torch.Generator) -> None:
    problem, p = causal_case(gen)
    pooled = kernel.pooled_probabilities(problem, 0, [2, 3], max_cells=8, sample_rows=sample_rows)
    rs, cs = pooled.row_block, pooled.col_block
    assert (rs, cs) == (5, 5) and pooled.values.shape == (2, 8, 8) and pooled.sampled_rows == sample_rows
    dense = p[0, [2, 3]]
    if sample_rows:
        dense = dense[:, ::rs]
        rs = 1
    padded = F.pad(dense, (0, 40 - 37, 0, (-dense.shape[1]) % rs), value=-1.0)
    expected = padded.view(2, padded.shape[1] // rs, rs, 8, cs).amax(dim=(2, 4))
    torch.testing.assert_close(pooled.values, expected)


def test_fully_masked_rows_are_uniform_or_zero(gen: torch.Generator) -> None:
    """Row 1 has every key hidden: uniform over its in-band keys with inner_precise 0, zero with 2 (spec 7)."""
    q, k, v = (torch.randn(1, 1, 3, 8, generator=gen, dtype=F64) for _ in range(3))
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 1, :] = True
    for precise, row in ((0, [1 / 3] * 3), (2, [0.0] * 3)):
        problem = make_plan("v1", q, k, v, num_heads=1, input_layout="BNSD", atten_mask=mask, inner_precise=precise)
        probs = kernel.batch_probabilities(problem, 0)
        torch.testing.assert_close(probs[0, 1], torch.tensor(row, dtype=F64))
        assert kernel.batch_row_status(problem, 0).tolist() == [1, 3, 1]


def test_row_status_without_attention_by_hand() -> None:
    """Mode 4 with pre=0, next=0 on L_q=3, L_kv=2: row i sees key i only; row 2 has none (out of band)."""
    q, k, v = torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8)
    problem = make_plan("v1", q, k, v, num_heads=1, input_layout="BNSD", sparse_mode=4, pre_tokens=0,
                        next_tokens=0, atten_mask=compressed_causal_mask())
    # delta = L_kv - L_q = -1: row i sees key i - 1
    assert kernel.batch_row_status(problem, 0).tolist() == [2, 1, 1]


def test_int8_full_quant_uses_the_row_max_over_all_keys(gen: torch.Generator) -> None:
    """v1 full quant reads every key as one row: P is quantised against the max over all keys (spec 16.2)."""
    q = torch.randint(-20, 20, (1, 1, 2, 16), generator=gen, dtype=torch.int8)
    k, v = (torch.randint(-20, 20, (1, 1, 24, 16), generator=gen, dtype=torch.int8) for _ in range(2))
    out, _ = fia(q, k, v, num_heads=1, input_layout="BNSD", scale=1.0, dequant_scale1=torch.tensor([0.01]),
                 quant_scale1=torch.tensor([127.0]), dequant_scale2=torch.tensor([1 / 127]))
    s = 0.01 * (q.double() @ k.double().transpose(-1, -2))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    p8 = quant.saturate_round(e * 127.0, (-128, 127))
    expected = (p8 @ v.double()) / 127 / e.sum(-1, keepdim=True)
    assert out.dtype == torch.float16  # int8 full quantisation writes float16 (spec 16.2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("sample_rows", [False, True])
def test_pooled_probabilities_with_user_mask_and_pse(sample_rows: bool, gen: torch.Generator) -> None:
    s, n = 37, 2
    q, k, v = (torch.randn(1, n, s, 16, generator=gen, dtype=F64) for _ in range(3))
    pse = torch.randn(1, n, s, s, generator=gen, dtype=F64)
    hide = torch.rand(1, 1, s, s, generator=gen) < 0.5
    hide[..., torch.arange(s), torch.arange(s)] = False  # every row keeps a key
    problem = make_plan("v1", q, k, v, num_heads=n, input_layout="BNSD", scale=0.3, atten_mask=hide, pse_shift=pse)
    scores = (0.3 * q @ k.transpose(-1, -2) + pse).masked_fill(hide[:, 0][:, None], -math.inf)
    p = torch.softmax(scores, -1)[0]
    pooled = kernel.pooled_probabilities(problem, 0, [1, 0], max_cells=8, sample_rows=sample_rows)
    rs, cs = pooled.row_block, pooled.col_block
    dense = p[[1, 0]]
    if sample_rows:
        dense, rs = dense[:, ::rs], 1
    padded = F.pad(dense, (0, 40 - s, 0, (-dense.shape[1]) % rs), value=-1.0)
    expected = padded.view(2, padded.shape[1] // rs, rs, 8, cs).amax(dim=(2, 4))
    torch.testing.assert_close(pooled.values, expected)


# --------------------------------------------------------------------------- kv-head groups, converted paged caches

@pytest.mark.parametrize("score_bytes", [1, 2**40])  # one kv head per group / every kv head in one group
def test_head_groups_with_band_pse_and_gqa(score_bytes: int, gen: torch.Generator,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 4 (pre 20, next 3) on 37 x 53 with pse, 6 query / 3 kv heads, row tiles of 16 cut by the band on both
    sides: the same float64 golden whichever way the kv heads are grouped."""
    monkeypatch.setattr(kernel, "SCORE_BYTES", score_bytes)
    monkeypatch.setattr(kernel, "TILE_ROWS", 16)
    s_q, s_kv, n_q, n_kv, d = 37, 53, 6, 3, 16
    q = torch.randn(1, n_q, s_q, d, generator=gen, dtype=F64)
    k, v = (torch.randn(1, n_kv, s_kv, d, generator=gen, dtype=F64) for _ in range(2))
    pse = torch.randn(1, n_q, s_q, s_kv, generator=gen, dtype=F64)
    out, lse = fia(q, k, v, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.3, pse_shift=pse,
                   sparse_mode=4, pre_tokens=20, next_tokens=3, atten_mask=compressed_causal_mask(),
                   softmax_lse_flag=True)
    i, j = torch.arange(s_q)[:, None], torch.arange(s_kv)[None, :]
    delta = s_kv - s_q
    vis = (j - i >= delta - 20) & (j - i <= delta + 3)
    s = (0.3 * q @ k.repeat_interleave(2, 1).transpose(-1, -2) + pse).masked_fill(~vis, -math.inf)
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v.repeat_interleave(2, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse[..., 0], torch.logsumexp(s, -1), rtol=1e-12, atol=1e-12)


def test_head_groups_with_sinks_and_a_user_mask(gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """v2 TND with learnable sinks and a random user mask (one row fully hidden), one kv head per group."""
    monkeypatch.setattr(kernel, "SCORE_BYTES", 1)
    s, n_q, n_kv, d = 29, 4, 2, 16
    q = torch.randn(1, n_q, s, d, generator=gen, dtype=F64)
    k, v = (torch.randn(1, n_kv, s, d, generator=gen, dtype=F64) for _ in range(2))
    sink = torch.randn(n_q, generator=gen, dtype=F64)
    hide = torch.rand(1, 1, s, s, generator=gen) < 0.4
    hide[..., torch.arange(s), torch.arange(s)] = False
    hide[..., 5, :] = True  # inner_precise 0: a fully hidden row is uniform over its keys (spec 7)
    tnd = [x[0].transpose(0, 1).contiguous() for x in (q, k, v)]
    # On A2/A3 this GQA TND call (D 16, sparse_mode 0 with a mask) takes the split-fuse route, which refuses a
    # mask with sparse_mode 0 (ops-transformer fused_infer_attention_score_tiling.cpp:1351); Ascend950 takes it.
    with fia_kit.target(product="Ascend950"):
        out, _ = kernel_fia_v2(*tnd, num_query_heads=n_q, num_key_value_heads=n_kv, input_layout="TND",
                               softmax_scale=0.3, atten_mask=hide[:, 0], learnable_sink=sink, actual_seq_qlen=[s],
                               actual_seq_kvlen=[s])
    s_ = (0.3 * q @ k.repeat_interleave(2, 1).transpose(-1, -2)).masked_fill(hide[:, 0][:, None], -1e12)
    m = s_.amax(-1, keepdim=True)
    e = torch.exp(s_ - m)
    p = e / (e.sum(-1, keepdim=True) + torch.exp(sink.view(1, -1, 1, 1) - m))
    expected = (p @ v.repeat_interleave(2, 1))[0].transpose(0, 1)  # (T, N_q, Dv)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("s_q", [1, 5])
def test_converted_paged_cache_over_many_chunks(cache_dtype: torch.dtype, rank: int, s_q: int,
                                                gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache not in the compute dtype is converted block by block (``paged.read_blocks``), one kv head per group;
    L_kv cuts the last block; float64 compute, so the golden is exact."""
    monkeypatch.setattr(kernel, "SCORE_BYTES", 1)
    lkv, n_q, n_kv, d = [87, 37], 4, 2, 32
    q = torch.randn(2, n_q, s_q, d, generator=gen).to(cache_dtype)
    k, v = (torch.randn(2, n_kv, 96, d, generator=gen).to(cache_dtype) for _ in range(2))
    for bi, n in enumerate(lkv):
        k[bi, :, n:], v[bi, :, n:] = math.nan, math.nan
    kc, table = scatter_paged(k, rank, torch.Generator().manual_seed(3))
    vc, _ = scatter_paged(v, rank, torch.Generator().manual_seed(3))
    causal = dict(sparse_mode=3, atten_mask=compressed_causal_mask()) if s_q > 1 else {}
    problem = make_plan("v1", q, kc, vc, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.3,
                        block_table=table, block_size=BS, actual_seq_lengths_kv=lkv, **causal)
    vis = torch.zeros(2, s_q, 96, dtype=torch.bool)
    for bi, n in enumerate(lkv):
        i, j = torch.arange(s_q)[:, None], torch.arange(n)[None, :]
        vis[bi, :, :n] = (j - i <= n - s_q) if s_q > 1 else True
    expected, _ = golden(q, k.nan_to_num(0.0), v.nan_to_num(0.0), 0.3, vis)
    with kernel.compute_dtype(F64):
        for bi in range(2):
            out, _, _ = kernel.attend_batch(problem, bi)
            torch.testing.assert_close(out, expected[bi], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float32])
def test_converted_paged_band_starting_inside_a_block(cache_dtype: torch.dtype, gen: torch.Generator) -> None:
    """Mode 4 (pre 20): rows see keys from the middle of a block to the middle of another (partial blocks at both
    ends of a converted chunk); float64 compute."""
    lkv, s_q, n_q, n_kv, d = 87, 2, 4, 2, 32
    q = torch.randn(1, n_q, s_q, d, generator=gen).to(cache_dtype)
    k, v = (torch.randn(1, n_kv, 96, d, generator=gen).to(cache_dtype) for _ in range(2))
    kc, table = scatter_paged(k, 4, torch.Generator().manual_seed(5))
    vc, _ = scatter_paged(v, 4, torch.Generator().manual_seed(5))
    problem = make_plan("v1", q, kc, vc, num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD", scale=0.3,
                        block_table=table, block_size=BS, actual_seq_lengths_kv=[lkv], sparse_mode=4,
                        pre_tokens=20, next_tokens=0, atten_mask=compressed_causal_mask())
    i, j = torch.arange(s_q)[:, None], torch.arange(96)[None, :]
    delta = lkv - s_q
    expected, _ = golden(q, k, v, 0.3, ((j >= i + delta - 20) & (j <= i + delta))[None])
    with kernel.compute_dtype(F64):
        out, _, _ = kernel.attend_batch(problem, 0)
    torch.testing.assert_close(out, expected[0], rtol=1e-12, atol=1e-12)


def test_a_key_outside_the_band_never_reaches_a_row_even_as_nan(gen: torch.Generator) -> None:
    """Causal: the last key is NaN; its score is replaced by -inf for every row but the last (not added to: that
    would leave NaN), so those rows are exact, and the last row, which sees it, is NaN. Validation refuses a NaN
    where a call reads (fia_kit.finite), so the NaN is written into the validated plan's key view afterwards: what
    is under test is the kernel's masking."""
    s, d = 40, 16
    q, k, v = (torch.randn(1, 2, s, d, generator=gen) for _ in range(3))
    problem = make_plan("v1", q, k, v, num_heads=2, input_layout="BNSD", scale=0.25, sparse_mode=3,
                        atten_mask=compressed_causal_mask())
    k[..., -1, :] = math.nan  # problem.key is a view of k
    out = kernel.run_plan(problem).attention_out
    expected = F.scaled_dot_product_attention(q[..., :-1, :].double(), k[..., :-1, :].double(),
                                              v[..., :-1, :].double(), is_causal=True, scale=0.25)
    torch.testing.assert_close(out[..., :-1, :].double(), expected, rtol=2e-6, atol=2e-6)
    assert out[..., -1, :].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponentials_are_exp2_of_the_shifted_base2_scores(dtype: torch.dtype) -> None:
    """Given base-2 scores t = s * log2(e), the numerators equal 2^(t - m) = exp(s - s_max) (float64 goldens) within
    2 ulp relative wherever that is a normal number, are exactly 0 for masked keys (-inf, -1e12 * log2(e)), and a
    NaN stays NaN; m and the sums as written."""
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    s = torch.tensor([[0.0, -1.0, -20.0, -80.0, -87.2, -100.0, -800.0, -1e12, -math.inf, -700.0],
                      [3.0, math.nan, 1.0, -1.0, -math.inf, -math.inf, 0.5, 2.0, -5.0, -9.0]], dtype=torch.float64)
    t = (s * kernel.LOG2_E).to(dtype)
    row_max, total = t.new_empty(2, 1), t.new_empty(2, 1)
    e = kernel._exponentials(t.clone(), row_max, total)
    exact = torch.exp2(t.double())  # a NaN row's max is NaN, written as 0; row 0's max is 0
    normal = exact > tiny
    bound = 2 * eps * exact
    assert ((e[0].double() - exact[0]).abs() <= bound[0])[normal[0]].all(), (e[0], exact[0])
    assert torch.allclose(exact[0, :4], torch.exp(s[0, :4]), rtol=1e-6)  # base 2 is exp of the natural scores
    assert e[0, 7] == 0 and e[0, 8] == 0
    assert ((e[1].double() - exact[1]).abs() <= bound[1])[[0, 2, 3, 6, 7, 8, 9]].all()
    assert e[1, 1].isnan() and (e[1, [4, 5]] == 0).all()
    assert row_max[0, 0] == 0 and row_max[1, 0] == 0 and total[0, 0] == e[0].sum()
