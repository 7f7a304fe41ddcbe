"""The one error type the kit raises for bad arguments."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FIAArgumentError", "describe_value"]


def describe_value(value: Any) -> str:
    """A short, readable description of an argument value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).removeprefix('torch.')}, device={value.device})"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class FIAArgumentError(ValueError):
    """An argument breaks one of the op's rules (raised before any compute).

    Attributes:
        parameter: the keyword (or keywords, joined by " + ") that broke the rule.
        rule: the rule, in words, with the spec section where it comes from ("spec N.N" = docs/ section N.N).
        got: a description of the value received.
        target: the product / CANN version the rule was checked for ("A3 / CANN 9.1"), where the rule depends
            on it (``fia_kit.targets``); None otherwise.
        rule_id: the kernel rule book's id ("FIA-MASK-002", ``fia_kit.rules``) when the rule is one of the
            kernel's host checks; None for the kit's own rules.
        source: the kernel host file:line the rule comes from (``KernelRule.source``); None otherwise.
    """

    def __init__(self, parameter: str, rule: str, got: Any = None, *, hint: str | None = None,
                 target: str | None = None, rule_id: str | None = None, source: str | None = None) -> None:
        self.parameter = parameter
        self.rule = rule
        self.got = got if isinstance(got, str) else describe_value(got)
        self.hint = hint
        self.target = target
        self.rule_id = rule_id
        self.source = source
        message = f"{parameter}: {rule} (got {self.got})"
        if rule_id or source:
            message += f" [{' at '.join(x for x in (rule_id, source) if x)}]"
        if hint:
            message += f". Hint: {hint}"
        super().__init__(message)
