"""The reference FIA op: torch_npu's two signatures, computed exactly to the spec on any torch device.

    out, lse = npu_fused_infer_attention_score(query, key, value, num_heads=8, input_layout="BNSD", ...)
    out, lse = npu_fused_infer_attention_score_v2(query, key, value, num_query_heads=8, ...)

Keyword names and defaults are torch_npu's (spec 1.1, 1.2); v2 also takes the founding TorchAir page's
``actual_seq_lengths`` / ``actual_seq_lengths_kv`` as aliases of ``actual_seq_qlen`` / ``actual_seq_kvlen``.
Actual lengths may be int lists or integer tensors on any device (TorchAir passes int64 device tensors).

Returns ``(attention_out, softmax_lse)``: attention_out in the output layout with the query's dtype; softmax_lse
float32, natural log, (B, N_q, S_q, 1) or (T, N_q, 1), or an empty (0,) tensor unless requested.

Companion ops of torch_npu 2.13.0 (spec 25.2), for graph-capture callers: ``npu_fused_infer_attention_score_out``
(``.out`` with a workspace: writes into given outputs), ``npu_fused_infer_attention_score_get_max_workspace``, and
``npu_fused_infer_attention_score_infer_output`` (allocates the outputs), each with a ``_v2`` twin.

Computation is float32, as the op's high-precision path; ``with compute_dtype(torch.float64):`` computes a golden
in float64 (float64 inputs do so by default). Float32 and float64 inputs are the kit's extension: the NPU takes
float16 and bfloat16.
"""

from __future__ import annotations

from typing import Any

import torch

from . import observe
from .call import FIACall, parse_call
from .errors import FIAArgumentError
from .kernel import ReferenceResult, RowStatus, compute_dtype, run_plan
from .planning import Plan, build_plan
from .shapes import infer_output

__all__ = [
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
    "npu_fused_infer_attention_score_out",
    "npu_fused_infer_attention_score_v2_out",
    "npu_fused_infer_attention_score_get_max_workspace",
    "npu_fused_infer_attention_score_v2_get_max_workspace",
    "npu_fused_infer_attention_score_infer_output",
    "npu_fused_infer_attention_score_v2_infer_output",
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


# ------------------------------------------------------------------------------------ companion ops (spec 25.2)

@observe.reported("v1", "out")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_out(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                                        workspace: torch.Tensor | None = None,
                                        attention_out: torch.Tensor | None = None,
                                        softmax_lse: torch.Tensor | None = None,
                                        out: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
                                        **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score.out: the v1 op writing into ``attention_out`` / ``softmax_lse``.

    The outputs come as the schema's keywords or, as torch_npu's Python binding takes them, ``out=[attention_out,
    softmax_lse]``. attention_out must have the op's output shape and dtype (``..._infer_output`` allocates it);
    softmax_lse is written only when the LSE is requested (then it must be the LSE's shape, float32); callers
    that do not ask for it pass a placeholder such as ``torch.empty(1)``, left as is. ``workspace`` (from
    ``..._get_max_workspace``) is accepted and unused: the reference needs none.
    Returns:
        (attention_out, softmax_lse), the tensors given.
    """
    return _write_out(parse_call("v1", query, key, value, kwargs), workspace, attention_out, softmax_lse, out)


@observe.reported("v2", "out")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_v2_out(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                                           workspace: torch.Tensor | None = None,
                                           attention_out: torch.Tensor | None = None,
                                           softmax_lse: torch.Tensor | None = None,
                                           out: tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None = None,
                                           **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score_v2.out; see ``npu_fused_infer_attention_score_out``."""
    return _write_out(parse_call("v2", query, key, value, kwargs), workspace, attention_out, softmax_lse, out)


@observe.reported("v1", "get_max_workspace")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_get_max_workspace(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                                      **kwargs: Any) -> torch.Tensor:
    """torch_npu._npu_fused_infer_attention_score_get_max_workspace: validates the v1 call (FIAArgumentError)
    and returns its workspace, an empty uint8 tensor on the query's device (the reference needs none)."""
    build_plan(parse_call("v1", query, key, value, kwargs))
    return torch.empty(0, dtype=torch.uint8, device=query.device)


@observe.reported("v2", "get_max_workspace")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_v2_get_max_workspace(query: torch.Tensor, key: torch.Tensor,
                                                         value: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace; see the v1 twin."""
    build_plan(parse_call("v2", query, key, value, kwargs))
    return torch.empty(0, dtype=torch.uint8, device=query.device)


@observe.reported("v1", "infer_output")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_infer_output(
        query: torch.Tensor, value: torch.Tensor, *, input_layout: str = "BSH",
        quant_scale2: torch.Tensor | None = None, block_table: torch.Tensor | None = None, num_heads: int = 1,
        num_key_value_heads: int = 0, softmax_lse_flag: bool = False, query_rope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu._npu_fused_infer_attention_score_infer_output: allocate (attention_out, softmax_lse) (uninitialised)
    with the shapes and dtypes of spec 4.3, on the query's device. Reads shapes only (no validation)."""
    return _allocate(query, value, dict(input_layout=input_layout, quant_scale2=quant_scale2,
                                        block_table=block_table, num_heads=num_heads,
                                        num_key_value_heads=num_key_value_heads, softmax_lse_flag=softmax_lse_flag,
                                        query_rope=query_rope))


@observe.reported("v2", "infer_output")  # fia_kit.capture sees it
def npu_fused_infer_attention_score_v2_infer_output(
        query: torch.Tensor, value: torch.Tensor, *, query_dtype: int | None = None, value_dtype: int | None = None,
        input_layout: str = "BSH", quant_scale_out: torch.Tensor | None = None,
        block_table: torch.Tensor | None = None, num_query_heads: int = 1, num_key_value_heads: int = 0,
        return_softmax_lse: bool = False, query_rope: torch.Tensor | None = None, out_dtype: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu._npu_fused_infer_attention_score_v2_infer_output; see the v1 twin. query_dtype / value_dtype
    (HiFloat8 / FP4 storage hints) are Ascend950's and must be None."""
    for name, code in (("query_dtype", query_dtype), ("value_dtype", value_dtype)):
        if code is not None:
            raise FIAArgumentError(name, "HiFloat8 / FP4 storage hints are Ascend950 only, not modelled by the kit "
                                   "(spec 25.3)", code)
    return _allocate(query, value, dict(input_layout=input_layout, quant_scale2=quant_scale_out,
                                        block_table=block_table, num_heads=num_query_heads,
                                        num_key_value_heads=num_key_value_heads,
                                        softmax_lse_flag=return_softmax_lse, query_rope=query_rope,
                                        out_dtype=out_dtype))


def _allocate(query: torch.Tensor, value: torch.Tensor, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    meta = infer_output(query, value, options)
    return (torch.empty(meta.out_shape, dtype=meta.out_dtype, device=query.device),
            torch.empty(meta.lse_shape, dtype=meta.lse_dtype, device=query.device))


def _write_out(call: FIACall, workspace: torch.Tensor | None, attention_out: torch.Tensor | None,
               softmax_lse: torch.Tensor | None, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if out is not None:
        if attention_out is not None or softmax_lse is not None or len(out) != 2:
            raise FIAArgumentError("out", "give out=[attention_out, softmax_lse] or the two keywords, not both",
                                   type(out).__name__)
        attention_out, softmax_lse = out
    for name, t in (("attention_out", attention_out), ("softmax_lse", softmax_lse)):
        if not isinstance(t, torch.Tensor):
            raise FIAArgumentError(name, "the .out overload needs both output tensors (spec 25.2)", t)
    if workspace is not None and not isinstance(workspace, torch.Tensor):
        raise FIAArgumentError("workspace", "must be a tensor (from ..._get_max_workspace) or None", workspace)
    problem = build_plan(call)
    if tuple(attention_out.shape) != problem.out_shape or attention_out.dtype != problem.out_dtype:
        raise FIAArgumentError("attention_out", f"must be the op's output: shape {problem.out_shape}, dtype "
                               f"{problem.out_dtype} (allocate it with ..._infer_output) (spec 4.3, 25.2)",
                               attention_out)
    lse_dtype = torch.float64 if problem.query.dtype == torch.float64 else torch.float32  # float64: kit extension
    if problem.return_lse and (tuple(softmax_lse.shape) != problem.lse_shape or softmax_lse.dtype != lse_dtype):
        raise FIAArgumentError("softmax_lse", f"with the LSE requested it must be {problem.lse_shape} {lse_dtype} "
                               "(spec 4.3, 25.2)", softmax_lse)
    result = run_plan(problem)
    attention_out.copy_(result.attention_out)
    if problem.return_lse:
        softmax_lse.copy_(result.softmax_lse)
    return attention_out, softmax_lse
