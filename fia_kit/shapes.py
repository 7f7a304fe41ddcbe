"""Output metadata of the op without computing it: spec 4.3's shape inference, in one place.

This is what torch_npu's and TorchAir's Meta kernels do (and ``_npu_fused_infer_attention_score_infer_output``).
``infer_output`` runs on fake tensors, so it reads only shapes and dtypes and validates nothing; the reference's
validation (``fia_kit.planning``) uses the same ``out_shape`` / ``lse_shape`` rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import paged
from .layouts import Layout, parse_layout, to_canonical

# v2's dtype codes (spec 1.2) that out_dtype may take, as torch_npu's meta maps them (spec 25.2).
DTYPE_CODES: dict[int, torch.dtype] = {1: torch.int8, 5: torch.float16, 15: torch.bfloat16,
                                       23: torch.float8_e5m2, 24: torch.float8_e4m3fn, 290: torch.uint8,
                                       291: torch.float8_e5m2, 292: torch.float8_e4m3fn}
# Codes of dtypes only Ascend950 takes (FP8, HiFloat8, FP4): not modelled by the kit (spec 25.3).
ASCEND950_DTYPE_CODES: dict[int, str] = {23: "float8_e5m2", 24: "float8_e4m3fn", 290: "hifloat8",
                                         291: "float8_e5m2", 292: "float8_e4m3fn", 296: "float4_e2m1",
                                         297: "float4_e1m2"}
# torch dtypes of FP8 / MxFP8 scales / FP4 tensors: Ascend950 inputs the kit does not model (spec 25.3).
ASCEND950_TORCH_DTYPES = (torch.float8_e5m2, torch.float8_e4m3fn, torch.float8_e8m0fnu, torch.float4_e2m1fn_x2)


@dataclass(frozen=True)
class OutputMeta:
    """Shapes and dtypes of (attention_out, softmax_lse)."""

    out_shape: tuple[int, ...]
    out_dtype: torch.dtype
    lse_shape: tuple[int, ...]
    lse_dtype: torch.dtype


def value_head_dim(value: torch.Tensor, query_part: str, num_kv_heads: int, paged_kv: bool) -> int:
    """Spec 4.3 value_d: paged ranks 3/4/5 as ``fia_kit.paged``; else BSH: size(2)/N_kv, others the last axis.

    A packed int4 value (int32 storage, 8 values per element) multiplies it by 8.
    """
    if paged_kv:
        d = paged.cache_head_dim(value, num_kv_heads)
    else:
        d = value.shape[-1] // num_kv_heads if query_part == "BSH" else value.shape[-1]
    return d * 8 if value.dtype == torch.int32 else d


def infer_output(query: torch.Tensor, value: torch.Tensor, options: Mapping[str, Any]) -> OutputMeta:
    """attention_out and softmax_lse metadata of a call (spec 4.3).

    Args:
        query, value: the call's tensors (real or fake).
        options: canonical (v1-named) options, as ``FIACall.options``: input_layout, num_heads,
            num_key_value_heads, block_table, quant_scale2, query_rope, softmax_lse_flag, and v2's out_dtype.
    Returns:
        attention_out: the query's (B, N_q, S_q) in the output layout with D = value_d (query D where value_d is
        0); dtype int8 with quant_scale2, else (int8 query) out_dtype / query_rope's dtype / float16, else the
        query's. softmax_lse: float32 (T, N_q, 1) for the TND family or (B, N_q, S_q, 1), or (0,) without the flag
        (float64 for float64 queries: the kit's extension, as its reference). torch_npu before 7.2.0 returned (1,)
        instead of (0,) (spec 4.3).
    """
    layout = parse_layout(options["input_layout"])
    num_heads = options["num_heads"]
    num_kv_heads = options["num_key_value_heads"] or num_heads
    q4 = to_canonical(query, layout.query, num_heads)
    d = value_head_dim(value, layout.query, num_kv_heads, options["block_table"] is not None)
    lse = lse_shape(layout, q4, options["softmax_lse_flag"])
    lse_dtype = torch.float64 if query.dtype == torch.float64 and lse != (0,) else torch.float32
    return OutputMeta(out_shape(layout, q4, d), _out_dtype(query, options), lse, lse_dtype)


def out_shape(layout: Layout, q4: torch.Tensor, value_dim: int) -> tuple[int, ...]:
    """attention_out's shape: the canonical query's (B, N_q, S_q) in the output layout with D = value_dim (the
    query's D where value_dim is 0); BSH output is (B, S_q, N_q * D) (spec 4.3)."""
    b, n, s, dq = q4.shape
    d = value_dim or dq
    return {"BSH": (b, s, n * d), "BSND": (b, s, n, d), "BNSD": (b, n, s, d), "NBSD": (n, b, s, d),
            "TND": (s, n, d), "NTD": (n, s, d), "NSD": (n, s, d)}[layout.out]


def lse_shape(layout: Layout, q4: torch.Tensor, requested: bool) -> tuple[int, ...]:
    """softmax_lse's shape (spec 4.3): (T, N_q, 1) for the TND family, else (B, N_q, S_q, 1), both taken from the
    query layout; (0,) when not requested."""
    if not requested:
        return (0,)
    b, n, s, _ = q4.shape
    return (s, n, 1) if layout.packed else (b, n, s, 1)


def _out_dtype(query: torch.Tensor, options: Mapping[str, Any]) -> torch.dtype:
    code = options.get("out_dtype")
    if options["quant_scale2"] is not None:
        return DTYPE_CODES.get(code, torch.int8) if code is not None else torch.int8
    if query.dtype == torch.int8:
        if code is not None:
            return DTYPE_CODES[code]
        rope = options["query_rope"]
        return rope.dtype if rope is not None else torch.float16
    return query.dtype


def key_axis_width(s_kv: int, kv_lens: Sequence[int], *, packed: bool, paged_capacity: int | None = None,
                   prefix_len: int = 0) -> int:
    """Columns of the key axis atten_mask and pse_shift must cover (spec 6.2, 9): the shared prefix, then S_kv.

    S_kv is ``paged_capacity`` (block_table.shape[1] * block_size) with a paged cache, the longest L_kv for packed
    (TND-family) layouts, else the key's S axis ``s_kv``.
    """
    if paged_capacity is not None:
        axis = paged_capacity
    elif packed:
        axis = max(kv_lens, default=0)
    else:
        axis = s_kv
    return prefix_len + axis
