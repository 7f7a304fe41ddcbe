"""``fia_kit.run``: one entry point for every backend, taking a plan.

    result = fia_kit.run(target, backend="auto")      # RunResult: outputs, backend used, timings

``target`` is a ``Plan`` or anything ``fia_kit.plan`` takes (a parsed or captured ``FIACall``, a
``fia_kit.case.Case``, a built call); it is planned (parsed and validated) once, and the backend gets the plan.
"auto" is "npu" when ``fia_kit.environment.detect()`` finds a usable NPU, else "reference".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..call import FIACall
from ..environment import detect
from ..planning import Plan, plan
from .graph import GraphOptions
from .model import timed
from .registry import RunOptions, prepare


@dataclass(frozen=True)
class RunResult:
    """What one backend returned for one call.

    Attributes:
        attention_out: in the output layout, on the backend's device.
        softmax_lse: float32 (B, N_q, S_q, 1) / (T, N_q, 1), natural log, or (0,) when not requested.
        backend: the backend that ran ("auto" resolved).
        timings: wall seconds, device-synchronised: "first" (includes compile / graph build / kernel init) and
            "median" of ``repeat`` further calls.
        dropped_keywords: keywords left out because the installed op lacks them (each was at its default).
    """

    attention_out: torch.Tensor
    softmax_lse: torch.Tensor
    backend: str
    timings: dict[str, float]
    dropped_keywords: tuple[str, ...] = ()


def as_plan(target: Any, form: str | None = None) -> Plan:
    """``target`` as a plan: a Plan as is, else ``fia_kit.plan(target, form=form)`` (parsed and validated once)."""
    return target if isinstance(target, Plan) else plan(target, form=form)


def as_call(target: Any, form: str | None = None) -> FIACall:
    """The parsed call behind ``target`` (a Plan, FIACall, case or built call), validated."""
    return as_plan(target, form).call


def run(target: Any, backend: str = "auto", *, repeat: int = 1, form: str | None = None,
        graph_options: GraphOptions | None = None, compile_backend: str = "aot_eager", lengths: str = "tensor",
        torch_npu: Any = None, torchair: Any = None, device: str | torch.device | None = None) -> RunResult:
    """Run ``target`` on one backend and time it.

    Args:
        target: a Plan or anything ``fia_kit.plan`` takes; ``form`` picks the form a case is built in (default:
            the case's own).
        backend: "auto" or a registered backend (``fia_kit.backends.backend_names()``).
        repeat: timed calls after the first.
        graph_options: npu-graph's CompilerConfig options (mode, tiling_schedule_optimize, graph_dump).
        compile_backend, lengths: the compiled backend's torch.compile backend ("aot_eager"; "inductor" compiles
            for seconds) and length type ("tensor": TorchAir schema; "list": torch_npu schema).
        torch_npu, torchair, device: stand-in modules and device for the npu backends (default: the installed
            modules, device "npu"); device for compiled (default: the query's).
    Raises:
        FIAArgumentError: for a bad call (before any set-up) or an unknown backend.
    """
    the_plan = as_plan(target, form)
    options = RunOptions(device, compile_backend, lengths, graph_options, torch_npu, torchair)
    return run_plan_on(the_plan, backend, options, repeat)


def run_plan_on(the_plan: Plan, backend: str, options: RunOptions, repeat: int = 1) -> RunResult:
    """Prepare ``backend`` for a validated plan, run it once plus ``repeat`` timed times."""
    if backend == "auto":
        backend = detect().default_backend()
    runner = prepare(the_plan, backend, options)
    (out, lse), first, median = timed(runner.fn, runner.device, repeat)
    return RunResult(out, lse, backend, {"first": first, "median": median}, runner.dropped_keywords)
