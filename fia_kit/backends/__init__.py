"""Every way of running the op, behind one registry, and a comparison against the reference.

    result = fia_kit.run(target, backend="auto")      # RunResult: outputs, backend used, timings
    table = fia_kit.compare(target, backends=["npu", "npu-graph"])

Rooms: ``registry`` (the one list of backends; ``register_backend(name, prepare)``), ``running`` (``run``),
``comparing`` (``compare``), ``tolerances``, ``examples`` (demo inputs such as ``founding_example``); one module per
built-in backend, registered below in this order:

    reference  the kit's pure-PyTorch op, computing the plan directly (default without an NPU);
    compiled   torch.compile(fullgraph=True) of the kit's look-alike op on CPU/CUDA, the graph-mode stand-in;
    npu        torch_npu's eager op, inputs on the NPU, lengths as int lists;
    npu-graph  TorchAir graph mode (tng.ops, int64 device-tensor lengths, max-autotune);
    flex       torch flex_attention computing the plan independently of the reference (``fia_kit.flex``; the
               default peer of ``compare`` without an NPU).
"""

from __future__ import annotations

from . import compiled, graph, npu, reference_kernel
from . import flex as flex_backend
from .bindings import convert_call, supported_keywords
from .comparing import Comparison, ComparisonRow, compare, default_peers, golden_outputs
from .compiled import captured_graph, recompile_counts
from .examples import founding_example
from .graph import GraphOptions
from .registry import Backend, Runner, RunOptions, backend_names, get_backend, prepare, register_backend
from .running import RunResult, as_call, as_plan, run
from .tolerances import LSE_TOLERANCE, TOLERANCES

__all__ = ["run", "compare", "as_call", "as_plan", "founding_example", "RunResult", "Comparison", "ComparisonRow",
           "GraphOptions", "TOLERANCES", "LSE_TOLERANCE", "convert_call", "supported_keywords", "captured_graph",
           "recompile_counts", "register_backend", "backend_names", "get_backend", "prepare", "Backend",
           "RunOptions", "Runner", "default_peers", "golden_outputs"]

register_backend("reference", reference_kernel.prepare,
                 summary="the kit's pure-PyTorch op, computing the plan directly")
register_backend("compiled", compiled.prepare, usable=lambda report: report.compile_usable(),
                 summary="torch.compile(fullgraph=True) of the kit's look-alike op, the graph-mode stand-in")
register_backend("npu", npu.prepare, usable=lambda report: report.npu_usable(),
                 summary="torch_npu's eager op, inputs on the NPU, lengths as int lists")
register_backend("npu-graph", graph.prepare, usable=lambda report: report.graph_usable(),
                 summary="TorchAir graph mode (tng.ops, int64 device-tensor lengths, max-autotune)")
register_backend("flex", flex_backend.prepare, usable=lambda report: flex_backend.usable(),
                 summary="torch flex_attention, computing the plan independently of the reference")
