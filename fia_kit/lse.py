"""The softmax LSE's sentinels per kernel path, and merging partial (attention_out, lse) pairs (spec 7, 8, 25.1).

What the op writes as the LSE of a row that sees no key depends on the kernel that runs it:

| path | which calls | row without keys | value |
|---|---|---|---|
| IFA (decode) | S_q == 1, and MLA with D = 512 (its decode kernel) | a batch with L_kv (+ prefix) = 0 | -3.40282e38 (float32 lowest, ``InitAllZeroOutput``) |
| PFA (prefill) | everything else | rows outside the band, batches with L_kv = 0 | +inf (3e99 overflowing float32) |

A log-sum-exp merge gives the IFA sentinel weight 0; +inf gives NaN. vllm-ascend's DCP decode merges with
``torch_npu.npu_attention_update`` (twin: ``fia_kit.npu_attention_update``), whose kernel turns +inf into -inf first,
so both sentinels get weight 0 there; its chunked-prefill context merge (``common_cp.py::_update_out_and_lse``, a
torch logsumexp) does not, and a +inf from a rank holding none of a request's context gives NaN
(docs/context_parallel.md). ``merge_attention`` is the kit's own merge: both sentinels get weight 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .errors import FIAArgumentError

if TYPE_CHECKING:
    from .planning import Plan

IFA_NO_KEY_LSE = -3.4028234663852886e38  # float32 lowest, as the IFA kernel writes it
PFA_NO_KEY_LSE = float("inf")


def ifa_path(problem: Plan) -> bool:
    """Whether the op runs ``problem`` on its IFA (decode) kernel: S_q == 1, or MLA with D = 512."""
    return problem.decode or (problem.query_rope is not None and problem.head_dim == 512)


def no_key_lse(problem: Plan) -> float:
    """The LSE the op writes for a batch without keys on ``problem``'s path (see the module table)."""
    return IFA_NO_KEY_LSE if ifa_path(problem) else PFA_NO_KEY_LSE


def merge_attention(outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor],
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge attention computed over disjoint key sets (context-parallel / ring style) into attention over all keys.

    out = sum_k exp(lse_k - lse) * out_k with lse = log sum_k exp(lse_k), in float32 (float64 for float64 inputs).
    A part whose LSE is a no-key sentinel (+inf from the PFA path, -3.4e38 or -inf from the IFA path, or NaN) gets
    weight 0; rows where every part is such a sentinel come out as 0 with the IFA sentinel -3.40282e38. No NaN.

    Args:
        outputs: K tensors of one shape, (..., D), e.g. (B, N, S, D) or (T, N, D) (float or bfloat16/float16).
        lses: K tensors, each ``outputs[k]``'s shape with D replaced by 1, as the op returns softmax_lse
            ((B, N, S, 1) for BNSD output, (T, N, 1) for TND). For a BSND/BSH output transpose the LSE first.
    Returns:
        (out, lse): out in outputs[0]'s dtype and shape, lse float32 (float64 for float64 inputs).
    Raises:
        FIAArgumentError: on an empty list, lengths that differ, or shapes that do not line up.
    """
    if not outputs or len(outputs) != len(lses):
        raise FIAArgumentError("outputs + lses", "need the same number (>= 1) of partial outputs and LSEs",
                               (len(outputs), len(lses)))
    shape = tuple(outputs[0].shape)
    for k, (o, lse) in enumerate(zip(outputs, lses, strict=True)):
        if tuple(o.shape) != shape or tuple(lse.shape) != (*shape[:-1], 1):
            raise FIAArgumentError(f"outputs[{k}] + lses[{k}]", f"every output must be {shape} and every LSE "
                                   f"{(*shape[:-1], 1)} (the output's shape with D -> 1)", (tuple(o.shape),
                                                                                           tuple(lse.shape)))
    dtype = torch.float64 if outputs[0].dtype == torch.float64 else torch.float32
    stacked = torch.stack([lse.to(dtype) for lse in lses])  # (K, ..., 1)
    valid = torch.isfinite(stacked) & (stacked > IFA_NO_KEY_LSE)
    weights_log = stacked.masked_fill(~valid, float("-inf"))
    top = weights_log.amax(dim=0)
    any_valid = valid.any(dim=0)
    safe_top = torch.where(any_valid, top, torch.zeros_like(top))
    weights = torch.exp(weights_log - safe_top)  # 0 for sentinels
    total = weights.sum(dim=0)
    norm = torch.where(any_valid, total, torch.ones_like(total))
    out = sum(w * o.to(dtype) for w, o in zip(weights, outputs, strict=True)) / norm
    lse = torch.where(any_valid, safe_top + torch.log(norm), torch.full_like(top, IFA_NO_KEY_LSE))
    return out.to(outputs[0].dtype), lse
