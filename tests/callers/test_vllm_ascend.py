"""vllm-ascend's FIA calls (attention_v1.py, mla_v1.py, context_parallel/*), re-created at CPU sizes.

Each test builds the inputs the way the caller lays them out (paged caches viewed as the caller views them, lengths
of the caller's types), runs them through the stand-in torch_npu (which checks every keyword against the schema and
computes with the kit), and compares with a float64 golden written from what the caller means.
"""

from __future__ import annotations

import pytest
import torch
from _callers import VLLM, attention, caller, causal, close, window, with_sink
from fake_npu import torch_npu
from golden import paged_cache

import fia_kit
from fia_kit.masks import compressed_causal_mask

V1 = "vllm_ascend/attention/attention_v1.py"
MLA = "vllm_ascend/attention/mla_v1.py"
MLA_CP = "vllm_ascend/attention/context_parallel/mla_cp.py"
ATTN_CP = "vllm_ascend/attention/context_parallel/attention_cp.py"
COMMON_CP = "vllm_ascend/attention/context_parallel/common_cp.py"
SWA_INT_MAX = 2147483647
N, NKV, D, BS = 4, 2, 64, 128
MASK = compressed_causal_mask(torch.int8)  # vllm-ascend's FIA mask: triu(ones(2048, 2048), 1) as int8


def _batch(gen, q_lens, kv_lens, dtype=torch.float16, n=N, nkv=NKV, d=D):
    """Per batch: new query rows (the last L_q tokens of each sequence) and the sequence's K/V (N, L, D)."""
    qs = [torch.randn(n, lq, d, generator=gen).to(dtype) for lq in q_lens]
    ks = [torch.randn(nkv, lk, d, generator=gen).to(dtype) for lk in kv_lens]
    vs = [torch.randn(nkv, lk, d, generator=gen).to(dtype) for lk in kv_lens]
    return qs, ks, vs


def _tnd(rows):
    """(N, L_b, D) pieces -> the packed (T, N, D) query."""
    return torch.cat([r.transpose(0, 1) for r in rows])


def _cumsum(lengths):
    total, out = 0, []
    for n in lengths:
        total += n
        out.append(total)
    return out


def _chunked_prefill_inputs(gen, q_lens, kv_lens):
    qs, ks, vs = _batch(gen, q_lens, kv_lens)
    kc, table = paged_cache(ks, BS, rank=3)  # key_cache.view(num_block, block_size, -1)
    vc, _ = paged_cache(vs, BS, rank=3)
    return qs, ks, vs, kc, vc, table


def _check_tnd(out, qs, ks, vs, scale, visible_of, dtype=torch.float16, sink=None):
    start = 0
    for q, k, v in zip(qs, ks, vs, strict=True):
        lq, lk = q.shape[1], k.shape[1]
        vis = visible_of(lq, lk)
        want = attention(q, k, v, scale, vis)[0] if sink is None else with_sink(q, k, v, scale, sink, vis)
        close(out[start:start + lq].transpose(0, 1), want, dtype)
        start += lq


@caller(VLLM, V1, "AscendAttentionBackendImpl.forward_fused_infer_attention: chunked prefill, sparse_mode=3")
def test_chunked_prefill_tnd_paged_causal(gen):
    q_lens, kv_lens = [3, 1, 5], [130, 7, 5]  # a continuing prefill, a decode, a fresh prefill
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query=_tnd(qs), key=kc, value=vc, atten_mask=MASK, block_table=table, input_layout="TND", block_size=BS,
        actual_seq_lengths=_cumsum(q_lens), actual_seq_lengths_kv=kv_lens, num_key_value_heads=NKV, num_heads=N,
        scale=D ** -0.5, sparse_mode=3)
    _check_tnd(out, qs, ks, vs, D ** -0.5, causal)


@caller(VLLM, V1, "forward_fused_infer_attention: not attn_metadata.causal -> sparse_mode=0 without a mask")
def test_non_causal_tnd_paged(gen):
    q_lens, kv_lens = [4, 2], [6, 2]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query=_tnd(qs), key=kc, value=vc, block_table=table, input_layout="TND", block_size=BS,
        actual_seq_lengths=_cumsum(q_lens), actual_seq_lengths_kv=kv_lens, num_key_value_heads=NKV, num_heads=N,
        scale=0.1, sparse_mode=0)
    _check_tnd(out, qs, ks, vs, 0.1, lambda lq, lk: None)


@caller(VLLM, V1, "forward_fused_infer_attention: sliding_window -> sparse_mode=4, pre_tokens=window, next=0")
def test_sliding_window_band(gen):
    q_lens, kv_lens, w = [5, 3], [9, 3], 3
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query=_tnd(qs), key=kc, value=vc, atten_mask=MASK, block_table=table, input_layout="TND", block_size=BS,
        actual_seq_lengths=_cumsum(q_lens), actual_seq_lengths_kv=kv_lens, num_key_value_heads=NKV, num_heads=N,
        scale=0.125, pre_tokens=w, next_tokens=0, sparse_mode=4)
    _check_tnd(out, qs, ks, vs, 0.125, lambda lq, lk: window(lq, lk, w))


@pytest.mark.parametrize("sliding_window", [None, 2])
@caller(VLLM, V1, "forward_fused_infer_attention: self.sinks -> v2 with learnable_sink, sparse_mode 3 or 4")
def test_sinks_v2_tnd(gen, sliding_window):
    q_lens, kv_lens = [4, 2], [7, 2]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    sinks = torch.randn(N, generator=gen).to(torch.float16)
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(
        _tnd(qs), kc, vc, num_query_heads=N, num_key_value_heads=NKV, input_layout="TND",
        pre_tokens=sliding_window if sliding_window is not None else SWA_INT_MAX, next_tokens=0, atten_mask=MASK,
        sparse_mode=4 if sliding_window is not None else 3, softmax_scale=0.125, block_table=table, block_size=BS,
        actual_seq_qlen=_cumsum(q_lens), actual_seq_kvlen=kv_lens, learnable_sink=sinks)
    visible = causal if sliding_window is None else (lambda lq, lk: window(lq, lk, sliding_window))
    _check_tnd(out, qs, ks, vs, 0.125, visible, sink=sinks)


@caller(VLLM, V1, "forward_fused_infer_attention: sinks in DecodeOnly, actual_seq_qlen = tensor([1]*B).cumsum(0)")
def test_sinks_decode_lengths_as_a_cumsum_tensor(gen):
    kv_lens = [5, 9, 1]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, [1, 1, 1], kv_lens)
    sinks = torch.randn(N, generator=gen).to(torch.float16)
    qlen = torch.tensor([1] * len(kv_lens), dtype=torch.int32).cumsum(dim=0)  # an int64 CPU tensor
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(
        _tnd(qs), kc, vc, num_query_heads=N, num_key_value_heads=NKV, input_layout="TND", pre_tokens=SWA_INT_MAX,
        next_tokens=0, atten_mask=MASK, sparse_mode=3, softmax_scale=0.125, block_table=table, block_size=BS,
        actual_seq_qlen=qlen, actual_seq_kvlen=kv_lens, learnable_sink=sinks)
    _check_tnd(out, qs, ks, vs, 0.125, causal, sink=sinks)


@caller(VLLM, V1, "_forward_fia_chunked_prefill_split: decode slice with the leading cumulative q lengths")
def test_chunked_prefill_split_decode_then_prefill(gen):
    q_lens, kv_lens = [1, 1, 4, 3], [6, 2, 9, 3]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    query, qlen = _tnd(qs), _cumsum(q_lens)
    common = dict(key=kc, value=vc, atten_mask=MASK, input_layout="TND", block_size=BS, num_key_value_heads=NKV,
                  num_heads=N, scale=0.125, sparse_mode=3)
    decode, _ = torch_npu.npu_fused_infer_attention_score(
        query=query[:2], block_table=table[:2], actual_seq_lengths=qlen[:2], actual_seq_lengths_kv=kv_lens[:2],
        **common)
    prefill, _ = torch_npu.npu_fused_infer_attention_score(
        query=query[2:qlen[-1]], block_table=table[2:], actual_seq_lengths=[c - 2 for c in qlen[2:]],
        actual_seq_lengths_kv=kv_lens[2:], **common)
    _check_tnd(torch.cat([decode, prefill]), qs, ks, vs, 0.125, causal)


@caller(VLLM, V1, "AscendAttentionBackendImpl._forward_c8_decode: BNSD int8 NZ cache, per-channel scales")
def test_c8_decode_int8_nz_per_channel(gen):
    kv_lens = [5, 140]
    q = torch.randn(2, N, 1, D, generator=gen).half()  # query[:batch].unsqueeze(2)
    ks = [torch.randint(-30, 30, (NKV, n, D), generator=gen, dtype=torch.int8) for n in kv_lens]
    vs = [torch.randint(-30, 30, (NKV, n, D), generator=gen, dtype=torch.int8) for n in kv_lens]
    kc, table = paged_cache(ks, BS, rank=5)  # _nz_5d_view: (blocks, N_kv, D/32, block_size, 32)
    vc, _ = paged_cache(vs, BS, rank=5)
    k_scale = (torch.rand(NKV, 1, D, generator=gen) * 0.02 + 0.005).half()  # _c8_k_aq_scale_nz_bnsd
    v_scale = (torch.rand(NKV, 1, D, generator=gen) * 0.02 + 0.005).half()
    out, _ = torch_npu.npu_fused_infer_attention_score(
        q, kc, vc, key_antiquant_scale=k_scale, value_antiquant_scale=v_scale, block_table=table,
        actual_seq_lengths_kv=kv_lens, num_heads=N, num_key_value_heads=NKV, input_layout="BNSD", scale=D ** -0.5,
        block_size=BS, antiquant_mode=0, key_antiquant_mode=0, value_antiquant_mode=0, inner_precise=1,
        sparse_mode=0)
    for b in range(2):
        want, _ = attention(q[b], ks[b].double() * k_scale.double(), vs[b].double() * v_scale.double(), D ** -0.5)
        close(out[b], want, torch.float16)


@caller(VLLM, V1, "_forward_c8_chunked_prefill: prefill part, dense TND K/V, kv lengths int32 tensor cumsum")
def test_c8_prefill_dense_tnd_with_tensor_cumsum_lengths(gen):
    q_lens, kv_lens = [3, 2], [5, 2]
    qs, ks, vs = _batch(gen, q_lens, kv_lens)
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query=_tnd(qs), key=_tnd(ks), value=_tnd(vs), atten_mask=MASK, block_table=None, input_layout="TND",
        block_size=BS, actual_seq_lengths=_cumsum(q_lens),
        actual_seq_lengths_kv=torch.tensor(kv_lens, dtype=torch.int32).cumsum(dim=0), num_key_value_heads=NKV,
        num_heads=N, scale=0.125, sparse_mode=3)
    _check_tnd(out, qs, ks, vs, 0.125, causal)


@caller(VLLM, V1, "forward_fused_infer_attention: PrefillNoCache, kv lengths = q lengths, block_size=128, no table")
def test_prefill_no_cache_dense_tnd(gen):
    q_lens = [4, 6]
    qs, ks, vs = _batch(gen, q_lens, q_lens)
    out, _ = torch_npu.npu_fused_infer_attention_score(
        query=_tnd(qs), key=_tnd(ks), value=_tnd(vs), atten_mask=MASK, block_table=None, input_layout="TND",
        block_size=128, actual_seq_lengths=_cumsum(q_lens), actual_seq_lengths_kv=_cumsum(q_lens),
        num_key_value_heads=NKV, num_heads=N, scale=0.125, sparse_mode=3)
    _check_tnd(out, qs, ks, vs, 0.125, causal)


@caller(VLLM, V1, "full_graph_fia: _get_max_workspace, then .out(..., workspace=, out=[output, softmax_lse])")
def test_full_graph_fia_out_with_workspace(gen):
    q_lens, kv_lens = [1, 1], [7, 131]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    kwargs = dict(query=_tnd(qs), key=kc, value=vc, atten_mask=MASK, block_table=table, input_layout="TND",
                  block_size=BS, actual_seq_lengths=_cumsum(q_lens), actual_seq_lengths_kv=kv_lens,
                  num_key_value_heads=NKV, num_heads=N, scale=0.125, sparse_mode=3, pre_tokens=SWA_INT_MAX,
                  next_tokens=0)
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(**kwargs)
    output = torch.empty(2, N, D, dtype=torch.float16)
    softmax_lse = torch.empty(1, dtype=torch.float16)
    torch_npu.npu_fused_infer_attention_score.out(**kwargs, workspace=workspace, out=[output, softmax_lse])
    _check_tnd(output, qs, ks, vs, 0.125, causal)


@caller(VLLM, V1, "full_graph_fia_v2: v2 .out with learnable_sink into captured buffers")
def test_full_graph_fia_v2_out_with_sinks(gen):
    q_lens, kv_lens = [1, 1], [4, 9]
    qs, ks, vs, kc, vc, table = _chunked_prefill_inputs(gen, q_lens, kv_lens)
    sinks = torch.randn(N, generator=gen).half()
    kwargs = dict(query=_tnd(qs), key=kc, value=vc, atten_mask=MASK, block_table=table, input_layout="TND",
                  block_size=BS, actual_seq_qlen=_cumsum(q_lens), actual_seq_kvlen=kv_lens, num_key_value_heads=NKV,
                  num_query_heads=N, sparse_mode=3, pre_tokens=SWA_INT_MAX, next_tokens=0, softmax_scale=0.125,
                  learnable_sink=sinks)
    workspace = torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace(**kwargs)
    output, softmax_lse = torch.empty(2, N, D, dtype=torch.float16), torch.empty(1, dtype=torch.float16)
    torch_npu.npu_fused_infer_attention_score_v2.out(**kwargs, workspace=workspace, out=[output, softmax_lse])
    _check_tnd(output, qs, ks, vs, 0.125, causal, sink=sinks)


# ----------------------------------------------------------------------------------------------------- MLA

def _mla_prefill(gen, q_lens, dtype=torch.bfloat16):
    qn = [torch.randn(N, n, 128, generator=gen).to(dtype) for n in q_lens]
    qr = [torch.randn(N, n, 64, generator=gen).to(dtype) for n in q_lens]
    kn = [torch.randn(N, n, 128, generator=gen).to(dtype) for n in q_lens]
    kr = [torch.randn(N, n, 64, generator=gen).to(dtype) for n in q_lens]
    v = [torch.randn(N, n, 128, generator=gen).to(dtype) for n in q_lens]
    return qn, qr, kn, kr, v


@caller(VLLM, MLA, "AscendMLAImpl._forward_prefill: TND, nope 128 + rope 64, sparse_mode=3, softmax_lse_flag")
def test_mla_prefill_tnd_with_lse(gen):
    q_lens = [3, 5]
    qn, qr, kn, kr, v = _mla_prefill(gen, q_lens)
    scale = 192 ** -0.5
    out, lse = torch_npu.npu_fused_infer_attention_score(
        _tnd(qn), _tnd(kn), _tnd(v), query_rope=_tnd(qr), key_rope=_tnd(kr), num_heads=N, num_key_value_heads=N,
        input_layout="TND", atten_mask=MASK, sparse_mode=3, scale=scale, antiquant_mode=0, antiquant_scale=None,
        block_table=None, block_size=0, softmax_lse_flag=True, actual_seq_lengths=_cumsum(q_lens),
        actual_seq_lengths_kv=_cumsum(q_lens))
    start = 0
    for b, n in enumerate(q_lens):
        want, want_lse = attention(torch.cat([qn[b], qr[b]], -1), torch.cat([kn[b], kr[b]], -1), v[b], scale,
                                   causal(n, n))
        close(out[start:start + n].transpose(0, 1), want, torch.bfloat16)
        torch.testing.assert_close(lse[start:start + n, :, 0].double(), want_lse.transpose(0, 1), atol=1e-4,
                                   rtol=1e-4)
        start += n


@caller(VLLM, MLA, "_compute_prefill_context: per-chunk LSE of the cached context, merged with the causal part")
def test_mla_prefill_context_chunks_merge(gen):
    """Two context chunks (no mask) and the new tokens (causal), merged with fia_kit.merge_attention."""
    new, ctx = 3, [4, 2]
    qn, qr, kn, kr, v = _mla_prefill(gen, [new], torch.float32)
    chunks = [_mla_prefill(gen, [n], torch.float32)[2:] for n in ctx]  # (kn, kr, v) per chunk
    scale, outs, lses = 0.1, [], []
    q_tnd, qr_tnd = _tnd(qn), _tnd(qr)
    for ckn, ckr, cv in chunks:
        o, lse = torch_npu.npu_fused_infer_attention_score(
            q_tnd, _tnd(ckn), _tnd(cv), query_rope=qr_tnd, key_rope=_tnd(ckr), num_heads=N, num_key_value_heads=N,
            input_layout="TND", sparse_mode=0, scale=scale, softmax_lse_flag=True, actual_seq_lengths=[new],
            actual_seq_lengths_kv=[ckn[0].shape[1]])
        outs.append(o)
        lses.append(lse)
    o, lse = torch_npu.npu_fused_infer_attention_score(
        q_tnd, _tnd(kn), _tnd(v), query_rope=qr_tnd, key_rope=_tnd(kr), num_heads=N, num_key_value_heads=N,
        input_layout="TND", atten_mask=MASK, sparse_mode=3, scale=scale, softmax_lse_flag=True,
        actual_seq_lengths=[new], actual_seq_lengths_kv=[new])
    merged, _ = fia_kit.merge_attention([o, *outs], [lse, *lses])
    keys = torch.cat([torch.cat([kn[0], kr[0]], -1)] + [torch.cat([c[0][0], c[1][0]], -1) for c in chunks], 1)
    values = torch.cat([v[0]] + [c[2][0] for c in chunks], 1)
    visible = torch.cat([causal(new, new), torch.ones(new, sum(ctx), dtype=torch.bool)], 1)
    want, _ = attention(torch.cat([qn[0], qr[0]], -1), keys, values, scale, visible)
    close(merged.transpose(0, 1), want, torch.float32)


def _mla_decode(gen, kv_lens, n=N, rank=4, dtype=torch.bfloat16, bs=16):
    latent = [torch.randn(1, k, 512, generator=gen).to(dtype) * 0.1 for k in kv_lens]
    rope = [torch.randn(1, k, 64, generator=gen).to(dtype) for k in kv_lens]
    kc, table = paged_cache(latent, bs, rank=rank)
    krc, _ = paged_cache(rope, bs, rank=rank)
    q = torch.randn(len(kv_lens), n, 512, generator=gen).to(dtype) * 0.1
    qr = torch.randn(len(kv_lens), n, 64, generator=gen).to(dtype)
    return q, qr, latent, rope, kc, krc, table


def _mla_golden(q, qr, latent, rope, scale):
    return [attention(torch.cat([q[b], qr[b]], -1).unsqueeze(1), torch.cat([latent[b], rope[b]], -1), latent[b],
                      scale)[0][:, 0] for b in range(q.shape[0])]


@pytest.mark.parametrize("layout, cache_rank", [("BNSD_NBSD", 4), ("BSND_NBSD", 5)])
@caller(VLLM, MLA, "AscendMLAImpl._forward_decode: v2, BNSD_NBSD (ND cache) or BSND_NBSD (enable_kv_nz)")
def test_mla_decode_v2_nbsd_output(gen, layout, cache_rank):
    kv_lens = [5, 20]
    q, qr, latent, rope, kc, krc, table = _mla_decode(gen, kv_lens, rank=cache_rank)
    shape = (2, N, 1, -1) if layout == "BNSD_NBSD" else (2, 1, N, -1)
    scale = 576 ** -0.5
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(
        q.view(shape) if layout == "BSND_NBSD" else q.unsqueeze(2), kc, kc,
        query_rope=qr.view(shape) if layout == "BSND_NBSD" else qr.unsqueeze(2), key_rope=krc, num_query_heads=N,
        num_key_value_heads=1, input_layout=layout, atten_mask=None, sparse_mode=0, softmax_scale=scale,
        block_table=table, block_size=16, actual_seq_qlen=None, actual_seq_kvlen=kv_lens)
    assert out.shape == (N, 2, 1, 512)  # attn_output_shape = (num_heads, num_tokens, 1, kv_lora_rank)
    for b, want in enumerate(_mla_golden(q, qr, latent, rope, scale)):
        close(out[:, b, 0], want, torch.bfloat16)


@caller(VLLM, MLA, "_forward_decode with fa_quant_layer (A2/A3): BSND_NBSD int8, query_quant_mode=3, bf16 rope")
def test_mla_full_quant_decode(gen):
    kv_lens, bs = [3, 18], 16
    q8 = torch.randint(-60, 60, (2, 1, N, 512), generator=gen, dtype=torch.int8)
    q_scale = torch.rand(2, 1, N, generator=gen) * 0.01 + 0.002  # dequant_scale_q_nope.view(T, 1, N)
    qr = torch.randn(2, 1, N, 64, generator=gen).bfloat16()
    latent = [torch.randint(-60, 60, (1, n, 512), generator=gen, dtype=torch.int8) for n in kv_lens]
    rope = [torch.randn(1, n, 64, generator=gen).bfloat16() for n in kv_lens]
    kc, table = paged_cache(latent, bs, rank=5)  # int8 NZ (.., 512/32, bs, 32)
    krc, _ = paged_cache(rope, bs, rank=5)  # bf16 NZ (.., 64/16, bs, 16): its own tiling
    descale = torch.tensor([0.004])
    scale = 576 ** -0.5
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(
        q8, kc, kc, query_rope=qr, key_rope=krc, num_query_heads=N, num_key_value_heads=1, input_layout="BSND_NBSD",
        atten_mask=None, sparse_mode=0, softmax_scale=scale, block_table=table, block_size=bs, actual_seq_qlen=None,
        actual_seq_kvlen=kv_lens, query_quant_mode=3, key_quant_mode=0, value_quant_mode=0,
        dequant_scale_query=q_scale, dequant_scale_key=descale, dequant_scale_value=descale)
    assert out.dtype == torch.bfloat16 and out.shape == (N, 2, 1, 512)
    for b in range(2):
        qf = torch.cat([q8[b, 0].double() * q_scale[b, 0].double().unsqueeze(-1), qr[b, 0].double()], -1)
        kf = torch.cat([latent[b].double() * 0.004, rope[b].double()], -1)
        want, _ = attention(qf.unsqueeze(1), kf, latent[b].double() * 0.004, scale)
        close(out[:, b, 0], want[:, 0], torch.bfloat16)


@caller(VLLM, MLA, "_forward_decode while capturing: v2 _get_max_workspace, then v2 .out into captured buffers")
def test_mla_decode_graph_capture_out(gen):
    kv_lens = [9, 2]
    q, qr, latent, rope, kc, krc, table = _mla_decode(gen, kv_lens)
    scale = 0.05
    kwargs = dict(query_rope=qr.unsqueeze(2), key_rope=krc, num_query_heads=N, num_key_value_heads=1,
                  input_layout="BNSD_NBSD", atten_mask=None, sparse_mode=0, softmax_scale=scale, block_table=table,
                  block_size=16, actual_seq_qlen=None, actual_seq_kvlen=kv_lens)
    workspace = torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace(q.unsqueeze(2), kc, kc, **kwargs)
    attn_output = torch.empty(N, 2, 1, 512, dtype=torch.bfloat16)
    softmax_lse = torch.empty(2, dtype=torch.bfloat16)
    torch_npu.npu_fused_infer_attention_score_v2.out(q.unsqueeze(2), kc, kc, **kwargs, workspace=workspace,
                                                     out=[attn_output, softmax_lse])
    for b, want in enumerate(_mla_golden(q, qr, latent, rope, scale)):
        close(attn_output[:, b, 0], want, torch.bfloat16)


@caller(VLLM, MLA, "AscendMLAImpl._forward_decode with MTP: TND, cumulative q lengths, sparse_mode=3 + mask")
def test_mla_decode_mtp_tnd_causal_draft_tokens(gen):
    kv_lens, q_lens = [6, 10], [2, 2]
    q, qr, latent, rope, kc, krc, table = _mla_decode(gen, kv_lens, n=N)
    q4 = torch.randn(sum(q_lens), N, 512, generator=gen).bfloat16() * 0.1
    qr4 = torch.randn(sum(q_lens), N, 64, generator=gen).bfloat16()
    scale = 0.05
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(
        q4, kc, kc, query_rope=qr4, key_rope=krc, num_query_heads=N, num_key_value_heads=1, input_layout="TND",
        atten_mask=MASK, sparse_mode=3, softmax_scale=scale, block_table=table, block_size=16,
        actual_seq_qlen=_cumsum(q_lens), actual_seq_kvlen=kv_lens)
    for b in range(2):
        rows = slice(2 * b, 2 * b + 2)
        qf = torch.cat([q4[rows], qr4[rows]], -1).transpose(0, 1)
        want, _ = attention(qf, torch.cat([latent[b], rope[b]], -1), latent[b], scale, causal(2, kv_lens[b]))
        close(out[rows].transpose(0, 1), want, torch.bfloat16)


# ------------------------------------------------------------------------------------------ context parallel

def _update_out_and_lse(out_list: torch.Tensor, lse_list: torch.Tensor):
    """vllm-ascend's merge, as its docstring states it: LSE = log sum exp(LSE_i), O = sum exp(LSE_i - LSE) O_i."""
    lse_final = torch.logsumexp(lse_list, dim=0, keepdim=False)
    return torch.sum(torch.exp(lse_list - lse_final) * out_list, dim=0), lse_final


@caller(VLLM, MLA_CP, "AscendMlaCPImpl._forward_decode: v1 D=512 with softmax_lse_flag=True, per-rank cp_seq_len")
def test_mla_cp_decode_lse_merges_across_ranks_without_nan(gen):
    """Two CP ranks; on rank 1 the first request has no keys. The FIA route's MLA kernel writes +inf there
    (fia_kernel_nonquant_mla.h:320, fia_kit/lse.py): a plain logsumexp merge gives NaN, and vllm-ascend's DCP decode
    merges with npu_attention_update, whose kernel turns +inf into -inf (docs/context_parallel.md)."""
    rank_lens = [[5, 3], [0, 4]]
    q = torch.randn(2, N, 1, 512, generator=gen, dtype=torch.float32) * 0.1
    qr = torch.randn(2, N, 1, 64, generator=gen, dtype=torch.float32)
    outs, lses, keys = [], [], []
    for lens in rank_lens:
        latent = [torch.randn(1, max(n, 1), 512, generator=gen) * 0.1 for n in lens]
        rope = [torch.randn(1, max(n, 1), 64, generator=gen) for n in lens]
        kc, table = paged_cache(latent, 16, rank=4)
        krc, _ = paged_cache(rope, 16, rank=4)
        out, lse = torch_npu.npu_fused_infer_attention_score(
            q, kc, kc, query_rope=qr, key_rope=krc, num_heads=N, num_key_value_heads=1, input_layout="BNSD",
            sparse_mode=0, scale=0.05, antiquant_mode=0, antiquant_scale=None, block_table=table, block_size=16,
            actual_seq_lengths_kv=lens, softmax_lse_flag=True)
        outs.append(out)
        lses.append(lse)
        keys.append([(latent[b][:, :n], rope[b][:, :n]) for b, n in enumerate(lens)])
    assert (lses[1][0] == float("inf")).all()
    naive, _ = _update_out_and_lse(torch.stack(outs), torch.stack(lses))
    assert torch.isnan(naive[0]).all() and not torch.isnan(naive[1]).any()
    flat_out = [o.reshape(-1, 512) for o in outs]
    flat_lse = [lse.reshape(-1) for lse in lses]
    merged, _ = fia_kit.npu_attention_update(flat_lse, flat_out, update_type=1)
    merged = merged.reshape(outs[0].shape)
    assert not torch.isnan(merged).any()
    for b in range(2):
        latent = torch.cat([keys[r][b][0] for r in range(2)], 1)
        rope = torch.cat([keys[r][b][1] for r in range(2)], 1)
        want, _ = attention(torch.cat([q[b], qr[b]], -1), torch.cat([latent, rope], -1), latent, 0.05)
        close(merged[b], want, torch.float32)


@caller(VLLM, ATTN_CP, "AscendAttentionCPImpl._forward_decode_pcp_dcp: TND .out with LSE (T, N, 1) per DCP rank")
def test_attention_cp_decode_out_with_lse_then_merge(gen):
    kv_rank = [[4, 0], [3, 6]]
    q = torch.randn(2, N, D, generator=gen).half()
    outs, lses, parts = [], [], []
    for lens in kv_rank:
        ks = [torch.randn(NKV, max(n, 1), D, generator=gen).half() for n in lens]
        vs = [torch.randn(NKV, max(n, 1), D, generator=gen).half() for n in lens]
        kc, table = paged_cache(ks, BS, rank=3)
        vc, _ = paged_cache(vs, BS, rank=3)
        kwargs = dict(num_heads=N, num_key_value_heads=NKV, input_layout="TND", scale=0.125, block_table=table,
                      block_size=BS, actual_seq_lengths=[1, 2], actual_seq_lengths_kv=lens, softmax_lse_flag=True,
                      atten_mask=MASK, sparse_mode=3)
        workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, kc, vc, **kwargs)
        attn_out, attn_lse = torch.empty_like(q), torch.empty(2, N, 1, dtype=torch.float)
        torch_npu.npu_fused_infer_attention_score.out(q, kc, vc, **kwargs, workspace=workspace,
                                                      out=[attn_out, attn_lse])
        outs.append(attn_out)
        lses.append(attn_lse)
        parts.append([(ks[b][:, :n], vs[b][:, :n]) for b, n in enumerate(lens)])
    merged, _ = fia_kit.merge_attention(outs, lses)
    assert not torch.isnan(merged).any()
    for b in range(2):
        k = torch.cat([parts[r][b][0] for r in range(2)], 1)
        v = torch.cat([parts[r][b][1] for r in range(2)], 1)
        close(merged[b], attention(q[b].unsqueeze(1), k, v, 0.125)[0][:, 0], torch.float16)


@caller(VLLM, COMMON_CP, "_update_out_and_lse: a prefill part with +inf LSE gives NaN in their formula")
def test_prefill_sentinel_breaks_the_plain_logsumexp_merge(gen):
    """Why the sentinel matters: a PFA batch with no keys writes +inf; vllm-ascend's formula then gives NaN, which
    merge_attention avoids."""
    q = torch.randn(1, N, 2, D, generator=gen).half()
    k, v = (torch.randn(1, N, 3, D, generator=gen).half() for _ in range(2))
    full = torch_npu.npu_fused_infer_attention_score(q, k, v, num_heads=N, input_layout="BNSD", scale=0.1,
                                                     softmax_lse_flag=True)
    empty = torch_npu.npu_fused_infer_attention_score(q, k, v, num_heads=N, input_layout="BNSD", scale=0.1,
                                                      softmax_lse_flag=True, actual_seq_lengths_kv=[0])
    assert torch.isposinf(empty[1]).all()
    theirs, _ = _update_out_and_lse(torch.stack([full[0], empty[0]]).float(), torch.stack([full[1], empty[1]]))
    assert torch.isnan(theirs).all()
    ours, _ = fia_kit.merge_attention([full[0], empty[0]], [full[1], empty[1]])
    close(ours[0], attention(q[0], k[0], v[0], 0.1)[0], torch.float16)
