"""The reference FIA op: torch_npu's two signatures, computed exactly to the spec on any torch device.

    out, lse = npu_fused_infer_attention_score(query, key, value, num_heads=8, input_layout="BNSD", ...)
    out, lse = npu_fused_infer_attention_score_v2(query, key, value, num_query_heads=8, ...)

Keyword names and defaults are torch_npu's (spec 1.1, 1.2); v2 also takes the founding TorchAir page's
``actual_seq_lengths`` / ``actual_seq_lengths_kv`` as aliases of ``actual_seq_qlen`` / ``actual_seq_kvlen``.
Actual lengths may be int lists or integer tensors on any device (TorchAir passes int64 device tensors).

Returns ``(attention_out, softmax_lse)``: attention_out in the output layout with the query's dtype; softmax_lse
float32, natural log, (B, N_q, S_q, 1) or (T, N_q, 1), or an empty (0,) tensor unless requested.

Computation is float32, as the op's high-precision path; ``with compute_dtype(torch.float64):`` computes a golden
in float64 (float64 inputs do so by default). Float32 and float64 inputs are the kit's extension: the NPU takes
float16 and bfloat16.
"""

from __future__ import annotations

from typing import Any

import torch

from . import observe
from .call import FIACall, parse_call
from .kernel import ReferenceResult, RowStatus, compute_dtype, run_plan
from .planning import Plan, build_plan

__all__ = [
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
    "compute_dtype",
    "explain",
    "op_outputs",
    "run_call",
    "ReferenceResult",
    "RowStatus",
]


def npu_fused_infer_attention_score(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score (v1), computed by the reference.

    Args:
        query: (B, S_q, N_q*D) BSH, (B, S_q, N_q, D) BSND, (B, N_q, S_q, D) BNSD, (T, N_q, D) TND, (N_q, T, D) NTD.
        key, value: the same layout with N_kv heads, or a paged cache (spec 11) when block_table is given.
        **kwargs: v1's keyword-only parameters (spec 1.1), e.g. num_heads, scale, input_layout, atten_mask,
            sparse_mode, pre_tokens, next_tokens, actual_seq_lengths, actual_seq_lengths_kv, block_table,
            block_size, key_shared_prefix, value_shared_prefix, actual_shared_prefix_len, query_rope, key_rope,
            pse_shift, num_key_value_heads, inner_precise, softmax_lse_flag; quantisation (spec 16):
            antiquant_scale/offset/mode (combined K/V form), key_/value_antiquant_scale/offset/mode (separated form,
            modes 0-5), quant_scale2/quant_offset2 (int8 output), dequant_scale1/quant_scale1/dequant_scale2 (int8
            full quantisation, float32 or npu_trans_quant_param uint64); left padding (spec 15):
            query_padding_size, kv_padding_size.
    Returns:
        (attention_out, softmax_lse); see the module docstring.
    Raises:
        FIAArgumentError: before any compute, for any argument that breaks the op's rules.
    """
    if not observe.watching():
        return op_outputs(build_plan(parse_call("v1", query, key, value, kwargs)))
    with observe.observed(f"{__name__}.npu_fused_infer_attention_score", "v1", "op", False,
                          {"query": query, "key": key, "value": value, **kwargs}):
        return op_outputs(build_plan(parse_call("v1", query, key, value, kwargs)))


def npu_fused_infer_attention_score_v2(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score_v2, computed by the reference.

    Same tensors as v1; v2's names (spec 1.2): num_query_heads, softmax_scale, actual_seq_qlen, actual_seq_kvlen,
    return_softmax_lse, learnable_sink, dequant_scale_key/value, dequant_offset_key/value, key_/value_quant_mode,
    quant_scale_out/quant_offset_out, dequant_scale_query with query_quant_mode=3 (MLA full quantisation).
    ``num_key_value_heads`` defaults to 0 (= num_query_heads). v2 has no shared prefix and no left padding.
    """
    if not observe.watching():
        return op_outputs(build_plan(parse_call("v2", query, key, value, kwargs)))
    with observe.observed(f"{__name__}.npu_fused_infer_attention_score_v2", "v2", "op", False,
                          {"query": query, "key": key, "value": value, **kwargs}):
        return op_outputs(build_plan(parse_call("v2", query, key, value, kwargs)))


def run_call(call: FIACall) -> ReferenceResult:
    """Validate and compute a parsed call, returning outputs with per-row status."""
    return run_plan(build_plan(call))


def explain(form: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any) -> Plan:
    """Validate a call without computing it and return its resolved geometry (lengths, bands, shapes)."""
    return build_plan(parse_call(form, query, key, value, kwargs))


def op_outputs(plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention_out, softmax_lse) of a validated plan as the op returns them: an empty (0,) LSE unless
    requested (spec 4.3)."""
    result = run_plan(plan)
    lse = result.softmax_lse if plan.return_lse else torch.empty(0, dtype=torch.float32, device=plan.query.device)
    return result.attention_out, lse
