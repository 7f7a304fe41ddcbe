"""The ``compiled`` backend: ``torch.compile(fullgraph=True)`` of the kit's look-alike op (CPU, or CUDA).

With ``lengths="tensor"`` (default) it is the off-the-box stand-in of TorchAir graph mode: the TorchAir-schema
op ``torch.ops.fia_kit.air_*`` with int64 tensor lengths as graph inputs. ``lengths="list"`` uses the torch_npu
schema (``SymInt[]``), whose values dynamo bakes into the graph: each new list recompiles
(``recompile_counts`` shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..call import FIACall
from ..planning import Plan
from .bindings import call_keywords
from .model import OpModule, own_forward
from .registry import Runner, RunOptions

Lengths = Literal["tensor", "list"]


def op(schema_key: str) -> torch._ops.OpOverload:
    """The look-alike op of ``schema_key``; registers the ``fia_kit`` custom ops on first use, not on import."""
    from .lookalike import op as lookalike_op

    return lookalike_op(schema_key)


def lookalike_target(call: FIACall, lengths: Lengths) -> str:
    """The SCHEMAS key of the look-alike op used: TorchAir's for tensor lengths, torch_npu's for lists."""
    if lengths not in ("tensor", "list"):
        raise ValueError(f"lengths must be 'tensor' or 'list', got {lengths!r}")
    return f"{'torchair' if lengths == 'tensor' else 'torch_npu'}.{call.form}"


def compiled_module(call: FIACall, lengths: Lengths = "tensor", compile_backend: str | object = "aot_eager",
                    device: str | torch.device | None = None):
    """(compiled module, its inputs, device) for the call; ``compile_backend`` "aot_eager" (fast) or "inductor"."""
    device = torch.device(device) if device is not None else call.query.device
    target = lookalike_target(call, lengths)
    keywords = call_keywords(call, target, device)
    module = OpModule(op(target), keywords)
    compiled = torch.compile(own_forward(module), backend=compile_backend, dynamic=False, fullgraph=True)
    inputs = module.inputs(*(t.to(device) for t in (call.query, call.key, call.value)), keywords)
    return compiled, inputs, device


def prepare(plan: Plan, options: RunOptions) -> Runner:
    """A runner of the compiled look-alike op (``options.lengths``, ``compile_backend``, ``device``)."""
    compiled, inputs, device = compiled_module(plan.call, options.lengths, options.compile_backend, options.device)
    return Runner(lambda: compiled(*inputs), device)


def captured_graph(call: FIACall, lengths: Lengths = "tensor") -> torch.fx.GraphModule:
    """The FX graph dynamo captures for a model calling the look-alike op (one call_function node)."""
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append(gm)
        return gm.forward

    compiled, inputs, _ = compiled_module(call, lengths, capture)
    compiled(*inputs)
    return graphs[-1]


def _decode_step(fn, keywords: dict, length_name: str):
    """``step(query, key, value, kv_len)``: the op with ``kv_len`` as its K/V actual lengths."""
    def step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_len):
        return fn(query, key, value, **{**keywords, length_name: kv_len})
    return step


def recompile_counts(call: FIACall, kv_lengths: Sequence[Sequence[int]]) -> dict[str, int]:
    """How many times dynamo compiles one decode step called with each of ``kv_lengths`` in turn.

    The step calls the look-alike op with the K/V lengths as an argument: a Python int list (torch_npu's
    ``SymInt[]``) or an int64 tensor (TorchAir). With ``dynamic=False`` a list is a constant of the graph, so each
    new value recompiles; a tensor is a graph input, so one compile serves every value.
    Resets dynamo's caches before each run. Returns {"list": compiles, "tensor": compiles}.
    """
    import torch._dynamo  # imported here: it takes a second, and only compiling needs it
    from torch._dynamo.testing import CompileCounter

    counts = {}
    for lengths in ("list", "tensor"):
        target = lookalike_target(call, lengths)
        keywords = call_keywords(call, target)
        name = "actual_seq_lengths_kv" if call.form == "v1" else "actual_seq_kvlen"
        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(_decode_step(op(target), keywords, name), backend=counter, dynamic=False, fullgraph=True)
        for values in kv_lengths:
            arg = list(values) if lengths == "list" else torch.tensor(list(values), dtype=torch.int64)
            compiled(call.query, call.key, call.value, arg)
        counts[lengths] = counter.frame_count
    torch._dynamo.reset()
    return counts
