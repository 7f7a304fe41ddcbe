"""Builders and cases: exact round trips, hand-worked masks, every built call accepted and equal to SDPA."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fia_kit
from fia_kit import builders
from fia_kit.case import Case
from fia_kit.errors import FIAArgumentError
from fia_kit.signatures import FORMS

UNPACKED = ["BSH", "BSND", "BNSD", "NBSD"]
LAYOUTS = ["BSH", "BSND", "BNSD", "BNSD_BSND", "BSH_BNSD", "BSND_BNSD", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD",
           "TND", "NTD", "TND_NTD", "NTD_TND"]


@pytest.mark.parametrize("source,target", list(itertools.permutations(UNPACKED, 2)))
def test_layout_round_trip_is_exact(source, target):
    x4 = torch.randn(2, 3, 5, 4)
    x = fia_kit.layouts.from_canonical(x4, source)
    there = builders.convert_layout(x, source, target, num_heads=3)
    assert torch.equal(builders.convert_layout(there, target, source, num_heads=3), x)


@pytest.mark.parametrize("part", ["TND", "NTD"])
def test_pack_unpack_round_trip(part):
    seqs = [torch.randn(3, n, 4) for n in (2, 0, 5)]
    packed, cum = builders.pack_sequences(seqs, part)
    assert cum == [2, 2, 7]
    assert packed.shape == ((7, 3, 4) if part == "TND" else (3, 7, 4))
    assert all(torch.equal(a, b) for a, b in zip(builders.unpack_sequences(packed, cum, part), seqs, strict=True))
    assert builders.per_batch(cum) == [2, 0, 5]


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_paged_round_trip_is_exact(rank):
    seqs = [torch.randn(2, n, 16, dtype=torch.float16) for n in (5, 33, 0, 16)]
    cache, table = builders.to_paged(seqs, 16, rank, extra_blocks=2, generator=torch.Generator().manual_seed(1))
    assert table.dtype == torch.int32 and table.shape == (4, 3)
    expected_shape = {3: (7, 16, 32), 4: (7, 2, 16, 16), 5: (7, 2, 1, 16, 16)}[rank]
    assert tuple(cache.shape) == expected_shape
    back = builders.from_paged(cache, table, [5, 33, 0, 16], num_kv_heads=2)
    assert all(torch.equal(a, b) for a, b in zip(back, seqs, strict=True))


def test_masks_match_hand_worked_grids():
    # S_q=4, S_kv=6, right-down causal: query i sees keys 0..i+2 (1 = masked)
    assert builders.causal_mask(4, 6).int().tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0]]
    assert builders.causal_mask(4, 6, align="left-up").int().tolist() == [
        [0, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1]]
    # band pre=1 next=0, right-down: query i sees keys i+1 and i+2
    assert builders.band_mask(4, 6, pre_tokens=1, next_tokens=0).int().tolist() == [
        [1, 0, 0, 1, 1, 1],
        [1, 1, 0, 0, 1, 1],
        [1, 1, 1, 0, 0, 1],
        [1, 1, 1, 1, 0, 0]]
    assert builders.padding_mask([1, 2], [2, 3], 2, 3).int().tolist() == [
        [[[0, 0, 1], [1, 1, 1]]],
        [[[0, 0, 0], [0, 0, 0]]]]
    even = builders.custom_mask(lambda i, j: (j % 2) == 0, 2, 3)
    assert even.int().tolist() == [[0, 1, 0], [0, 1, 0]]


def _sdpa_rows(case: Case) -> list[torch.Tensor]:
    """Each batch's valid output rows (N_q, L_q, Dv), by SDPA on the BNSD build of the same seeded case."""
    built = case.replace(layout="BNSD", paged=False).build("v1")
    out = []
    for b, (lq, lk) in enumerate(zip(case.q_lens, case.kv_lens, strict=True)):
        q = built.query[b:b + 1, :, :lq].double()
        k = built.key[b:b + 1, :, :lk].double()
        v = built.value[b:b + 1, :, :lk].double()
        visible = ~builders.causal_mask(lq, lk) if case.sparse_mode == 3 else None
        out.append(F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=case.softmax_scale,
                                                  enable_gqa=True)[0])
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("paged", [False, True])
def test_case_in_every_layout_gives_sdpa(layout, paged):
    case = Case(q_lens=(3, 5), kv_lens=(7, 5), heads=4, kv_heads=2, dtype=torch.float64, layout=layout,
                sparse_mode=3, paged=paged, block_size=16)
    built = case.build("v1")
    out, _ = built.call(fia_kit.npu_fused_infer_attention_score)
    problem = fia_kit.reference.explain("v1", built.query, built.key, built.value, **built.kwargs)
    canonical = fia_kit.layouts.to_canonical(out, problem.layout.out, case.heads)
    for plan, expected in zip(problem.batches, _sdpa_rows(case), strict=True):
        got = canonical[plan.q_index, :, plan.q_start:plan.q_start + plan.q_len]
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


GRID = list(itertools.product(["BSH", "BNSD", "BSND_BNSD", "TND", "NTD_TND"], [0, 1, 2, 3, 4], [None, 3, 4, 5],
                              FORMS))


def _per_batch(x: torch.Tensor, part: str, b: int, length: int, cum: list[int], heads: int) -> torch.Tensor:
    """(N, length, D) float64 rows of batch b of a tensor in layout ``part``, by plain views and permutes."""
    if part == "BSH":
        x = x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)[b]
    elif part == "BSND":
        x = x.permute(0, 2, 1, 3)[b]
    elif part == "BNSD":
        x = x[b]
    else:  # TND / NTD: rows cum[b-1]..cum[b]
        x = (x if part == "NTD" else x.permute(1, 0, 2))[:, (cum[b - 1] if b else 0):cum[b]]
    return x[:, :length].double()


def _gathered(cache: torch.Tensor, table: torch.Tensor, b: int, length: int, heads: int) -> torch.Tensor:
    """(N, length, D) float64 keys of batch b from a paged cache of rank 3, 4 or 5 (NZ), by its block table."""
    if cache.dim() == 3:  # (blocks, bs, N*D)
        blocks = cache.view(cache.shape[0], cache.shape[1], heads, -1).permute(0, 2, 1, 3)
    elif cache.dim() == 4:  # (blocks, N, bs, D)
        blocks = cache
    else:  # NZ (blocks, N, D / c, bs, c)
        blocks = cache.permute(0, 1, 3, 2, 4).reshape(cache.shape[0], cache.shape[1], cache.shape[3], -1)
    bs = blocks.shape[2]
    return torch.cat([blocks[int(i)] for i in table[b, :-(-length // bs)]], dim=1)[:, :length].double()


def _band_visible(mode: int, lq: int, keys: int, pre: int, nxt: int) -> torch.Tensor:
    """(lq, keys) bool: the keys each row sees in sparse_mode ``mode`` without an element-wise mask (spec 6.3)."""
    i, j = torch.arange(lq).view(-1, 1), torch.arange(keys).view(1, -1)
    delta = keys - lq
    if mode in (0, 1):
        return torch.ones(lq, keys, dtype=torch.bool)
    if mode == 2:
        return j <= i
    if mode == 3:
        return j <= i + delta
    return (j - i >= delta - pre) & (j - i <= delta + nxt)


def _golden_outputs(case: Case, built) -> list[torch.Tensor]:
    """Per batch (N_q, L_q, Dv) float64, written from the case's intent (spec 3, 6, 11, 13, 14)."""
    kw = built.kwargs
    in_part = case.layout.split("_")[0]
    q_cum = list(itertools.accumulate(case.q_lens))
    kv_cum = list(itertools.accumulate(case.kv_lens))
    group = case.heads // case.kv_heads
    sink = kw.get("learnable_sink")
    outs = []
    for b, (lq, lk) in enumerate(zip(case.q_lens, case.kv_lens, strict=True)):
        q = _per_batch(built.query, in_part, b, lq, q_cum, case.heads)
        if case.paged:
            k = _gathered(built.key, kw["block_table"], b, lk, case.kv_heads)
            v = _gathered(built.value, kw["block_table"], b, lk, case.kv_heads)
        else:
            k = _per_batch(built.key, in_part, b, lk, kv_cum, case.kv_heads)
            v = _per_batch(built.value, in_part, b, lk, kv_cum, case.kv_heads)
        if case.prefix_len:
            k = torch.cat([_per_batch(kw["key_shared_prefix"], in_part, 0, case.prefix_len, [], case.kv_heads), k], 1)
            v = torch.cat([_per_batch(kw["value_shared_prefix"], in_part, 0, case.prefix_len, [], case.kv_heads), v],
                          1)
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = torch.einsum("nid,njd->nij", q, k) * case.softmax_scale
        visible = _band_visible(case.sparse_mode, lq, k.shape[1], case.pre_tokens, case.next_tokens)
        scores = scores.masked_fill(~visible, float("-inf"))
        if sink is not None:
            scores = torch.cat([scores, sink.double().view(-1, 1, 1).expand(-1, lq, 1)], dim=-1)
        probs = scores.softmax(-1)[..., :k.shape[1]]
        out = torch.einsum("nij,njd->nid", probs.nan_to_num(0.0), v)
        outs.append(out.masked_fill(~visible.any(-1).view(1, -1, 1), 0.0))  # rows without a key are 0
    return outs


@pytest.mark.parametrize("layout,mode,rank,form", GRID)
def test_every_built_call_is_accepted(layout, mode, rank, form):
    case = Case(layout=layout, sparse_mode=mode, paged=rank is not None, cache_rank=rank or 4,
                pre_tokens=4 if mode == 4 else 2147483647, next_tokens=1 if mode == 4 else 2147483647,
                sinks=form.endswith("v2") and layout in ("TND", "NTD_TND"),
                prefix_len=2 if form.endswith("v1") and rank is None and layout in ("BSH", "BNSD") else 0,
                dtype=torch.float64)
    built = case.build(form)
    if form.startswith("torchair"):
        lengths = [v for k, v in built.kwargs.items() if k.startswith("actual_")]
        assert lengths and all(t.dtype == torch.int64 for t in lengths)
    fn = fia_kit.npu_fused_infer_attention_score_v2 if form.endswith("v2") else fia_kit.npu_fused_infer_attention_score
    out, lse = built.call(fn)
    assert lse.dtype == torch.float64  # float64 inputs: a float64 golden of the reference itself
    out_part = case.layout.split("_")[-1]
    q_cum = list(itertools.accumulate(case.q_lens))
    for b, expected in enumerate(_golden_outputs(case, built)):
        got = _per_batch(out, out_part, b, case.q_lens[b], q_cum, case.heads)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_padding_holds_garbage_not_zeros():
    built = Case(q_lens=(2,), kv_lens=(3,), q_seq=4, kv_seq=5, layout="BNSD").build("v1")
    assert (built.key[0, :, 3:] == 1000).all() and (built.query[0, :, 2:] == 1000).all()


def test_describe_lists_every_argument():
    text = Case(paged=True, sparse_mode=3).describe()
    for name in ("query", "key", "value", "block_table", "atten_mask", "actual_seq_lengths_kv", "block_size"):
        assert name in text
    assert "int32" in text


@pytest.mark.parametrize("changes,parameter", [
    (dict(q_lens=(1, 2), kv_lens=(3,)), "q_lens + kv_lens"),
    (dict(q_lens=(-1,), kv_lens=(2,)), "q_lens + kv_lens"),
    (dict(heads=4, kv_heads=3), "kv_heads"),
    (dict(q_seq=2, q_lens=(5,), kv_lens=(5,)), "q_seq"),
    (dict(kv_seq=2, q_lens=(5,), kv_lens=(5,)), "kv_seq"),
    (dict(mask="triangle"), "mask"),
    (dict(rope_dim=32), "rope_dim"),
    (dict(layout="BHSD"), "input_layout"),
])
def test_impossible_intents_are_rejected(changes, parameter):
    with pytest.raises(FIAArgumentError) as info:
        Case(**changes)
    assert info.value.parameter == parameter


def test_form_rules_are_explained():
    with pytest.raises(FIAArgumentError, match="v2 has no shared prefix"):
        Case(prefix_len=2).build("v2")
    with pytest.raises(FIAArgumentError, match="v2-only"):
        Case(layout="TND", sinks=True).build("v1")
    with pytest.raises(FIAArgumentError) as info:
        builders.to_paged([torch.randn(1, 3, 4)], 0)
    assert info.value.parameter == "block_size"
