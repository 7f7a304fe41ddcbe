"""The graph-mode matrix of the op's own tests (spec 25.4), run as a decode loop whose K/V lengths change per step.

    table = graph_modes(fia_kit.plan(call), kv_steps=[[24, 9], [25, 10], [26, 11]])
    print(table)        # per mode: available (or why not), compiles, host ms / step, length copies / step

Modes:

* ``eager``: torch_npu's op, lengths as ``SymInt[]`` host int lists; the op tiles on the host every call.
* ``ge-static``: TorchAir GE graph, ``torch.compile(dynamic=False)``, ``tng.ops`` with int64 device-tensor lengths.
* ``ge-dynamic``: the same with ``dynamic=True``.
* ``tiling-sink``: ``tiling_schedule_optimize`` + ``dynamic=True`` + ``torch._dynamo.mark_static`` on q/k/v: only the
  lengths vary, and tiling runs on the device from the device lengths.
* ``aclgraph``: torch_npu's eager op (``SymInt[]`` lengths) under TorchAir's ``npugraph_ex`` mode (torch_npu
  2.13.0's CompilerConfig; ``reduce-overhead`` where a release lacks it, deprecated in 2.13.0), captured into an
  aclgraph (NPUGraph); only where the installed torch_npu has ``torch_npu.npu.NPUGraph``.
* ``lookalike-list`` / ``lookalike-tensor``: ``torch.compile(dynamic=False)`` of the kit's look-alike op with
  torch_npu's list lengths / TorchAir's tensor lengths, on CPU: the same recompile behaviour, on any machine.

Measured per mode over the steps: ``compiles`` (graphs dynamo compiled: with lengths as a host list each new value
is a new constant, so a new graph; tensor lengths are graph inputs), ``host_ms`` (median wall time until the step's
call returns, the device synchronised before it: the host's launch cost), ``step_ms`` (the same, synchronised after)
and ``length_copies`` (length tensors the step builds from host values and sends to the device: one per
length argument per step for tensor-length modes, none where the op takes host lists).
Off an NPU the NPU modes are unavailable, each with the reason; tests pass the stand-ins of tests/fake_npu.
"""

from __future__ import annotations

import importlib
import statistics
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .backends import lookalike
from .backends.bindings import bind, call_keywords, target_of
from .backends.compiled import lookalike_target
from .backends.graph import GraphOptions, compiler_config
from .backends.model import synchronize
from .backends.npu import op_of
from .call import FIACall
from .planning import Plan, build_plan
from .tables import html_table, text_table

__all__ = ["MODES", "ModeReport", "ModeTable", "graph_modes"]

NPU_MODES = ("eager", "ge-static", "ge-dynamic", "tiling-sink", "aclgraph")
CPU_MODES = ("lookalike-list", "lookalike-tensor")
MODES = NPU_MODES + CPU_MODES
KV_NAME = {"v1": "actual_seq_lengths_kv", "v2": "actual_seq_kvlen"}
WHERE_TILING = {
    "eager": "host, every call",
    "ge-static": "host, at graph execution (device lengths read back)",
    "ge-dynamic": "host, at graph execution (device lengths read back)",
    "tiling-sink": "device (tiling sink)",
    "aclgraph": "captured graph; new SymInt[] values recompile or update it",
    "lookalike-list": "(CPU stand-in)",
    "lookalike-tensor": "(CPU stand-in)",
}


@dataclass(frozen=True)
class ModeReport:
    """One mode. Milliseconds; None where the mode is unavailable (``reason`` says why)."""

    mode: str
    available: bool
    reason: str
    steps: int = 0
    compiles: int | None = None
    host_ms: float | None = None
    step_ms: float | None = None
    length_copies: int | None = None  # per step
    tiling: str = ""


@dataclass(frozen=True)
class ModeTable:
    rows: list[ModeReport]

    def row(self, mode: str) -> ModeReport:
        return next(r for r in self.rows if r.mode == mode)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["mode", "compiles", "host ms/step", "step ms", "length copies/step", "tiling", "status"]
        fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
        body = [[r.mode, fmt(r.compiles, "d"), fmt(r.host_ms, ".3f"), fmt(r.step_ms, ".3f"),
                 fmt(r.length_copies, "d"), r.tiling, "ran" if r.available else f"unavailable: {r.reason}"]
                for r in self.rows]
        return head, body

    def _caption(self) -> str:
        steps = max((r.steps for r in self.rows), default=0)
        return f"graph modes over {steps} decode steps with new K/V lengths each step (times in ms)"

    def table(self) -> str:
        return text_table(self._caption(), *self._cells())

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return html_table(self._caption(), *self._cells())


Step = Callable[[list[int]], Any]


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under a copy of its code object: a dynamo cache (and recompile limit) of its own."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


class _Counter:
    """Counts the length tensors a step sends from the host."""

    def __init__(self) -> None:
        self.copies = 0

    def to_device(self, values: Sequence[int], device: torch.device) -> torch.Tensor:
        self.copies += 1
        return torch.tensor(list(values), dtype=torch.int64, device=device)


class _StepModule(torch.nn.Module):
    """``forward(query, key, value, kv, *tensors)``: the op with ``kv`` as its K/V lengths. Ints, strings and the
    other lists are module attributes, which dynamo specialises even with dynamic=True (closure ints it would not)."""

    def __init__(self, op: Any, constants: dict[str, Any], tensor_names: tuple[str, ...], kv_name: str) -> None:
        super().__init__()
        self.op, self.constants, self.tensor_names, self.kv_name = op, constants, tensor_names, kv_name

    def forward(self, query, key, value, kv, *tensors):
        return self.op(query, key, value, **dict(zip(self.tensor_names, tensors, strict=True)), **self.constants,
                       **{self.kv_name: kv})


def _length_step(op: Any, keywords: dict[str, Any], kv_name: str, as_tensor: bool, device: torch.device,
                 counter: _Counter, compile_with: dict[str, Any] | None, static: bool = False) -> Step:
    """``step(q, k, v, kv)``: the op with ``kv`` as its K/V lengths (a host list, or a device tensor made from it),
    the other tensors fixed; compiled with ``compile_with`` (torch.compile keywords) unless None."""
    tensors = {n: v for n, v in keywords.items() if isinstance(v, torch.Tensor) and n != kv_name}
    constants = {n: v for n, v in keywords.items() if n not in tensors and n != kv_name}
    module = _StepModule(op, constants, tuple(tensors), kv_name)
    fn = module if compile_with is None else torch.compile(
        types.MethodType(_fresh(_StepModule.forward), module), fullgraph=True, **compile_with)

    def step(q, k, v, kv: list[int]):
        if static:
            for t in (q, k, v):
                torch._dynamo.mark_static(t)
        arg = counter.to_device(kv, device) if as_tensor else list(kv)
        with torch.no_grad():
            return fn(q, k, v, arg, *tensors.values())
    return step


def _unavailable(mode: str, torch_npu: Any, torchair: Any) -> tuple[Any, Any, str | None]:
    """(torch_npu, torchair, None) ready for ``mode``, or (.., .., why not)."""
    if torch_npu is None:
        from .environment import detect
        usable, reason = detect().backends()["npu"]
        if not usable:
            return None, None, reason
        from .environment import import_torch_npu
        torch_npu = import_torch_npu()
    if mode == "eager":
        return torch_npu, torchair, None
    if torchair is None:
        try:
            torchair = importlib.import_module("torchair")
        except ImportError as err:
            return torch_npu, None, f"torchair does not import: {err}"
    if mode == "tiling-sink":
        config = compiler_config(torchair, GraphOptions())
        if not hasattr(config.experimental_config, "tiling_schedule_optimize"):
            return torch_npu, torchair, "this torchair's CompilerConfig has no tiling_schedule_optimize"
    if mode == "aclgraph" and not hasattr(getattr(torch_npu, "npu", None), "NPUGraph"):
        return torch_npu, torchair, "this torch_npu has no torch_npu.npu.NPUGraph (aclgraph)"
    return torch_npu, torchair, None


def _aclgraph_config(torchair: Any) -> Any:
    """CompilerConfig in mode "npugraph_ex" (torch_npu 2.13.0), else the older "reduce-overhead"."""
    try:
        return compiler_config(torchair, GraphOptions(mode="npugraph_ex"))
    except (ValueError, TypeError, AssertionError):
        return compiler_config(torchair, GraphOptions(mode="reduce-overhead"))


def _make_step(mode: str, call: FIACall, torch_npu: Any, torchair: Any, device: torch.device,
               counter: _Counter) -> Step:
    kv_name = KV_NAME[call.form]
    if mode.startswith("lookalike"):
        as_tensor = mode == "lookalike-tensor"
        target = lookalike_target(call, "tensor" if as_tensor else "list")
        return _length_step(lookalike.op(target), call_keywords(call, target, device), kv_name, as_tensor, device,
                            counter, {"backend": "aot_eager", "dynamic": False})
    if mode in ("eager", "aclgraph"):
        fn = op_of(torch_npu, call.form)
        keywords = bind(fn, call_keywords(call, target_of(call, graph=False), device),
                        target_of(call, graph=False)).keywords
        if mode == "eager":
            return _length_step(fn, keywords, kv_name, False, device, counter, None)
        backend = torchair.get_npu_backend(compiler_config=_aclgraph_config(torchair))
        return _length_step(fn, keywords, kv_name, False, device, counter, {"backend": backend, "dynamic": False})
    fn = op_of(torchair.ops, call.form)
    keywords = bind(fn, call_keywords(call, target_of(call, graph=True), device), target_of(call, graph=True)).keywords
    options = GraphOptions(tiling_schedule_optimize=mode == "tiling-sink")
    backend = torchair.get_npu_backend(compiler_config=compiler_config(torchair, options))
    return _length_step(fn, keywords, kv_name, True, device, counter,
                        {"backend": backend, "dynamic": mode != "ge-static"}, static=mode == "tiling-sink")


def _run(mode: str, call: FIACall, kv_steps: Sequence[Sequence[int]], torch_npu: Any, torchair: Any,
         device: torch.device) -> ModeReport:
    counter = _Counter()
    step = _make_step(mode, call, torch_npu, torchair, device, counter)
    q, k, v = (t.to(device) for t in (call.query, call.key, call.value))
    before = _graphs()
    hosts, totals = [], []
    for kv in kv_steps:
        synchronize(device)
        start = time.perf_counter()
        step(q, k, v, list(kv))
        hosts.append(time.perf_counter() - start)
        synchronize(device)
        totals.append(time.perf_counter() - start)
    return ModeReport(mode, True, "ran", len(kv_steps), _graphs() - before, statistics.median(hosts) * 1e3,
                      statistics.median(totals) * 1e3, counter.copies // len(kv_steps), WHERE_TILING[mode])


def graph_modes(target: Plan | FIACall, kv_steps: Sequence[Sequence[int]], modes: Sequence[str] = MODES, *,
                torch_npu: Any = None, torchair: Any = None, device: str | torch.device = "npu") -> ModeTable:
    """Run a decode loop in each mode with the K/V lengths of ``kv_steps`` (one list per step, B ints each).

    Args:
        target: a plan (``fia_kit.plan(...)``; its call is run) or a call (planned here once).
        kv_steps: per step, the actual K/V lengths (each within the key tensor's capacity).
        modes: names from ``MODES``.
        torch_npu, torchair, device: the installed modules and "npu" by default; tests pass the stand-ins and "cpu".
            The look-alike modes run on the call's own device.
    """
    plan = target if isinstance(target, Plan) else build_plan(target)
    if not kv_steps:
        raise ValueError("kv_steps must hold at least one step's lengths")
    for values in kv_steps:  # each step must be a valid call: check before anything compiles
        build_plan(replace(plan.call, options={**plan.call.options, "actual_seq_lengths_kv": list(values)}))
    rows = []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        if mode in CPU_MODES:
            rows.append(_run(mode, plan.call, kv_steps, None, None, plan.call.query.device))
            continue
        npu, air, why = _unavailable(mode, torch_npu, torchair)
        if why is not None:
            rows.append(ModeReport(mode, False, why, tiling=WHERE_TILING[mode]))
            continue
        rows.append(_run(mode, plan.call, kv_steps, npu, air, torch.device(device)))
    return ModeTable(rows)
