"""The ``reference`` backend: the kit's kernel computes the validated plan directly (no parse, no re-check)."""

from __future__ import annotations

from ..planning import Plan
from ..reference import op_outputs
from .registry import Runner, RunOptions


def prepare(plan: Plan, options: RunOptions) -> Runner:
    """A runner of the reference on the plan's own tensors and device (``options`` are not used)."""
    return Runner(lambda: op_outputs(plan), plan.query.device)
