"""The ``npu-graph`` backend: TorchAir graph mode, as in the founding document's example (spec 1.4).

    model = torch.compile(OpModule(tng.ops.npu_fused_infer_attention_score[_v2], keywords),
                          backend=tng.get_npu_backend(compiler_config=config), dynamic=False, fullgraph=True)

``tng.ops.*`` take the actual lengths as int64 *device* tensors (tiling sinks to the device, so no host-to-device
copy) and run only in max-autotune (GE graph) mode; their eager kernels raise NotImplementedError.
Off the box, the ``compiled`` backend is the stand-in: the same module around the kit's TorchAir-schema look-alike
op (``torch.ops.fia_kit.air_*``) with the same tensor lengths.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from ..call import FIACall
from ..environment import import_torch_npu
from ..planning import Plan
from .bindings import Binding, bind, call_keywords, target_of
from .model import OpModule
from .npu import op_of
from .registry import Runner, RunOptions


@dataclass(frozen=True)
class GraphOptions:
    """The CompilerConfig options users of the op need.

    Attributes:
        mode: config.mode; tng.ops need "max-autotune" (GE graph mode).
        tiling_schedule_optimize: config.experimental_config.tiling_schedule_optimize (tiling sinking). With it,
            list-typed lengths cost a host-to-device copy per step, which is why tng.ops take device tensors.
        graph_dump: config.debug.graph_dump.type, e.g. "pbtxt" (None: no dump).
    """

    mode: str = "max-autotune"
    tiling_schedule_optimize: bool = False
    graph_dump: str | None = None


def compiler_config(torchair: ModuleType, options: GraphOptions) -> Any:
    """A ``torchair.configs.compiler_config.CompilerConfig`` with ``options`` set."""
    config = importlib.import_module(f"{torchair.__name__}.configs.compiler_config").CompilerConfig()
    config.mode = options.mode
    if options.tiling_schedule_optimize:
        config.experimental_config.tiling_schedule_optimize = True
    if options.graph_dump:
        config.debug.graph_dump.type = options.graph_dump
    return config


def graph_binding(call: FIACall, torchair: ModuleType, device: torch.device) -> tuple[Any, Binding]:
    """``tng.ops``'s op for the call's version and its keywords (lengths as int64 tensors on ``device``)."""
    target = target_of(call, graph=True)
    fn = op_of(torchair.ops, call.form)
    return fn, bind(fn, call_keywords(call, target, device), target)


def prepare(plan: Plan, run_options: RunOptions) -> Runner:
    """A runner of the compiled TorchAir model on ``run_options.device`` (default "npu").

    ``torch_npu``/``torchair`` default to the installed modules (torchair imports only after torch_npu).
    """
    if run_options.torch_npu is None:
        import_torch_npu()  # torchair imports only once torch_npu is loaded
    torchair = run_options.torchair or importlib.import_module("torchair")
    device = torch.device(run_options.device or "npu")
    fn, binding = graph_binding(plan.call, torchair, device)
    module = OpModule(fn, binding.keywords)
    config = compiler_config(torchair, run_options.graph_options or GraphOptions())
    compiled = torch.compile(module, backend=torchair.get_npu_backend(compiler_config=config), dynamic=False,
                             fullgraph=True)
    call = plan.call
    inputs = module.inputs(*(t.to(device) for t in (call.query, call.key, call.value)), binding.keywords)

    def go() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return compiled(*inputs)
    return Runner(go, device, binding.dropped)
