"""The ``npu`` backend: torch_npu's eager op (v1 or v2), inputs on the NPU, actual lengths as int lists."""

from __future__ import annotations

from types import ModuleType

import torch

from ..call import FIACall
from ..environment import import_torch_npu
from ..errors import FIAArgumentError
from ..planning import Plan
from ..signatures import OP_NAMES
from .bindings import Binding, bind, call_keywords, target_of
from .registry import Runner, RunOptions


def op_of(module: object, form: str) -> object:
    """``module``'s op for ``form`` (torch_npu, or torchair.ops), explaining a release that lacks v2."""
    fn = getattr(module, OP_NAMES[form], None)
    if fn is None:
        version = getattr(module, "__version__", "this release")
        raise FIAArgumentError("form", f"{OP_NAMES[form]} is missing from {version} (v2 first ships in torch_npu "
                               "7.2.0, spec 1.2)", form, hint="convert the call: convert_call(call, 'torch_npu.v1')")
    return fn


def eager_binding(call: FIACall, torch_npu: ModuleType, device: torch.device) -> tuple[object, Binding]:
    """torch_npu's function for the call's version and the keywords it accepts (lists for lengths)."""
    fn = op_of(torch_npu, call.form)
    return fn, bind(fn, call_keywords(call, target_of(call, graph=False), device), target_of(call, graph=False))


def prepare(plan: Plan, options: RunOptions) -> Runner:
    """A runner of the eager op on ``options.device`` (default "npu"), with the binding's dropped keywords.

    ``options.torch_npu`` defaults to the installed module (imported only once the environment probe says it
    imports); tests pass a stand-in with ``device="cpu"``.
    """
    torch_npu = options.torch_npu or import_torch_npu()
    device = torch.device(options.device or "npu")
    call = plan.call
    fn, binding = eager_binding(call, torch_npu, device)
    q, k, v = (t.to(device) for t in (call.query, call.key, call.value))
    return Runner(lambda: fn(q, k, v, **binding.keywords), device, binding.dropped)
