"""A one-op ``torch.nn.Module`` for graph compilation, and device-synchronised timing."""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch


class OpModule(torch.nn.Module):
    """``forward(query, key, value, *tensors)`` calls ``op(query, key, value, **keywords)``.

    Tensor keywords (including TorchAir's int64 lengths) are forward inputs, so the graph takes them as inputs and
    new values do not recompile; everything else (ints, lists, strings) is a constant of the graph.
    """

    def __init__(self, op: Callable[..., Any], keywords: Mapping[str, Any]) -> None:
        super().__init__()
        self.op = op
        self.tensor_names = tuple(n for n, v in keywords.items() if isinstance(v, torch.Tensor))
        self.constants = {n: v for n, v in keywords.items() if not isinstance(v, torch.Tensor)}

    def inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               keywords: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """The positional inputs of ``forward`` for these tensors and keywords."""
        return (query, key, value, *(keywords[n] for n in self.tensor_names))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.op(query, key, value, **dict(zip(self.tensor_names, tensors, strict=True)), **self.constants)


def own_forward(module: OpModule) -> Callable[..., Any]:
    """``module.forward`` bound under a copy of its code object.

    Dynamo keeps its compile cache, and its limit of 8 recompiles, per code object. Every OpModule shares one
    ``forward``, so a session compiling more than 8 different calls would hit the limit (a hard error under
    fullgraph=True). A code copy per module gives each compiled call a cache of its own.
    """
    f = OpModule.forward
    fresh = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(fresh, module)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (no-op on CPU); NPU and CUDA through ``torch.npu`` / ``torch.cuda``."""
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[Any, float, float]:
    """Run ``fn`` once (first call: compile, graph build or kernel init) and ``repeat`` more times.

    Returns (last result, first-call seconds, median seconds of the repeats), each device-synchronised.
    """
    def once() -> tuple[Any, float]:
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        return result, time.perf_counter() - start

    result, first = once()
    times = []
    for _ in range(repeat):
        result, seconds = once()
        times.append(seconds)
    times.sort()
    return result, first, times[len(times) // 2] if times else first
