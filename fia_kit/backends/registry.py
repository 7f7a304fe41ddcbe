"""The one list of backends: each registers a function that prepares a runner from a ``Plan``.

    register_backend("flex", prepare_flex, usable=flex_usable, summary="torch flex_attention")
    names = backend_names()                         # ("reference", "compiled", "npu", "npu-graph", ...)
    runner = prepare(plan, "compiled", RunOptions())  # Runner: fn() -> (attention_out, softmax_lse), device

A backend's ``prepare(plan, options)`` does the set-up (compile, graph build, moving tensors) and returns a
``Runner`` whose ``fn`` computes the plan once per call. No backend parses or validates the call again: the plan
is validated. A real op takes ``plan.keywords(form)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import FIAArgumentError

if TYPE_CHECKING:
    from ..environment import EnvironmentReport
    from ..planning import Plan
    from .graph import GraphOptions


@dataclass(frozen=True)
class RunOptions:
    """What a backend may need besides the plan; each backend reads the fields it uses.

    Attributes:
        device: where to run (None: the backend's default: "npu" for the npu backends, the query's otherwise).
        compile_backend: torch.compile backend of compiled backends ("aot_eager"; "inductor" compiles for seconds).
        lengths: the compiled backend's length type ("tensor": TorchAir schema; "list": torch_npu schema).
        graph_options: npu-graph's CompilerConfig options.
        torch_npu, torchair: stand-in modules for the npu backends (None: the installed ones).
    """

    device: str | torch.device | None = None
    compile_backend: str | object = "aot_eager"
    lengths: str = "tensor"
    graph_options: GraphOptions | None = None
    torch_npu: Any = None
    torchair: Any = None


@dataclass(frozen=True)
class Runner:
    """A prepared backend: ``fn()`` returns (attention_out, softmax_lse) on ``device``.

    ``dropped_keywords``: keywords left out because the installed op lacks them (each was at its default).
    """

    fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    dropped_keywords: tuple[str, ...] = ()


Prepare = Callable[["Plan", RunOptions], Runner]
Usable = Callable[["EnvironmentReport"], tuple[bool, str]]


@dataclass(frozen=True)
class Backend:
    """One registered backend: its name, how to prepare it, and whether this environment can run it."""

    name: str
    prepare: Prepare
    usable: Usable
    summary: str


_BACKENDS: dict[str, Backend] = {}


def _always(report: EnvironmentReport) -> tuple[bool, str]:
    return True, "always available"


def register_backend(name: str, prepare: Prepare, *, usable: Usable | None = None, summary: str = "") -> None:
    """Add (or replace) backend ``name``: ``prepare(plan, options) -> Runner``; ``usable(report)`` says whether
    the environment (``fia_kit.environment.detect()``) can run it and why (default: always)."""
    _BACKENDS[name] = Backend(name, prepare, usable or _always, summary)


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order (the built-in four first)."""
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; an FIAArgumentError naming the choices otherwise."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise FIAArgumentError("backend", f"must be 'auto' or one of {', '.join(_BACKENDS)}", name) from None


def prepare(plan: Plan, name: str, options: RunOptions | None = None) -> Runner:
    """Prepare backend ``name`` for a validated plan (set-up only: nothing is computed yet)."""
    return get_backend(name).prepare(plan, options or RunOptions())


def availability(report: EnvironmentReport) -> dict[str, tuple[bool, str]]:
    """(usable, reason) of every registered backend in the environment ``report`` describes."""
    return {name: backend.usable(report) for name, backend in _BACKENDS.items()}
