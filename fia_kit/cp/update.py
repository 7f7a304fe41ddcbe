"""``npu_attention_update``: a reference twin of ``torch_npu.npu_attention_update``, the kernel's arithmetic and limits.

    out, lse_out = fia_kit.npu_attention_update(lse, local_out, update_type=1)
    # lse: sp tensors (N,) float32; local_out: sp tensors (N, D); out (N, D) in local_out[0]'s dtype; lse_out (N,)

torch_npu's wrapper (Ascend/op-plugin ``op_plugin/ops/opapi/AttentionUpdateKernelNpuOpApi.cpp`` at 7ee0c355)
allocates ``out`` like ``local_out[0]`` and ``lse_out`` like ``lse[0]`` only when ``update_type == 1``; with 0 it
passes an undefined tensor, which Python sees as None. The kernel and its host checks are ops-transformer's
``attention/attention_update`` (snapshot 5778144, 2026-08-21):

* ``op_host/op_api/aclnn_attention_update.cpp``: ``CheckParams`` (Atlas A2/A3) and ``CheckParams_95`` (Ascend950),
  reproduced by ``check_arguments`` as ``FIAArgumentError`` before any compute: update_type 0 or 1; 1 <= sp <= 128
  (A2/A3; ``SP_MAX``) or <= 16 (Ascend950; ``SP_MAX_95``), as many local_out as lse; lse 1-D float32, local_out 2-D
  float32/float16/bfloat16, every lse one shape, every local_out one shape, D a multiple of 8 in [8, 512], lse's N
  equal to local_out's N; on Ascend950 every local_out in local_out[0]'s dtype. Before ops-transformer f286413ed
  (2026-06-08) the A2/A3 limit was 16 too; the twin follows the snapshot (docs/context_parallel.md).
* ``op_kernel/decode_update.h`` (the A2/A3 kernel), reproduced by ``npu_attention_update``, in float32:
  ``ProcessLseInfReplacement`` turns +inf into -inf; then m = max_i lse_i, lse_out = m + log(sum_i exp(lse_i - m)),
  out = sum_i exp(lse_i - lse_out) * local_out_i, with no other guard. Consequences, each a test case:
  a row whose every lse is +inf or -inf gives m = -inf, -inf - (-inf) = NaN, so out and lse_out are NaN;
  a row whose every lse is one negative sentinel (-3.4e38 or -3.40282e38, ``fia_kit.lse``) gives weights
  exp(0) = 1, so out = sum_i local_out_i (0 when those rows are the op's zero rows) and lse_out that value.
  With sp > 16 (``MAX_EFFECTIVE_SP``) the kernel merges in rounds: a dummy partition (lse -1e38, ``DUMMY_LSE``,
  output 0) and the first 15, then the running (lse_out, out) and the next 15, and so on; an all-empty row then
  ends as out 0, lse_out -1e38 instead of NaN.
* The Ascend950 kernel (``op_kernel/arch35/attention_update_*_regbase.h``) replaces +inf by -inf the same way; with
  sp <= 16 there it needs no rounds.
* The output is cast to local_out[0]'s dtype by rounding to nearest (``CopyOut``); the A2/A3 kernel reads every
  local_out in local_out[0]'s dtype (the tiling key is taken from input ``sp``, i.e. local_out[0]), so mixed
  local_out dtypes, which ``CheckParams`` lets through on A2/A3, are refused here rather than computed wrongly
  [inferred: what the device does with them is unknown].

As a look-alike op with torch_npu's schema, for ``torch.compile`` graphs: ``torch.ops.fia_kit.npu_attention_update``
(registered when ``fia_kit.backends.lookalike`` is imported). ``fia_kit.capture`` records this function, the
look-alike and ``torch_npu.npu_attention_update`` as calls of form "update" (docs/capture.md).
``fia_kit.merge_attention`` is the kit's own NaN-free merge; docs/context_parallel.md says how the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import observe, targets
from ..capture import update_arguments
from ..errors import FIAArgumentError

__all__ = ["npu_attention_update", "check_arguments", "max_partitions", "DUMMY_LSE", "ROUND"]

SP_MAX = 128  # aclnn_attention_update.cpp SP_MAX (Atlas A2/A3)
SP_MAX_95 = 16  # aclnn_attention_update.cpp SP_MAX_95 (Ascend950)
ROUND = 16  # decode_update.h MAX_EFFECTIVE_SP: partitions merged in one round
DUMMY_LSE = -1e38  # decode_update.h DUMMY_LSE: the first round's extra partition when sp > ROUND
LSE_DTYPES = (torch.float32,)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SOURCE = "ops-transformer attention_update/op_host/op_api/aclnn_attention_update.cpp"


def max_partitions(product: str | None = None) -> int:
    """The most partitions (sp) the host code takes on ``product`` (default: the current target's)."""
    product = product or targets.current().product
    return SP_MAX_95 if product == "Ascend950" else SP_MAX


def _refuse(parameter: str, rule: str, got: object) -> FIAArgumentError:
    t = targets.current()
    return FIAArgumentError(parameter, f"{rule} [{SOURCE}]", got, target=str(t))


def check_arguments(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor], update_type: int) -> None:
    """Raise ``FIAArgumentError`` where the host code refuses the call (module docstring), in its order:
    update_type, then dtypes before sp on A2/A3 (``CheckParams``) and sp before dtypes on Ascend950
    (``CheckParams_95``), then shapes."""
    if isinstance(update_type, bool) or not isinstance(update_type, int) or update_type not in (0, 1):
        raise _refuse("update_type", "must be 0 (out only) or 1 (out and lse_out)", update_type)
    for name, items in (("lse", lse), ("local_out", local_out)):
        if isinstance(items, torch.Tensor) or not isinstance(items, Sequence) \
                or not all(isinstance(t, torch.Tensor) for t in items):
            raise _refuse(name, "must be a list or tuple of tensors (one per partition)", type(items).__name__)
    product = targets.current().product
    if product == "Ascend950":
        _check_partitions(lse, local_out, product)
        _check_dtypes(lse, local_out, product)
    else:
        _check_dtypes(lse, local_out, product)
        _check_partitions(lse, local_out, product)
    _check_shapes(lse, local_out)


def _check_partitions(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor], product: str) -> None:
    sp_max = max_partitions(product)
    if not 0 < len(lse) <= sp_max:
        raise _refuse("lse", f"must hold 1 to {sp_max} partitions on {product}", len(lse))
    if len(local_out) != len(lse):
        raise _refuse("local_out", f"must hold as many partitions as lse ({len(lse)})", len(local_out))


def _check_dtypes(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor], product: str) -> None:
    for k, t in enumerate(lse):
        if t.numel() and t.dtype not in LSE_DTYPES:
            raise _refuse(f"lse[{k}]", "must be float32", t)
    for k, t in enumerate(local_out):
        if t.numel() and t.dtype not in OUT_DTYPES:
            raise _refuse(f"local_out[{k}]", "must be float32, float16 or bfloat16", t)
        if t.numel() and t.dtype != local_out[0].dtype:
            rule = "must have local_out[0]'s dtype" + ("" if product == "Ascend950" else
                                                        " (the A2/A3 kernel reads every partition in local_out[0]'s "
                                                        "dtype; the host code does not check it) [inferred]")
            raise _refuse(f"local_out[{k}]", rule, t)


def _check_shapes(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor]) -> None:
    if lse[0].dim() != 1:
        raise _refuse("lse[0]", "must be 1-D (N,), N = tokens x heads", lse[0])
    if local_out[0].dim() != 2:
        raise _refuse("local_out[0]", "must be 2-D (N, D)", local_out[0])
    for k in range(1, len(lse)):
        if lse[k].shape != lse[0].shape:
            raise _refuse(f"lse[{k}]", f"every lse must have lse[0]'s shape {tuple(lse[0].shape)}", lse[k])
        if local_out[k].shape != local_out[0].shape:
            raise _refuse(f"local_out[{k}]", f"every local_out must have local_out[0]'s shape "
                          f"{tuple(local_out[0].shape)}", local_out[k])
    n, d = local_out[0].shape
    if not (0 < d <= 512 and d % 8 == 0):
        raise _refuse("local_out", "D (local_out's dim 1) must be a multiple of 8 in [8, 512]", d)
    if lse[0].shape[0] != n:
        raise _refuse("lse + local_out", f"lse's N must equal local_out's N ({n})", lse[0].shape[0])


def _one_round(lse: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """decode_update.h ``Compute`` on (k, N) float32 lse and (k, N, D) float32 outputs."""
    lse = lse.masked_fill(lse == float("inf"), float("-inf"))  # ProcessLseInfReplacement
    top = lse.amax(dim=0)
    lse_out = top + torch.log(torch.exp(lse - top).sum(dim=0))
    weights = torch.exp(lse - lse_out)
    return lse_out, (weights.unsqueeze(-1) * out).sum(dim=0)


def npu_attention_update(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor], update_type: int = 0,
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge sp partial attentions as ``torch_npu.npu_attention_update`` does (module docstring).

    Args:
        lse: sp tensors (N,) float32, each partition's softmax LSE (natural log), N = tokens x heads.
        local_out: sp tensors (N, D) float32 / float16 / bfloat16, each partition's attention output.
        update_type: 0 returns (out, None); 1 returns (out, lse_out).
    Returns:
        out (N, D) in local_out[0]'s dtype; lse_out (N,) float32 when update_type is 1, else None.
    Raises:
        FIAArgumentError: where the host code refuses the call (``check_arguments``), before any compute.
    """
    with observe.observed("fia_kit.npu_attention_update", "update", "op", False,
                          update_arguments(lse, local_out, update_type)):
        check_arguments(lse, local_out, update_type)
        n, d = local_out[0].shape
        dtype = local_out[0].dtype
        if n == 0:
            return torch.empty((0, d), dtype=dtype), (torch.empty((0,)) if update_type == 1 else None)
        lses = torch.stack([t.to(torch.float32) for t in lse])
        outs = torch.stack([t.to(torch.float32) for t in local_out])
        if len(lse) <= ROUND:
            lse_out, out = _one_round(lses, outs)
        else:  # rounds of ROUND - 1 new partitions after a dummy / the running result (Process, CopyInSp)
            lse_out = torch.full((n,), DUMMY_LSE, dtype=torch.float32)
            out = torch.zeros((n, d), dtype=torch.float32)
            for start in range(0, len(lse), ROUND - 1):
                stop = start + ROUND - 1
                lse_out, out = _one_round(torch.cat([lse_out[None], lses[start:stop]]),
                                          torch.cat([out[None], outs[start:stop]]))
        return out.to(dtype), (lse_out if update_type == 1 else None)
