"""The ``flex`` backend: ``fia_kit.flex`` computes the plan through torch's flex_attention, sharing only the plan
with the reference (an independent second opinion off an NPU). Runs where the plan's tensors are (CPU or CUDA)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..flex import current_mode, run_plan
from ..planning import Plan, build_plan
from .registry import Runner, RunOptions


def prepare(plan: Plan, options: RunOptions) -> Runner:
    """A runner of flex on the plan (moved to ``options.device`` when given), in the ``flex_mode`` in force now."""
    device = torch.device(options.device) if options.device is not None else plan.query.device
    if device != plan.query.device:
        plan = build_plan(_moved(plan.call, device))
    mode = current_mode()
    return Runner(lambda: run_plan(plan, mode=mode), device)


def usable() -> tuple[bool, str]:
    """(usable, reason): flex needs dynamo support (it is traced even when it runs eager)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return False, "torch flex_attention needs dynamo, which this Python/platform lacks"
    where = "CPU (eager; compiled for large calls) and CUDA (compiled)" if torch.cuda.is_available() else \
        "CPU (eager; compiled for large calls)"
    return True, f"torch flex_attention on {where}"


def _moved(call, device: torch.device):
    def move(value):
        return value.to(device) if isinstance(value, torch.Tensor) else value
    return replace(call, query=move(call.query), key=move(call.key), value=move(call.value),
                   options={name: move(v) for name, v in call.options.items()})
