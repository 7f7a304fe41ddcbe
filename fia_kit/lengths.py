"""Actual sequence lengths: per-batch with broadcast, or cumulative for packed layouts (spec 5).

torch_npu takes them as ``SymInt[]``, which torch's argument parser fills from lists, tuples, numpy integer arrays
and 1-D integer tensors (spec 25.2: sglang passes ``np.cumsum(...)``, vllm-ascend numpy slices); TorchAir takes
int64 tensors on the device. All are read here into plain tuples of ints, once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import targets
from .errors import FIAArgumentError


def read_lengths(name: str, value: object) -> tuple[int, ...] | None:
    """Read an actual-length argument as a tuple of ints.

    Args:
        name: the keyword, for error messages.
        value: None, a sequence of ints, a numpy integer array of rank 0 or 1, or an integer tensor of rank 0 or
            1 on any device.
    Returns:
        None when ``value`` is None, else the values.
    """
    if value is None:
        return None
    if _is_numpy_array(value):
        if value.dtype.kind not in "iu":
            raise FIAArgumentError(name, "a numpy length array must have an integer dtype", value)
        if value.ndim > 1:
            raise FIAArgumentError(name, "a numpy length array must be 1-D", value)
        return tuple(int(v) for v in value.reshape(-1).tolist())
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise FIAArgumentError(name, "a length tensor must have an integer dtype (int64 as TorchAir wants)",
                                   value)
        if value.dim() > 1:
            raise FIAArgumentError(name, "a length tensor must be 1-D", value)
        return tuple(int(v) for v in value.reshape(-1).tolist())
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise FIAArgumentError(name, "must be a list or tuple of ints, a numpy integer array or an integer tensor",
                               value)
    values = []
    for v in value:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            v = int(v.item())
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise FIAArgumentError(name, "every length must be an int", value)
        values.append(int(v))
    return tuple(values)


def per_batch_lengths(name: str, values: tuple[int, ...] | None, batch: int, limit: int,
                      limit_name: str) -> tuple[int, ...]:
    """Per-batch lengths for unpacked layouts (spec 5.1).

    None means every batch uses the full ``limit``; one value broadcasts; at least ``batch`` values use the first
    ``batch``. Values must lie in [0, limit].
    """
    if values is None:
        return (limit,) * batch
    if len(values) == 1:
        values = values * batch
    elif len(values) < batch:
        raise FIAArgumentError(name, f"needs 1 value or at least batch size ({batch}) values (spec 5.1)",
                               list(values))
    values = values[:batch]
    for b, v in enumerate(values):
        if not 0 <= v <= limit:
            raise FIAArgumentError(name, f"each value must lie in [0, {limit_name}={limit}] (spec 5.1); "
                                   f"batch {b} has {v}", list(values))
    return values


def cumulative_lengths(name: str, values: tuple[int, ...] | None, total: int, total_name: str,
                       last_rule: str = "at_least") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Starts and lengths of each batch from cumulative lengths (packed layouts, spec 5.2).

    Element b is the total length of batches 0..b: non-decreasing, non-negative, the last at most ``total``.
    ``last_rule`` "equal" (the query's lengths on older CANN: ``fia_kit.targets`` rule tnd_last_length) also
    requires the last to equal ``total``.
    Returns:
        (starts, lengths), one entry per batch.
    """
    if values is None:
        raise FIAArgumentError(name, "is required for packed layouts (TND, NTD, TND_NTD, NTD_TND), as "
                               "cumulative lengths (spec 5.2)", None)
    if not values:
        raise FIAArgumentError(name, "needs at least one value (one per batch)", list(values))
    if len(values) > 4096:
        raise FIAArgumentError(name, "packed layouts allow at most 4096 batches (spec 5.2)", len(values))
    previous = 0
    for b, v in enumerate(values):
        if v < previous:
            per_batch_guess = cumulative(values)
            raise FIAArgumentError(
                name, "packed layouts take CUMULATIVE lengths, which must be non-decreasing (spec 5.2); "
                f"element {b} is {v} after {previous}", list(values),
                hint=f"if these are per-batch lengths, pass their running sum {per_batch_guess}")
        previous = v
    if previous > total:
        raise FIAArgumentError(name, f"the last cumulative length must be at most {total_name}={total} "
                               "(spec 5.2)", list(values))
    if last_rule == "equal" and previous != total:
        raise targets.refuse(name, "tnd_last_length", f"the last cumulative length ({previous}) must equal "
                             f"{total_name}={total}: T > last is only allowed from the 2026-08 kernels on",
                             list(values))
    starts = (0, *values[:-1])
    return starts, tuple(e - s for s, e in zip(starts, values, strict=True))


def cumulative(lengths: Sequence[int]) -> list[int]:
    """Per-batch lengths -> the cumulative form packed layouts take (spec 5.2): [3, 0, 5] -> [3, 3, 8]."""
    out, total = [], 0
    for n in lengths:
        total += int(n)
        out.append(total)
    return out


def _is_numpy_array(value: object) -> bool:
    """Whether ``value`` is a numpy ndarray, without importing numpy when the caller did not."""
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "ndim")
