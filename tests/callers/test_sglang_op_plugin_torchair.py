"""sglang's Ascend backend, op-plugin's own FIA tests and TorchAir's documented example, re-created at CPU sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _callers import OP_PLUGIN, SGLANG, attention, caller, causal, close
from fake_npu import torch_npu, torchair
from golden import paged_cache

import fia_kit
from fia_kit import FIAArgumentError

ASCEND = "python/sglang/srt/layers/attention/ascend_backend.py"
OP_TEST = "test/test_custom_ops/test_npu_fused_infer_attention_score.py"
OP_TEST_V2 = "test/test_custom_ops/test_npu_fused_infer_attention_score_v2.py"
OP_TEST_WS = "test/test_custom_ops/test_npu_fused_infer_attention_score_with_workspace.py"
TORCHAIR = ("Ascend/torchair", "4a7757870103bb2fa08306335a68b56088a7b268")
FIA_MASK = ~torch.tril(torch.ones(2048, 2048, dtype=torch.bool))  # sglang's fia_mask / mtp_mask
N, NKV, D, PAGE = 4, 2, 64, 16


def _cum(lengths):
    return np.cumsum(lengths)


# --------------------------------------------------------------------------------------------------- sglang

@caller(SGLANG, ASCEND, "AscendAttnBackend.forward_extend (use_fia, not MLA): one BSND call per request")
def test_sglang_extend_per_request_bsnd(gen):
    lens = [3, 5]
    q = torch.randn(sum(lens), N, D, generator=gen).half()
    k, v = (torch.randn(sum(lens), NKV, D, generator=gen).half() for _ in range(2))
    out = torch.empty_like(q)
    offset = 0
    for n in lens:
        out[offset:offset + n] = torch_npu.npu_fused_infer_attention_score(
            q[None, offset:offset + n], k[None, offset:offset + n], v[None, offset:offset + n], num_heads=N,
            num_key_value_heads=NKV, input_layout="BSND", atten_mask=FIA_MASK.unsqueeze(0), sparse_mode=3,
            scale=0.125, next_tokens=0)[0]
        offset += n
    offset = 0
    for n in lens:
        rows = slice(offset, offset + n)
        want, _ = attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1), 0.125,
                            causal(n, n))
        close(out[rows].transpose(0, 1), want, torch.float16)
        offset += n


@caller(SGLANG, ASCEND, "forward_extend (MLA): TND nope + rope, lengths np.cumsum(extend_seq_lens_cpu)")
def test_sglang_mla_extend_numpy_cumsum_lengths(gen):
    lens = [2, 4]
    qn, kn, v = (torch.randn(sum(lens), N, 128, generator=gen).bfloat16() for _ in range(3))
    qr, kr = (torch.randn(sum(lens), N, 64, generator=gen).bfloat16() for _ in range(2))
    out, _ = torch_npu.npu_fused_infer_attention_score(
        qn, kn, v, query_rope=qr, key_rope=kr, num_heads=N, input_layout="TND", atten_mask=FIA_MASK, sparse_mode=3,
        actual_seq_lengths=_cum(lens), actual_seq_lengths_kv=_cum(lens), scale=0.07, next_tokens=0)
    start = 0
    for n in lens:
        rows = slice(start, start + n)
        want, _ = attention(torch.cat([qn[rows], qr[rows]], -1).transpose(0, 1),
                            torch.cat([kn[rows], kr[rows]], -1).transpose(0, 1), v[rows].transpose(0, 1), 0.07,
                            causal(n, n))
        close(out[rows].transpose(0, 1), want, torch.bfloat16)
        start += n


def _latent_cache(gen, kv_lens, n_kv=1):
    latent = [torch.randn(n_kv, k, 512, generator=gen).bfloat16() * 0.1 for k in kv_lens]
    rope = [torch.randn(n_kv, k, 64, generator=gen).bfloat16() for k in kv_lens]
    kc, table = paged_cache(latent, PAGE, rank=4)  # c_kv.view(-1, N_kv, page_size, kv_lora_rank)
    krc, _ = paged_cache(rope, PAGE, rank=4)
    return latent, rope, kc, krc, table


@caller(SGLANG, ASCEND, "forward_mtp: TND MLA, lengths np.arange(k, k+T, k), workspace + .out, mtp_mask")
def test_sglang_mtp_verify_out(gen):
    draft, kv_lens = 2, [7, 12]
    latent, rope, kc, krc, table = _latent_cache(gen, kv_lens)
    q = torch.randn(draft * 2, N, 512, generator=gen).bfloat16() * 0.1
    qr = torch.randn(draft * 2, N, 64, generator=gen).bfloat16()
    kwargs = dict(query_rope=qr, key_rope=krc, num_heads=N, num_key_value_heads=1, input_layout="TND", scale=0.05,
                  antiquant_mode=0, antiquant_scale=None, block_table=table, block_size=PAGE, sparse_mode=3,
                  atten_mask=FIA_MASK, actual_seq_lengths=np.arange(draft, draft + q.shape[0], draft),
                  actual_seq_lengths_kv=kv_lens)
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, kc, kc, **kwargs)
    out = torch.empty_like(q)
    torch_npu.npu_fused_infer_attention_score.out(q, kc, kc, **kwargs, workspace=workspace,
                                                  out=[out, torch.empty(1, dtype=q.dtype)])
    for b in range(2):
        rows = slice(draft * b, draft * b + draft)
        want, _ = attention(torch.cat([q[rows], qr[rows]], -1).transpose(0, 1), torch.cat([latent[b], rope[b]], -1),
                            latent[b], 0.05, causal(draft, kv_lens[b]))
        close(out[rows].transpose(0, 1), want, torch.bfloat16)


@caller(SGLANG, ASCEND, "forward_decode_graph (not MLA): BSH query, (blocks, page, N*D) caches, workspace + .out")
def test_sglang_decode_graph_bsh(gen):
    kv_lens = [5, 19]
    ks = [torch.randn(NKV, n, D, generator=gen).half() for n in kv_lens]
    vs = [torch.randn(NKV, n, D, generator=gen).half() for n in kv_lens]
    kc, table = paged_cache(ks, PAGE, rank=3)
    vc, _ = paged_cache(vs, PAGE, rank=3)
    q = torch.randn(2, 1, N * D, generator=gen).half()
    kwargs = dict(block_table=table, block_size=PAGE, num_heads=N, num_key_value_heads=NKV, input_layout="BSH",
                  scale=0.125, actual_seq_lengths_kv=kv_lens)
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, kc, vc, **kwargs)
    output = torch.empty(2, 1, N * D, dtype=q.dtype)
    torch_npu.npu_fused_infer_attention_score.out(q, kc, vc, **kwargs, workspace=workspace,
                                                  out=[output, torch.empty(1, dtype=q.dtype)])
    for b in range(2):
        want, _ = attention(q[b].view(1, N, D).transpose(0, 1), ks[b], vs[b], 0.125)
        close(output[b].view(1, N, D).transpose(0, 1), want, torch.float16)


@caller(SGLANG, ASCEND, "forward_decode_graph (MLA): BNSD query, (blocks, N_kv, page, 512) cache, sparse_mode=0")
def test_sglang_decode_graph_mla_bnsd(gen):
    kv_lens = [4, 17]
    latent, rope, kc, krc, table = _latent_cache(gen, kv_lens)
    q = torch.randn(2, N, 1, 512, generator=gen).bfloat16() * 0.1
    qr = torch.randn(2, N, 1, 64, generator=gen).bfloat16()
    kwargs = dict(query_rope=qr, key_rope=krc, num_heads=N, num_key_value_heads=1, block_table=table,
                  block_size=PAGE, input_layout="BNSD", scale=0.05, actual_seq_lengths_kv=kv_lens, antiquant_mode=0,
                  antiquant_scale=None, sparse_mode=0)
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, kc, kc, **kwargs)
    output = torch.empty_like(q)
    torch_npu.npu_fused_infer_attention_score.out(q, kc, kc, **kwargs, workspace=workspace,
                                                  out=[output, torch.empty(1, dtype=q.dtype)])
    for b in range(2):
        want, _ = attention(torch.cat([q[b], qr[b]], -1), torch.cat([latent[b], rope[b]], -1), latent[b], 0.05)
        close(output[b], want, torch.bfloat16)


@caller(SGLANG, ASCEND, "forward_decode (use_fia, not MLA): BSND query, kv lengths = seq_lens_cpu.int() tensor")
def test_sglang_decode_eager_int32_tensor_lengths(gen):
    kv_lens = [3, 20]
    ks = [torch.randn(NKV, n, D, generator=gen).half() for n in kv_lens]
    vs = [torch.randn(NKV, n, D, generator=gen).half() for n in kv_lens]
    kc, table = paged_cache(ks, PAGE, rank=3)
    vc, _ = paged_cache(vs, PAGE, rank=3)
    q = torch.randn(2, 1, N, D, generator=gen).half()
    out, _ = torch_npu.npu_fused_infer_attention_score(
        q, kc, vc, num_heads=N, num_key_value_heads=NKV, input_layout="BSND", atten_mask=None, block_size=PAGE,
        block_table=table, actual_seq_lengths_kv=torch.tensor(kv_lens).int(), scale=0.125)
    for b in range(2):
        close(out[b].transpose(0, 1), attention(q[b].transpose(0, 1), ks[b], vs[b], 0.125)[0], torch.float16)


# ------------------------------------------------------------------------------------------------ op-plugin

@pytest.mark.parametrize("s_q", [64, 1])  # the PFA and IFA return_lse tests
@caller(OP_PLUGIN, OP_TEST, "test_npu_fused_infer_attention_score_{pfa,ifa}_return_lse: BNSD, pre/next 65535")
def test_op_plugin_bnsd_return_lse(gen, s_q):
    q = torch.randn(1, N, s_q, 128, generator=gen).half()
    k, v = (torch.randn(1, N, 96, 128, generator=gen).half() for _ in range(2))
    scale = 1 / 0.0078125 / 128  # their 1/0.0078125 = 128 over D=128 keeps scores O(1) at these sizes
    out, lse = torch_npu.npu_fused_infer_attention_score(q, k, v, num_heads=N, input_layout="BNSD", scale=scale,
                                                         pre_tokens=65535, next_tokens=65535, softmax_lse_flag=True)
    want, want_lse = attention(q[0], k[0], v[0], scale)
    close(out[0], want, torch.float16)
    torch.testing.assert_close(lse[0, ..., 0].double(), want_lse, atol=1e-3, rtol=1e-3)


@caller(OP_PLUGIN, OP_TEST, "custom_op_exec_ntd_tnd: NTD_TND with actual lengths")
def test_op_plugin_ntd_tnd(gen):
    q = torch.randn(2, 9, 64, generator=gen).half()  # (N, T, D)
    k, v = (torch.randn(2, 11, 64, generator=gen).half() for _ in range(2))
    out, _ = torch_npu.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="NTD_TND", scale=0.125,
                                                       pre_tokens=65535, next_tokens=65535, actual_seq_lengths=[4, 9],
                                                       actual_seq_lengths_kv=[5, 11])
    assert out.shape == (9, 2, 64)  # TND output
    close(out[:4].transpose(0, 1), attention(q[:, :4], k[:, :5], v[:, :5], 0.125)[0], torch.float16)
    close(out[4:].transpose(0, 1), attention(q[:, 4:], k[:, 5:], v[:, 5:], 0.125)[0], torch.float16)


@caller(OP_PLUGIN, OP_TEST_V2, "test_npu_fused_infer_attention_score_v2_ntd_tnd: all-ones, Q/K D 192, V D 128")
def test_op_plugin_v2_ntd_tnd_192_128():
    q, k = torch.ones(2, 32, 192).bfloat16(), torch.ones(2, 32, 192).bfloat16()
    v = torch.ones(2, 32, 128).bfloat16()
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(q, k, v, num_query_heads=2, input_layout="NTD_TND",
                                                          softmax_scale=1 / 0.0078125, pre_tokens=65535,
                                                          next_tokens=65535, actual_seq_qlen=[32],
                                                          actual_seq_kvlen=[32])
    assert out.shape == (32, 2, 128) and torch.equal(out, torch.ones_like(out))  # their golden: ones


@caller(OP_PLUGIN, OP_TEST_V2, "test_npu_fused_infer_attention_score_v2_sink: TND, learnable_sink, all ones")
def test_op_plugin_v2_sink_all_ones():
    q = k = v = torch.ones(16, 8, 64).bfloat16()
    sink = torch.ones(8).bfloat16()
    out, _ = torch_npu.npu_fused_infer_attention_score_v2(q, k, v, learnable_sink=sink, num_query_heads=8,
                                                          input_layout="TND", softmax_scale=1 / 0.0078125,
                                                          pre_tokens=65535, next_tokens=65535, actual_seq_qlen=[16],
                                                          actual_seq_kvlen=[16], return_softmax_lse=True)
    # every score is 128; the sink logit 1 adds exp(1 - 128) to the denominator: V's ones times 16e^128/(16e^128+e)
    want = 16 / (16 + np.exp(1.0 - 128.0))
    close(out.double(), torch.full((16, 8, 64), want, dtype=torch.float64), torch.bfloat16)


@caller(OP_PLUGIN, OP_TEST_V2, "test_npu_fused_infer_attention_score_v2 (TND PA): NZ cache key.reshape(1,1,128,8,16)")
def test_op_plugin_v2_tnd_paged_nz(gen):
    key = torch.randn(128, 1, 128, generator=gen).bfloat16()  # (T, N, D), one sequence of 128 tokens
    value = torch.randn(128, 1, 128, generator=gen).bfloat16()
    query = torch.randn(4, 1, 128, generator=gen).bfloat16()
    # their cache: key.reshape(1, 1, 128, 8, 16) then (0, 1, 3, 2, 4): block 0, N 1, D/16, block_size, 16
    key_cache = key.reshape(1, 1, 128, 8, 16).permute(0, 1, 3, 2, 4).contiguous()
    value_cache = value.reshape(1, 1, 128, 8, 16).permute(0, 1, 3, 2, 4).contiguous()
    out, lse = torch_npu.npu_fused_infer_attention_score_v2(
        query, key_cache, value_cache, num_query_heads=1, input_layout="TND", softmax_scale=0.08,
        block_table=torch.zeros(1, 1, dtype=torch.int32), block_size=128, actual_seq_qlen=[4],
        actual_seq_kvlen=[128], return_softmax_lse=True)
    want, _ = attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), 0.08)
    close(out.transpose(0, 1), want, torch.bfloat16)


@caller(OP_PLUGIN, OP_TEST_V2, "test_npu_fused_infer_attention_score_v2_page_attention (Ascend950): BNSD prefill PA")
def test_op_plugin_v2_bnsd_prefill_paged_all_ones():
    query = torch.ones(2, 1, 256, 128).half()
    cache = torch.ones(4, 1, 128, 128).half()
    table = torch.ones(2, 2, dtype=torch.int32)  # both batches read block 1 twice
    with fia_kit.target(product="Ascend950"):
        out, _ = torch_npu.npu_fused_infer_attention_score_v2(
            query, cache, cache, num_query_heads=1, input_layout="BNSD", block_table=table, actual_seq_qlen=[256],
            actual_seq_kvlen=[256], block_size=128, pre_tokens=65535, next_tokens=65535)
    assert torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("lse", [True, False])
@caller(OP_PLUGIN, OP_TEST_WS, "custom_op_exec with workspace: get_max_workspace, infer_output, .out (IFA)")
def test_op_plugin_with_workspace(gen, lse):
    q = torch.randn(1, N, 1, 128, generator=gen).half()
    k, v = (torch.randn(1, N, 64, 128, generator=gen).half() for _ in range(2))
    common = dict(num_heads=N, input_layout="BNSD", scale=128 ** -0.5, pre_tokens=65535, next_tokens=65535,
                  softmax_lse_flag=lse)
    workspace = torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **common)
    attention_out, softmax_lse = torch_npu._npu_fused_infer_attention_score_infer_output(
        q, v, num_heads=N, input_layout="BNSD", softmax_lse_flag=lse)
    if not lse:
        softmax_lse = torch.randn(1, dtype=torch.float32)  # their placeholder when the LSE is off
    torch_npu.npu_fused_infer_attention_score.out(q, k, v, workspace=workspace, **common,
                                                  out=[attention_out, softmax_lse])
    want, want_lse = attention(q[0], k[0], v[0], 128 ** -0.5)
    close(attention_out[0], want, torch.float16)
    if lse:
        torch.testing.assert_close(softmax_lse[0, ..., 0].double(), want_lse, atol=1e-4, rtol=1e-4)


@caller(OP_PLUGIN, OP_TEST_WS, "custom_op_exec: _infer_output(query, key, value, ...) with three tensors: refused")
def test_op_plugin_infer_output_with_three_tensors_is_refused(gen):
    """The schema takes (query, value); a third positional tensor is a TypeError in torch's parser too."""
    q = torch.randn(1, N, 1, 128, generator=gen).half()
    with pytest.raises(TypeError, match="takes"):
        torch_npu._npu_fused_infer_attention_score_infer_output(q, q, q, num_heads=N, input_layout="BNSD")


@caller(OP_PLUGIN, OP_TEST, "test_npu_fused_infer_attention_score_tnd: a 4-D query with input_layout TND: refused")
def test_op_plugin_tnd_with_a_4d_query_is_refused(gen):
    """The wheel's meta refuses it (get_query_and_attention_out_layout: queryDims must be 3); so does the kit."""
    q = torch.randn(1, N, 1, 128, generator=gen).half()
    with pytest.raises(FIAArgumentError, match="query.*3-D"):
        torch_npu.npu_fused_infer_attention_score(q, q, q, num_heads=N, input_layout="TND", softmax_lse_flag=True)


# -------------------------------------------------------------------------------------------------- TorchAir

@caller(TORCHAIR, "docs/context/npu_fused_infer_attention_score.md", "调用示例: tng.ops, BNSD, shared prefix, int64 "
        "tensor lengths, torch.compile(backend=npu_backend, fullgraph=True)")
def test_torchair_documented_example_graph_mode(gen):
    q = torch.randn(1, 2, 12, 64, generator=gen).half()
    k, v = (torch.randn(1, 2, 40, 64, generator=gen).half() for _ in range(2))
    kp, vp = (torch.randn(1, 2, 24, 64, generator=gen).half() for _ in range(2))
    lens, lens_kv, lens_prefix = (torch.tensor([n]) for n in (5, 20, 7))  # int64 tensors, as TorchAir wants

    def forward():
        return torchair.ops.npu_fused_infer_attention_score(
            q, k, v, actual_seq_lengths=lens, actual_seq_lengths_kv=lens_kv, key_shared_prefix=kp,
            value_shared_prefix=vp, actual_shared_prefix_len=lens_prefix, num_heads=2, input_layout="BNSD",
            scale=0.125, pre_tokens=65535, next_tokens=65535)

    out, _ = torch.compile(forward, backend=torchair.get_npu_backend(), dynamic=False, fullgraph=True)()
    keys, values = torch.cat([kp[0, :, :7], k[0, :, :20]], 1), torch.cat([vp[0, :, :7], v[0, :, :20]], 1)
    close(out[0, :, :5], attention(q[0, :, :5], keys, values, 0.125)[0], torch.float16)
    assert not out[0, :, 5:].any()
