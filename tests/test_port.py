"""fia_kit.port: every translation against an independent float64 golden (SDPA / flex run on the CPU, or the
CUDA libraries' written contracts), each porting trap's naive translation shown to differ, untranslatable features
refused by name, and the reverse (to_sdpa / to_flex) against the FIA reference."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import fia_kit
from fia_kit import FIAArgumentError, port
from fia_kit.masks import compressed_causal_mask
from fia_kit.port import contracts
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _rand(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _qkv(q_shape, kv_shape, dtype=torch.float64, v_dim=None):
    v_shape = (*kv_shape[:-1], v_dim or kv_shape[-1])
    return _rand(*q_shape, dtype=dtype, seed=1), _rand(*kv_shape, dtype=dtype, seed=2), _rand(*v_shape, dtype=dtype,
                                                                                                seed=3)


def _agrees(ported: port.Ported) -> port.Agreement:
    table = ported.check(library=False)
    assert table.ok, str(table)
    assert table.rows and all(r.rows > 0 for r in table.rows)
    return table


def _run(ported: port.Ported) -> tuple[torch.Tensor, torch.Tensor]:
    fn = fia_v2 if ported.form == "v2" else fia
    out, lse = ported.call.call(fn)
    return ported.out_to_source(out), lse


# ------------------------------------------------------------------------------------------------ SDPA

@pytest.mark.parametrize("kwargs", [dict(is_causal=True), dict(), dict(scale=0.3)])
def test_sdpa_matches_torch_sdpa(kwargs):
    q, k, v = _qkv((2, 4, 5, 8), (2, 2, 7, 8))
    p = port.from_sdpa(q, k, v, enable_gqa=True, **kwargs)
    _agrees(p)
    out, _ = _run(p)  # float64 in, float64 through the reference: exact to rounding
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)


def test_sdpa_bool_mask_is_inverted_and_float_mask_becomes_pse():
    q, k, v = _qkv((2, 2, 5, 8), (2, 2, 7, 8))
    keep = _rand(2, 1, 5, 7, seed=4) > -0.5
    keep[..., 0] = True
    p = port.from_sdpa(q, k, v, attn_mask=keep)
    assert torch.equal(p.call.kwargs["atten_mask"], ~keep)
    _agrees(p)
    bias = _rand(1, 2, 5, 7, seed=5)
    bias[0, :, 1, 3] = float("-inf")  # head-independent -inf: goes to the mask
    p = port.from_sdpa(q, k, v, attn_mask=bias)
    assert p.call.kwargs["pse_shift"].shape == (1, 2, 5, 7) and p.call.kwargs["atten_mask"][0, 0, 1, 3]
    _agrees(p)


def test_sdpa_per_head_mask_goes_to_pse():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8))
    keep = torch.ones(1, 2, 4, 6, dtype=torch.bool)
    keep[0, 1, :, 4:] = False
    p = port.from_sdpa(q, k, v, attn_mask=keep)
    assert "atten_mask" not in p.call.kwargs and p.call.kwargs["pse_shift"].shape == (1, 2, 4, 6)
    _agrees(p)


def test_translation_never_casts_the_callers_tensors():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8), dtype=torch.bfloat16)
    p = port.from_sdpa(q, k, v, attn_mask=_rand(1, 2, 4, 6, seed=9))
    assert p.call.query is q and p.call.key is k and p.call.value is v
    assert p.call.kwargs["pse_shift"].dtype == torch.bfloat16  # what FIA requires for a bfloat16 query (spec 9)


# ------------------------------------------------------------------------------------------------ flex

def test_flex_causal_block_mask_becomes_a_sparse_mode():
    q, k, v = _qkv((2, 4, 6, 8), (2, 2, 9, 8))
    top_left = create_block_mask(lambda b, h, i, j: j <= i, None, None, 6, 9, device="cpu")
    p = port.from_flex(q, k, v, block_mask=top_left, enable_gqa=True, return_lse=True)
    assert p.call.kwargs["sparse_mode"] == 2
    _agrees(p)
    bottom_right = create_block_mask(lambda b, h, i, j: j <= i + 3, None, None, 6, 9, device="cpu")
    assert port.from_flex(q, k, v, block_mask=bottom_right, enable_gqa=True).call.kwargs["sparse_mode"] == 3
    band = create_block_mask(lambda b, h, i, j: (j - i <= 3) & (j - i >= 1), None, None, 6, 9, device="cpu")
    p = port.from_flex(q, k, v, block_mask=band, enable_gqa=True, return_lse=True)
    assert (p.call.kwargs["sparse_mode"], p.call.kwargs["pre_tokens"], p.call.kwargs["next_tokens"]) == (4, 2, 0)
    _agrees(p)


def test_flex_other_mask_is_explicit_and_additive_score_mod_is_pse():
    q, k, v = _qkv((2, 2, 6, 8), (2, 2, 9, 8))
    mask = create_block_mask(lambda b, h, i, j: (j % 2 == 0) | (j == i), None, None, 6, 9, device="cpu")
    p = port.from_flex(q, k, v, block_mask=mask, score_mod=lambda s, b, h, i, j: s - 0.1 * (h + 1) * (i - j).abs(),
                       return_lse=True)
    assert p.call.kwargs["atten_mask"].shape == (1, 1, 6, 9) and "pse_shift" in p.call.kwargs
    _agrees(p)


def test_flex_non_additive_score_mod_is_refused_by_name():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8))
    with pytest.raises(FIAArgumentError, match="score_mod.*not additive"):
        port.from_flex(q, k, v, score_mod=lambda s, b, h, i, j: 30 * torch.tanh(s / 30))


# ------------------------------------------------------------------------------------------------ flash-attn

def test_flash_attn_causal_contract_is_the_docstring_example():
    """flash_attn_interface.py:1175-1184: seqlen_q=2, seqlen_k=5 keeps [[1 1 1 1 0], [1 1 1 1 1]]; 5 x 2 keeps the
    last two rows only."""
    want = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(contracts.bottom_right_keep(2, 5, causal=True)[0], want)
    want = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]], dtype=torch.bool)
    assert torch.equal(contracts.bottom_right_keep(5, 2, causal=True)[0], want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [dict(causal=True), dict(window_size=(3, 1)), dict(causal=True, window_size=(2, -1)),
                                    dict(causal=True, alibi_slopes=torch.tensor([0.37, 0.11, 0.05, 0.013]))])
def test_flash_attn_func_matches_its_contract(dtype, kwargs):
    q, k, v = _qkv((2, 5, 4, 16), (2, 9, 2, 16), dtype=dtype)
    _agrees(port.from_flash_attn(q, k, v, return_attn_probs=True, **kwargs))


def test_flash_attn_rows_without_keys_are_zero_in_both():
    q, k, v = _qkv((1, 6, 2, 8), (1, 3, 2, 8))  # S_q > S_k, causal: the first 3 rows see nothing
    p = port.from_flash_attn(q, k, v, causal=True, return_attn_probs=True)
    out, _ = _run(p)
    assert bool((out[0, :3] == 0).all())
    _agrees(p)


def test_flash_attn_varlen_dense_and_paged():
    q, k, v = _qkv((9, 4, 16), (15, 2, 16))
    cu_q, cu_k = torch.tensor([0, 3, 8, 9], dtype=torch.int32), torch.tensor([0, 6, 11, 15], dtype=torch.int32)
    for kwargs in (dict(causal=True), dict(window_size=(2, 0))):
        p = port.from_flash_attn_varlen(q, k, v, cu_q, cu_k, 5, 6, return_attn_probs=True, **kwargs)
        assert p.call.kwargs["actual_seq_lengths"] == [3, 8, 9]
        _agrees(p)
    k_cache, v_cache = _rand(6, 256, 2, 16, seed=7), _rand(6, 256, 2, 16, seed=8)
    table = torch.tensor([[4, 1], [0, 5], [2, 3]], dtype=torch.int32)
    cu_paged = torch.tensor([0, 200, 330, 400], dtype=torch.int32)
    p = port.from_flash_attn_varlen(q, k_cache, v_cache, cu_q, cu_paged, 5, 200, causal=True, block_table=table,
                                    return_attn_probs=True)
    assert p.call.kwargs["actual_seq_lengths_kv"] == [200, 130, 70]  # per batch with a paged cache (spec 5.2)
    _agrees(p)


@pytest.mark.parametrize("s_q", [1, 4])
def test_flash_attn_with_kvcache_paged_and_dense(s_q):
    q = _rand(3, s_q, 4, 16, seed=1)
    k_cache, v_cache = _rand(6, 256, 2, 16, seed=7), _rand(6, 256, 2, 16, seed=8)
    table = torch.tensor([[4, 1], [0, 5], [2, 3]], dtype=torch.int32)
    lens = torch.tensor([200, 130, 70], dtype=torch.int32)
    p = port.from_flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, block_table=table, causal=True,
                                          window_size=(50, 0), alibi_slopes=torch.tensor([0.3, 0.11, 0.05, 0.013]),
                                          return_softmax_lse=True)
    _agrees(p)
    dense_k, dense_v = _rand(3, 20, 2, 16, seed=5), _rand(3, 20, 2, 16, seed=6)
    p = port.from_flash_attn_with_kvcache(q, dense_k, dense_v, cache_seqlens=torch.tensor([12, 7, 20]),
                                          causal=True, return_softmax_lse=True)
    _agrees(p)


@pytest.mark.parametrize("feature, kwargs", [("softcap", dict(softcap=30.0)), ("dropout_p", dict(dropout_p=0.1))])
def test_flash_attn_untranslatable_features_raise_by_name(feature, kwargs):
    q, k, v = _qkv((1, 4, 2, 8), (1, 4, 2, 8))
    with pytest.raises(FIAArgumentError, match=rf"^{feature}: has no FIA counterpart"):
        port.from_flash_attn(q, k, v, **kwargs)


def test_flash_attn_page_size_it_refuses_is_refused():
    q, k, v = _qkv((3, 2, 8), (4, 128, 2, 8))
    with pytest.raises(FIAArgumentError, match="^k_cache: flash-attn refuses .* multiple of 256"):
        port.from_flash_attn_varlen(q, k, v, torch.tensor([0, 3]), torch.tensor([0, 100]), 3, 100,
                                    block_table=torch.tensor([[0]], dtype=torch.int32))


def test_kvcache_append_and_rotary_are_refused_by_name():
    q, k, v = _qkv((1, 1, 2, 8), (1, 6, 2, 8))
    with pytest.raises(FIAArgumentError, match="^k: has no FIA counterpart.*append"):
        port.from_flash_attn_with_kvcache(q, k, v, k=k[:, :1], v=v[:, :1], cache_seqlens=3)
    with pytest.raises(FIAArgumentError, match="^rotary_cos: "):
        port.from_flash_attn_with_kvcache(q, k, v, rotary_cos=torch.ones(6, 4), rotary_sin=torch.ones(6, 4))


# ------------------------------------------------------------------------------------------------ FlashInfer

def test_flashinfer_lse_is_base_two_by_hand():
    """q = 0: every score is 0, so the natural LSE is ln(kv_len) and FlashInfer's is log2(kv_len)."""
    q = torch.zeros(3, 2, 8, dtype=torch.float64)
    k, v = _rand(8, 2, 8, seed=2), _rand(8, 2, 8, seed=3)
    p = port.from_flashinfer_single_prefill(q, k, v, return_lse=True)
    _, lse = _run(p)
    torch.testing.assert_close(p.lse_to_source(lse), torch.full((3, 2), 3.0, dtype=torch.float64))
    _, contract_lse = contracts.attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), 1.0, None)
    torch.testing.assert_close(contract_lse, torch.full((2, 3), math.log(8), dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("kwargs", [dict(causal=True), dict(causal=True, window_left=3), dict(window_left=2),
                                    dict(causal=True, pos_encoding_mode="ALIBI"), dict(kv_layout="HND", causal=True)])
def test_flashinfer_single_prefill_matches_its_contract(dtype, kwargs):
    q, k, v = _qkv((5, 4, 16), (9, 2, 16), dtype=dtype)
    if kwargs.get("kv_layout") == "HND":
        k, v = k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
    _agrees(port.from_flashinfer_single_prefill(q, k, v, return_lse=True, **kwargs))


def test_flashinfer_custom_mask_keeps_true():
    q, k, v = _qkv((5, 2, 16), (9, 2, 16))
    keep = _rand(5, 9, seed=11) > 0
    keep[:, 0] = True
    p = port.from_flashinfer_single_prefill(q, k, v, custom_mask=keep, return_lse=True)
    assert torch.equal(p.call.kwargs["atten_mask"][0, 0], ~keep)
    _agrees(p)


def _pages(layout: str = "NHD", page: int = 128, pages: int = 5):
    k, v = _rand(pages, page, 2, 16, seed=7), _rand(pages, page, 2, 16, seed=8)
    if layout == "HND":
        k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    return k, v


PAGED = dict(qo_indptr=torch.tensor([0, 3, 8], dtype=torch.int32), paged_kv_indptr=torch.tensor([0, 2, 3],
             dtype=torch.int32), paged_kv_indices=torch.tensor([3, 0, 4], dtype=torch.int32),
             paged_kv_last_page_len=torch.tensor([20, 77], dtype=torch.int32), num_qo_heads=4, num_kv_heads=2,
             head_dim_qk=16, page_size=128)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_flashinfer_paged_prefill_matches_its_contract(layout):
    q = _rand(8, 4, 16, seed=1)
    p = port.from_flashinfer_paged_prefill(q, _pages(layout), kv_layout=layout, causal=True, return_lse=True,
                                           **PAGED)
    assert p.call.kwargs["actual_seq_lengths_kv"] == [148, 77]
    assert p.call.kwargs["block_table"].tolist() == [[3, 0], [4, 0]]
    _agrees(p)
    k, v = _pages(layout)
    five_d = torch.stack([k, v], dim=1)  # one (pages, 2, ...) tensor
    _agrees(port.from_flashinfer_paged_prefill(q, five_d, kv_layout=layout, window_left=30, causal=True,
                                               return_lse=True, **PAGED))


def test_flashinfer_paged_custom_mask_is_per_request_and_inverted():
    q = _rand(8, 4, 16, seed=1)
    keep = _rand(3 * 148 + 5 * 77, seed=12) > -0.5
    p = port.from_flashinfer_paged_prefill(q, _pages(), custom_mask=keep, return_lse=True, **PAGED)
    mask = p.call.kwargs["atten_mask"]
    assert mask.shape == (2, 1, 5, 256) and torch.equal(mask[1, 0, :5, :77], ~keep[3 * 148:].view(5, 77))
    assert "inner_precise" not in p.call.kwargs  # padding rows past L_q are not rows the mask hides
    _agrees(p)


def test_translation_keeps_views_of_the_callers_cache():
    q = _rand(8, 4, 16, seed=1)
    k, v = _pages()
    p = port.from_flashinfer_paged_prefill(q, (k, v), causal=True, **PAGED)
    assert p.call.key.data_ptr() == k.data_ptr() and p.call.key.dtype == k.dtype  # a reshape, not a copy
    assert p.call.kwargs["block_table"].dtype == torch.int32


def test_flashinfer_sinks_go_to_v2_learnable_sink():
    q = _rand(8, 4, 16, seed=1, dtype=torch.float16)
    k, v = (t.half() for t in _pages())
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.1])
    p = port.from_flashinfer_paged_prefill(q, (k, v), causal=True, sinks=sinks, return_lse=True, **PAGED)
    # a 3-D cache: the split-fuse route, whose sink takes the query's dtype (SF-SINK-001)
    assert p.form == "v2" and fia_kit.plan(p.call).route == "split-fuse"
    assert p.call.kwargs["learnable_sink"].dtype == torch.float16
    table = _agrees(p)
    assert any("learnable_sink in float16" in r.against for r in table.rows)
    # FlashInfer's LSE includes the sink, FIA's does not: converting without it is off by the sink's share
    _, fia_lse = fia_v2(p.call.query, p.call.key, p.call.value, **p.call.kwargs)
    want = contracts_out(p)[1]
    naive = fia_lse.squeeze(-1).double() * contracts.LOG2E
    assert _max_diff(naive, want) > 0.01
    torch.testing.assert_close(p.lse_to_source(fia_lse).double(), want, atol=1e-5, rtol=1e-5)


def test_flashinfer_ragged_and_decode_match_their_contracts():
    q = _rand(8, 4, 16, seed=1)
    k, v = _rand(15, 2, 16, seed=2), _rand(15, 2, 16, seed=3)
    _agrees(port.from_flashinfer_ragged_prefill(q, k, v, qo_indptr=torch.tensor([0, 3, 8]),
                                                kv_indptr=torch.tensor([0, 7, 15]), num_qo_heads=4, num_kv_heads=2,
                                                head_dim_qk=16, causal=True, return_lse=True))
    qd = _rand(2, 4, 16, seed=4)
    decode = dict(indptr=torch.tensor([0, 2, 3], dtype=torch.int32), indices=torch.tensor([3, 0, 4], dtype=torch.int32),
                  last_page_len=torch.tensor([5, 16], dtype=torch.int32), num_qo_heads=4, num_kv_heads=2, head_dim=16,
                  page_size=16)
    for kwargs in (dict(), dict(window_left=6, pos_encoding_mode="ALIBI")):
        _agrees(port.from_flashinfer_paged_decode(qd, _pages(page=16), return_lse=True, **decode, **kwargs))


@pytest.mark.parametrize("feature, kwargs", [("logits_soft_cap", dict(logits_soft_cap=30.0)),
                                             ("pos_encoding_mode", dict(pos_encoding_mode="ROPE_LLAMA"))])
def test_flashinfer_untranslatable_features_raise_by_name(feature, kwargs):
    q, k, v = _qkv((4, 2, 8), (4, 2, 8))
    with pytest.raises(FIAArgumentError, match=rf"^{feature}: has no FIA counterpart"):
        port.from_flashinfer_single_prefill(q, k, v, **kwargs)


def test_unknown_api_and_unknown_keyword():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 4, 8))
    with pytest.raises(FIAArgumentError, match="^api: "):
        port.translate("xformers.memory_efficient_attention", q, k, v)
    with pytest.raises(FIAArgumentError, match="signature"):
        port.from_sdpa(q, k, v, causal=True)  # flash-attn's name, not SDPA's


# ------------------------------------------------------------------------------------------------ the traps

def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_trap_sdpa_is_causal_is_not_sparse_mode_3():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 9, 8))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    kw = dict(num_heads=2, input_layout="BNSD", scale=8 ** -0.5, atten_mask=compressed_causal_mask())
    naive, _ = fia(q, k, v, sparse_mode=3, **kw)
    right, _ = fia(q, k, v, sparse_mode=2, **kw)
    assert _max_diff(naive, want) > 0.05
    torch.testing.assert_close(right, want)


def test_trap_mask_polarity_and_scale():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8))
    keep = _rand(1, 1, 4, 6, seed=3) > 0
    keep[..., 0] = keep[..., 1] = True
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    p = port.from_sdpa(q, k, v, attn_mask=keep)
    kw = dict(p.call.kwargs)
    polarity, _ = fia(q, k, v, **{**kw, "atten_mask": keep, "inner_precise": 2})
    scale_one, _ = fia(q, k, v, **{**kw, "scale": 1.0})
    assert _max_diff(polarity, want) > 0.05
    assert _max_diff(scale_one, want) > 0.05
    torch.testing.assert_close(_run(p)[0], want)


def test_trap_cu_seqlens_leading_zero_and_cumulative_paged_lengths():
    q = _rand(9, 4, 16, seed=1)
    k_cache, v_cache = _rand(6, 256, 2, 16, seed=7), _rand(6, 256, 2, 16, seed=8)
    table = torch.tensor([[4, 1], [0, 5], [2, 3]], dtype=torch.int32)
    cu_q, cu_k = torch.tensor([0, 3, 8, 9], dtype=torch.int32), torch.tensor([0, 200, 330, 400], dtype=torch.int32)
    p = port.from_flash_attn_varlen(q, k_cache, v_cache, cu_q, cu_k, 5, 200, causal=True, block_table=table)
    want, _ = contracts_out(p)
    kw = dict(p.call.kwargs)
    naive, _ = fia(p.call.query, p.call.key, p.call.value, **{**kw, "actual_seq_lengths_kv": cu_k[1:].tolist()})
    assert _max_diff(naive, want) > 0.01  # cumulative kv lengths in paged TND: batches 1, 2 read too many keys
    torch.testing.assert_close(_run(p)[0], want)
    with pytest.raises(FIAArgumentError):  # the leading 0 kept on the query side: 4 query batches, 3 kv
        fia(p.call.query, p.call.key, p.call.value, **{**kw, "actual_seq_lengths": cu_q.tolist()})


def contracts_out(p: port.Ported) -> tuple[torch.Tensor, torch.Tensor | None]:
    return port.APIS[p.api].semantics(p.arguments)


def test_trap_window_size_is_pre_tokens_minus_nothing():
    """flash-attn window_size=(3, 0) keeps 4 keys (3 before the diagonal + itself): pre_tokens=3, not 4."""
    q, k, v = _qkv((1, 8, 2, 8), (1, 8, 2, 8))
    p = port.from_flash_attn(q, k, v, window_size=(3, 0))
    want, _ = contracts_out(p)
    assert p.call.kwargs["pre_tokens"] == 3
    naive, _ = fia(q, k, v, **{**p.call.kwargs, "pre_tokens": 4})
    assert _max_diff(naive, want) > 0.01
    torch.testing.assert_close(_run(p)[0], want)


def test_trap_flashinfer_page_table_without_last_page_len():
    q = _rand(8, 4, 16, seed=1)
    p = port.from_flashinfer_paged_prefill(q, _pages(), causal=True, **PAGED)
    want, _ = contracts_out(p)
    whole_pages = {**p.call.kwargs, "actual_seq_lengths_kv": [256, 128]}  # pages * page_size
    naive, _ = fia(p.call.query, p.call.key, p.call.value, **whole_pages)
    assert _max_diff(naive, want) > 0.01
    torch.testing.assert_close(_run(p)[0], want)


def test_trap_flashinfer_lse_merged_as_natural_log():
    """Two halves of the keys merged with FlashInfer's base-2 LSE read as natural log: wrong; converted: right."""
    q, k, v = _qkv((4, 2, 16), (12, 2, 16))
    full, _ = contracts.attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), 0.25, None)
    parts = [port.from_flashinfer_single_prefill(q, k[s], v[s], sm_scale=0.25, return_lse=True)
             for s in (slice(0, 5), slice(5, 12))]
    outs, lses2 = zip(*[contracts_out(p) for p in parts], strict=True)
    as_natural = [lse.unsqueeze(-1) for lse in lses2]
    converted = [(lse / contracts.LOG2E).unsqueeze(-1) for lse in lses2]
    naive, _ = fia_kit.merge_attention(list(outs), as_natural)
    right, _ = fia_kit.merge_attention(list(outs), converted)
    assert _max_diff(naive, full.transpose(0, 1)) > 0.01
    torch.testing.assert_close(right, full.transpose(0, 1))


# ------------------------------------------------------------------------------------------------ the reverse

def test_to_sdpa_and_to_flex_of_a_translated_call_give_the_source_back():
    q, k, v = _qkv((2, 4, 5, 8), (2, 2, 7, 8))
    keep = _rand(2, 1, 5, 7, seed=4) > -0.5
    keep[..., 0] = True
    p = port.from_sdpa(q, k, v, attn_mask=keep, enable_gqa=True)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
    torch.testing.assert_close(port.to_sdpa(p).run()[0], want)
    out, lse = port.to_flex(p).run()
    torch.testing.assert_close(out, want)
    ref_out, ref_lse = fia(p.call.query, p.call.key, p.call.value, **{**p.call.kwargs, "softmax_lse_flag": True})
    torch.testing.assert_close(lse, ref_lse)


def test_to_flex_of_packed_varlen_and_band_matches_the_reference():
    q, k, v = _qkv((9, 4, 16), (15, 2, 16))
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="TND", scale=0.25, sparse_mode=4, pre_tokens=2,
              next_tokens=0, atten_mask=compressed_causal_mask(), actual_seq_lengths=[3, 8, 9],
              actual_seq_lengths_kv=[6, 11, 15], softmax_lse_flag=True)
    ref_out, ref_lse = fia(q, k, v, **kw)
    out, lse = port.to_flex(fia_kit.plan("v1", q, k, v, **kw)).run()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
    # and the flash-attn contract agrees: the same call from the other side
    src = port.from_flash_attn_varlen(q, k, v, torch.tensor([0, 3, 8, 9]), torch.tensor([0, 6, 11, 15]), 5, 6,
                                      window_size=(2, 0), softmax_scale=0.25)
    torch.testing.assert_close(src.out_to_source(out), contracts_out(src)[0])


def test_to_flex_with_pse_and_padding_lengths():
    q, k, v = _qkv((2, 3, 2, 8), (2, 7, 2, 8))
    pse = _rand(2, 2, 3, 7, seed=5)
    kw = dict(num_heads=2, input_layout="BSND", scale=0.3, pse_shift=pse, actual_seq_lengths=[3, 2],
              actual_seq_lengths_kv=[7, 4], softmax_lse_flag=True)
    ref_out, ref_lse = fia(q, k, v, **kw)
    out, lse = port.to_flex(fia_kit.plan("v1", q, k, v, **kw)).run()
    torch.testing.assert_close(out, ref_out)
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite], ref_lse[finite])
    with pytest.raises(FIAArgumentError, match="no SDPA call"):
        port.to_sdpa(fia_kit.plan("v1", q, k, v, **kw))  # row 2 of batch 1 is past L_q: 0 in FIA, NaN in SDPA


def test_reverse_refuses_what_torch_cannot_express():
    q = _rand(8, 4, 16, seed=1)
    p = port.from_flashinfer_paged_prefill(q, _pages(), causal=True, sinks=torch.tensor([0.5, -1.0, 2.0, 0.1]),
                                           **PAGED)
    with pytest.raises(FIAArgumentError, match="^block_table: no SDPA call computes this"):
        port.to_sdpa(p)
    with pytest.raises(FIAArgumentError, match="^block_table: no flex_attention call"):
        port.to_flex(p)


def test_ported_call_goes_everywhere_a_call_goes(tmp_path):
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8))
    p = port.from_sdpa(q, k, v, is_causal=True)
    assert fia_kit.plan(p.call).sparse_mode == 2 and fia_kit.plan(p).sparse_mode == 2
    assert fia_kit.lint(p.call) == []
    result = fia_kit.run(p.call, "reference")
    torch.testing.assert_close(result.attention_out, _run(p)[0])
    from fia_kit.repro import to_script

    assert to_script(p.call, tmp_path / "repro.py").exists()
    assert fia_kit.Case.from_call(p.call).sparse_mode == 2  # what fia_kit.explore(p.call) opens
    assert "port" in fia_kit.__all__ and fia_kit.port is port


def test_translations_lint_clean_and_their_naive_twins_do_not():
    q = _rand(9, 4, 16, seed=1)
    k_cache, v_cache = _rand(8, 256, 2, 16, seed=7), _rand(8, 256, 2, 16, seed=8)
    table = torch.tensor([[4, 1, 0, 0, 0], [2, 5, 0, 0, 0], [3, 6, 0, 0, 0]], dtype=torch.int32)  # 0-padded, wide
    cu_q, cu_k = torch.tensor([0, 3, 8, 9]), torch.tensor([0, 300, 600, 900])
    p = port.from_flash_attn_varlen(q, k_cache, v_cache, cu_q, cu_k, 5, 300, causal=True, block_table=table)
    assert fia_kit.lint(p.call) == []
    naive = {**p.call.kwargs, "actual_seq_lengths_kv": cu_k[1:].tolist()}
    assert [f.rule for f in fia_kit.lint("v1", p.call.query, p.call.key, p.call.value, **naive)] == \
        ["paged-cumulative-kv"]
    qs, ks, vs = _qkv((1, 2, 6, 8), (1, 2, 6, 8))
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    keep[5, :3] = False  # not a plain causal pattern: only the diagonal rule can tell
    p = port.from_sdpa(qs, ks, vs, attn_mask=keep)
    assert fia_kit.lint(p.call) == []
    naive = {**p.call.kwargs, "atten_mask": keep[None, None]}
    assert [f.rule for f in fia_kit.lint("v1", qs, ks, vs, **naive)] == ["mask-diagonal-hidden"]
    assert [f.rule for f in fia_kit.lint("v1", qs, ks, vs, **{**p.call.kwargs, "scale": 1.0})] == ["scale-one"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="needs a CUDA GPU with flash-attn installed")
def test_flash_attn_itself_agrees_on_cuda():
    q, k, v = _qkv((2, 64, 4, 64), (2, 96, 2, 64), dtype=torch.bfloat16)
    table = port.from_flash_attn(q, k, v, causal=True, return_attn_probs=True).check(library=True)
    assert any("on CUDA" in r.against for r in table.rows)
    assert table.ok, str(table)


def test_source_and_fia_visibility_agree_for_translations_and_not_for_naive_ones():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 9, 8))
    p = port.from_sdpa(q, k, v, is_causal=True)
    assert torch.equal(port.source_visibility(p), torch.ones(4, 9, dtype=torch.bool).tril())
    assert torch.equal(port.source_visibility(p), p.plan().visibility.dense(0))
    naive = fia_kit.plan("v1", q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=3,
                         atten_mask=compressed_causal_mask())
    assert int((port.source_visibility(p) != naive.visibility.dense(0)).sum()) == 4 * 5  # 5 more keys per row
    fig = port.visibility_pair(p, fia=naive)
    assert "20 cells differ" in fig.layout.title.text
    qf = _rand(8, 4, 16, seed=1)
    pf = port.from_flashinfer_paged_prefill(qf, _pages(), window_left=30, causal=True, **PAGED)
    for b in range(2):
        assert torch.equal(port.source_visibility(pf, b), pf.plan().visibility.dense(b))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
                    reason="needs a CUDA GPU with FlashInfer installed")
def test_flashinfer_itself_agrees_on_cuda():
    q = _rand(8, 4, 64, seed=1, dtype=torch.float16)
    k, v = (_rand(5, 128, 2, 64, seed=s, dtype=torch.float16) for s in (7, 8))
    table = port.from_flashinfer_paged_prefill(q, (k, v), causal=True, return_lse=True,
                                               **{**PAGED, "head_dim_qk": 64}).check(library=True)
    assert any("on CUDA" in r.against for r in table.rows)
    assert table.ok, str(table)


def test_alibi_with_a_packed_layout_is_refused_by_name():
    q, k, v = _qkv((5, 2, 8), (7, 2, 8))
    with pytest.raises(FIAArgumentError, match="^alibi_slopes: has no FIA counterpart.*TND"):
        port.from_flash_attn_varlen(q, k, v, torch.tensor([0, 5]), torch.tensor([0, 7]), 5, 7,
                                    alibi_slopes=torch.tensor([0.5, 0.25]))
    with pytest.raises(FIAArgumentError, match="^pos_encoding_mode: has no FIA counterpart.*TND"):
        port.from_flashinfer_ragged_prefill(q, k, v, qo_indptr=torch.tensor([0, 5]), kv_indptr=torch.tensor([0, 7]),
                                            num_qo_heads=2, num_kv_heads=2, head_dim_qk=8,
                                            pos_encoding_mode="ALIBI")


def test_to_sdpa_of_a_decode_call_with_a_mask_and_pse():
    q, k, v = _qkv((2, 2, 1, 8), (2, 2, 10, 8))
    hidden = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    hidden[0, ..., :3] = True
    pse = _rand(2, 2, 1, 10, seed=6)
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.3, atten_mask=hidden, pse_shift=pse,
              actual_seq_lengths_kv=[10, 7])
    ref, _ = fia(q, k, v, **kw)
    sdpa = port.to_sdpa(fia_kit.plan("v1", q, k, v, **kw))
    torch.testing.assert_close(sdpa.run()[0], ref)
    torch.testing.assert_close(port.to_flex(fia_kit.plan("v1", q, k, v, **kw)).run()[0], ref)


def test_flash_attn_causal_alibi_lse_is_the_kernels():
    """Causal ALiBi: flash-attn's kernel adds slope * j (csrc mask.h), the docstring -slope * |i + S_k - S_q - j|:
    the outputs agree, the LSEs differ by slope * (i + S_k - S_q); the translation maps FIA's LSE to the kernel's."""
    q, k, v = _qkv((1, 3, 2, 8), (1, 5, 2, 8))
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
    p = port.from_flash_attn(q, k, v, causal=True, alibi_slopes=slopes, return_attn_probs=True)
    _, fia_lse = fia(p.call.query, p.call.key, p.call.value, **p.call.kwargs)
    gap = contracts_out(p)[1] - fia_lse.squeeze(-1)
    torch.testing.assert_close(gap[0], slopes[:, None] * (torch.arange(3) + 2.0)[None, :])
    _agrees(p)
    windowed = port.from_flash_attn(q, k, v, causal=True, window_size=(2, 0), alibi_slopes=slopes,
                                    return_attn_probs=True)  # the local kernel: the docstring's bias, no shift
    _, fia_lse = fia(q, k, v, **windowed.call.kwargs)
    torch.testing.assert_close(contracts_out(windowed)[1], fia_lse.squeeze(-1))


def test_a_per_head_minus_inf_score_mod_becomes_a_finite_pse():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 6, 8))

    def head_one_skips_the_first_key(score, b, h, i, j):
        return torch.where((h == 1) & (j == 0), torch.full_like(score, float("-inf")), score)

    p = port.from_flex(q, k, v, score_mod=head_one_skips_the_first_key, return_lse=True)
    pse = p.call.kwargs["pse_shift"]
    assert bool(torch.isfinite(pse).all()) and float(pse[0, 1, 0, 0]) == torch.finfo(torch.float64).min
    _agrees(p)


def test_to_flex_lse_of_a_decode_batch_without_keys_is_fias_sentinel():
    q, k, v = _qkv((2, 2, 1, 8), (2, 2, 6, 8))
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.3, actual_seq_lengths_kv=[6, 0], softmax_lse_flag=True)
    ref_out, ref_lse = fia(q, k, v, **kw)
    out, lse = port.to_flex(fia_kit.plan("v1", q, k, v, **kw)).run()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse.to(lse.dtype))  # batch 1: -3.40282e38, the decode path's value


def test_rows_without_keys_get_the_sources_lse_sentinel():
    q, k, v = _qkv((2, 1, 2, 8), (2, 6, 2, 8))
    p = port.from_flash_attn_with_kvcache(q, k, v, cache_seqlens=torch.tensor([6, 0]), return_softmax_lse=True)
    _, lse = _run(p)
    assert float(lse[1, 0, 0, 0]) < -3e38  # FIA's decode path (spec 25.1) ...
    assert bool(torch.isposinf(p.lse_to_source(lse)[1]).all())  # ... is +inf for flash-attn (softmax.h:180)
    q, k, v = _qkv((6, 2, 8), (3, 2, 8))
    p = port.from_flashinfer_single_prefill(q, k, v, causal=True, return_lse=True)
    _, lse = _run(p)
    source = p.lse_to_source(lse)
    assert bool(torch.isneginf(source[:3]).all()) and bool(torch.isfinite(source[3:]).all())
    _agrees(p)
