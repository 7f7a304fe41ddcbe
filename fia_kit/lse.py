"""The softmax LSE's sentinels per kernel route, and merging partial (attention_out, lse) pairs (spec 7, 8, 25.1).

What the op writes as the LSE of a batch that sees no key depends on the host route the call takes (``Plan.route``,
``fia_kit.rules.routes``) and, on the FIA route, on the kernel that runs it (docs section 22 row 20):

| route | which calls | value |
|---|---|---|
| legacy-ifa | quantised decode, D 256 MHA decode, ... | -3.40282e38 (float32 lowest, IFA's ``InitAllZeroOutput``) |
| fia, "legacy IFA" shaped | BSH/BSND/BNSD, S_q = 1, Q/K D = V D, no rope | float32(-3.4e38) = -3.39999995e38 (``fia_kernel_nonquant.h:346``) |
| fia, otherwise (MLA included) | every other float call | +inf (3e99 overflowing float32; ``fia_kernel_nonquant_mla.h:320``) |
| legacy-pfa, split-fuse | quantised prefill; rope-less TND meeting the split-fuse conditions | +inf |

A log-sum-exp merge gives the two negative sentinels weight 0; +inf gives NaN. vllm-ascend's DCP decode merges with
``torch_npu.npu_attention_update`` (twin: ``fia_kit.npu_attention_update``), whose kernel turns +inf into -inf
first, so every sentinel gets weight 0 there; its chunked-prefill context merge (``common_cp.py::_update_out_and_lse``,
a torch logsumexp) does not, and a +inf from a rank holding none of a request's context gives NaN
(docs/context_parallel.md). ``merge_attention`` is the kit's own merge: every sentinel gets weight 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .errors import FIAArgumentError

if TYPE_CHECKING:
    from .planning import Plan

IFA_NO_KEY_LSE = -3.4028234663852886e38  # -FLT_MAX, float32 lowest, as the legacy IFA kernel writes it
FIA_DECODE_NO_KEY_LSE = -3.3999999521443642e38  # float32(-3.4e38): FLOAT_MIN of fia_kernel_nonquant.h:112
PFA_NO_KEY_LSE = float("inf")
SENTINEL_FLOOR = -3.0e38  # an LSE at or below this is a no-key sentinel (either of the two above)


def no_key_rows(lse: torch.Tensor) -> torch.Tensor:
    """Where ``lse`` holds one of the op's no-key sentinels (+inf, or -3.4e38 / -3.40282e38): a bool tensor."""
    return torch.isposinf(lse) | (lse <= SENTINEL_FLOOR)


def no_key_lse(problem: Plan) -> float:
    """The LSE the op writes for a batch without keys on ``problem``'s route (see the module table)."""
    if problem.route == "legacy-ifa":
        return IFA_NO_KEY_LSE
    legacy_ifa_shaped = (problem.layout.name in ("BSH", "BSND", "BNSD") and problem.decode
                         and problem.head_dim == problem.value_dim)  # GetLegacyIfaFlag, info_parser.cpp:264
    return FIA_DECODE_NO_KEY_LSE if problem.route == "fia" and legacy_ifa_shaped else PFA_NO_KEY_LSE


def merge_attention(outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor],
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge attention computed over disjoint key sets (context-parallel / ring style) into attention over all keys.

    out = sum_k exp(lse_k - lse) * out_k with lse = log sum_k exp(lse_k), in float32 (float64 for float64 inputs).
    A part whose LSE is a no-key sentinel (+inf, -3.4e38 / -3.40282e38 or below -3e38, -inf, or NaN) gets
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
    valid = torch.isfinite(stacked) & (stacked > SENTINEL_FLOOR)
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
