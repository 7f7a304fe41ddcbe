"""torch_npu 2.13.0's companion ops (spec 25.2): .out with a workspace, get_max_workspace, infer_output, v2 twins,
in the reference, as look-alike torch ops, and in the stand-in torch_npu, against float64 goldens."""

from __future__ import annotations

import pytest
import torch
from fake_npu import CALLS
from fake_npu import torch_npu as fake_torch_npu
from golden import attention

from fia_kit import FIAArgumentError, reference
from fia_kit.backends import lookalike

B, N, S, D = 2, 2, 4, 8


def _inputs(gen):
    q = torch.randn(B, N, 1, D, generator=gen)
    k, v = (torch.randn(B, N, S, D, generator=gen) for _ in range(2))
    return q, k, v


def _golden(q, k, v, lens, scale):
    return torch.stack([attention(q[b], k[b, :, :n], v[b, :, :n], scale)[0] for b, n in enumerate(lens)])


def test_acl_graph_capture_pattern_through_the_stand_in(gen):
    """vllm-ascend's ACL-graph decode: workspace once, then .out into preallocated buffers, out=[out, lse]."""
    q, k, v = _inputs(gen)
    kwargs = dict(query=q, key=k, value=v, num_heads=N, input_layout="BNSD", scale=0.3,
                  actual_seq_lengths_kv=[3, 4])
    workspace = fake_torch_npu._npu_fused_infer_attention_score_get_max_workspace(**kwargs)
    out_buf = torch.empty_like(q)
    lse_placeholder = torch.empty(1, dtype=q.dtype)  # callers pass this when the LSE is not asked for
    before = lse_placeholder.clone()
    result = fake_torch_npu.npu_fused_infer_attention_score.out(**kwargs, workspace=workspace,
                                                                out=[out_buf, lse_placeholder])
    assert result[0] is out_buf and CALLS[-1].schema == "torch_npu.v1.out" and not CALLS[-1].problems
    torch.testing.assert_close(out_buf.double(), _golden(q, k, v, [3, 4], 0.3), atol=1e-5, rtol=1e-5)
    assert torch.equal(lse_placeholder, before) or torch.isnan(before).any()


def test_v2_out_with_lse_and_infer_output(gen):
    q, k, v = _inputs(gen)
    kw = dict(num_query_heads=N, input_layout="BNSD", softmax_scale=0.3, return_softmax_lse=True)
    out, lse = fake_torch_npu._npu_fused_infer_attention_score_v2_infer_output(q, v, num_query_heads=N,
                                                                              input_layout="BNSD",
                                                                              return_softmax_lse=True)
    assert out.shape == (B, N, 1, D) and lse.shape == (B, N, 1, 1) and lse.dtype == torch.float32
    fake_torch_npu.npu_fused_infer_attention_score_v2.out(q, k, v, out=[out, lse], **kw)
    for b in range(B):
        want, want_lse = attention(q[b], k[b], v[b], 0.3)
        torch.testing.assert_close(out[b].double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b, ..., 0].double(), want_lse, atol=1e-5, rtol=1e-5)


def test_stand_in_refuses_keywords_the_schema_lacks(gen):
    q, k, v = _inputs(gen)
    with pytest.raises(TypeError, match="not in torch_npu.v1.get_max_workspace"):
        fake_torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, k, v, num_heads=N, workspace=None)
    with pytest.raises(TypeError, match="not in torch_npu.v1.infer_output"):
        fake_torch_npu._npu_fused_infer_attention_score_infer_output(q, v, num_heads=N, scale=0.1)


def test_reference_out_refuses_a_wrong_buffer(gen):
    q, k, v = _inputs(gen)
    with pytest.raises(FIAArgumentError, match="attention_out.*shape"):
        reference.npu_fused_infer_attention_score_out(q, k, v, num_heads=N, input_layout="BNSD",
                                                      out=[torch.empty(B, N, 2, D), torch.empty(1)])
    with pytest.raises(FIAArgumentError, match="softmax_lse"):
        reference.npu_fused_infer_attention_score_out(q, k, v, num_heads=N, input_layout="BNSD",
                                                      softmax_lse_flag=True, out=[torch.empty_like(q), torch.empty(1)])
    with pytest.raises(FIAArgumentError, match="num_heads"):  # the workspace query validates the call
        reference.npu_fused_infer_attention_score_get_max_workspace(q, k, v, num_heads=3, input_layout="BNSD")


def test_lookalike_companions_compile_as_graph_nodes(gen):
    """A captured decode step: infer_output allocates, .out writes; torch.compile(fullgraph) keeps both as ops."""
    q, k, v = _inputs(gen)
    infer = lookalike.companion("torch_npu.v1.infer_output")
    write = lookalike.companion("torch_npu.v1.out")
    workspace = lookalike.companion("torch_npu.v1.get_max_workspace")

    def step(q, k, v):
        out, lse = infer(q, v, input_layout="BNSD", num_heads=N, softmax_lse_flag=True)
        ws = workspace(q, k, v, input_layout="BNSD", num_heads=N, scale=0.3, softmax_lse_flag=True)
        write(q, k, v, input_layout="BNSD", num_heads=N, scale=0.3, softmax_lse_flag=True, workspace=ws,
              attention_out=out, softmax_lse=lse)
        return out, lse

    out, lse = torch.compile(step, fullgraph=True, backend="eager")(q, k, v)
    for b in range(B):
        want, want_lse = attention(q[b], k[b], v[b], 0.3)
        torch.testing.assert_close(out[b].double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b, ..., 0].double(), want_lse, atol=1e-5, rtol=1e-5)
