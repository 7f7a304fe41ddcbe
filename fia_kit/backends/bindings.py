"""Spelling one parsed call for each of the op's four entry points, and checking what an install accepts.

Targets are the keys of ``fia_kit.signatures.SCHEMAS``: "torch_npu.v1", "torch_npu.v2" (lengths as Python int
lists, the schema's ``SymInt[]``), "torchair.v1", "torchair.v2" (lengths as int64 tensors on the device, spec 1.4).
Names come from ``signatures`` (the one table); ``FIACall.keywords`` does the v1 <-> v2 respelling.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..call import FIACall, parse_call
from ..errors import FIAArgumentError
from ..lengths import read_lengths
from ..signatures import LENGTH_PARAMETERS, SCHEMAS, form_name, keyword_defaults, schema_arguments


def target_of(call: FIACall, graph: bool) -> str:
    """The SCHEMAS key a call runs as: its own version, in torch_npu (eager) or TorchAir (graph) spelling."""
    return f"{'torchair' if graph else 'torch_npu'}.{call.form}"


def call_keywords(call: FIACall, target: str, device: torch.device | str | None = None) -> dict[str, Any]:
    """The given keywords of ``call`` as ``target`` spells and types them.

    Args:
        call: a parsed call (any form).
        target: a SCHEMAS key; its version decides the names (v1 or v2), its family the length type.
        device: where tensors go (None: leave them). TorchAir lengths are created there as int64 tensors.
    Returns:
        keyword -> value; actual lengths become lists of ints (torch_npu) or 1-D int64 tensors (TorchAir).
    Raises:
        FIAArgumentError: a given keyword has no equivalent in the target version (e.g. v1's shared prefix in v2)
            and is not at its default (a default-valued one is left out).
    """
    if target not in SCHEMAS:
        raise FIAArgumentError("target", f"must be one of {', '.join(SCHEMAS)}", target)
    family, version = target.split(".")
    out: dict[str, Any] = {}
    for name, value in _without_idle(call, version).keywords(version).items():
        if name in LENGTH_PARAMETERS and value is not None:
            values = list(read_lengths(name, value))
            value = values if family == "torch_npu" else torch.tensor(values, dtype=torch.int64, device=device)
        elif isinstance(value, torch.Tensor) and device is not None:
            value = value.to(device)
        out[name] = value
    return out


def _without_idle(call: FIACall, version: str) -> FIACall:
    """The call without given keywords that ``version`` lacks but that sit at their default (they do nothing)."""
    defaults = keyword_defaults(call.form)
    idle = {n for n in call.given
            if form_name(n, version) is None and _is_default(call.options[n], defaults[form_name(n, call.form)])}
    return dataclasses.replace(call, given=call.given - idle) if idle else call


def convert_call(call: FIACall, target: str) -> FIACall:
    """The same call re-parsed in ``target``'s version with its length type (v1 <-> v2 <-> TorchAir)."""
    version = target.split(".")[1]
    return parse_call(version, call.query, call.key, call.value, call_keywords(call, target))


def supported_keywords(fn: Any, namespace: str = "npu") -> frozenset[str] | None:
    """The keyword names an installed op accepts, or None when that cannot be told.

    Reads, in order: an OpOverload's ``_schema``; an OpOverloadPacket's default overload in ``_schemas``;
    ``torch.ops.<namespace>.<fn.__name__>`` for a Python binding or wrapper ("npu" for torch_npu, "air" for
    TorchAir's tng.ops; older releases lack some keywords, e.g. v2 before 26.0.0 has no quant_scale_p /
    out_dtype, spec 1.2); else ``inspect.signature`` (None if it takes **kwargs).
    """
    schema = _schema_of(fn, namespace)
    if schema is not None:
        return frozenset(a.name for a in schema.arguments if a.kwarg_only)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _schema_of(fn: Any, namespace: str) -> torch.FunctionSchema | None:
    if isinstance(getattr(fn, "_schema", None), torch.FunctionSchema):
        return fn._schema
    schemas = getattr(fn, "_schemas", None)
    if isinstance(schemas, Mapping) and "" in schemas:
        return schemas[""]
    name = getattr(fn, "__name__", None)
    if name and not isinstance(fn, torch._ops.OpOverloadPacket):
        try:
            return getattr(getattr(torch.ops, namespace), name).default._schema
        except (AttributeError, RuntimeError):
            return None
    return None


@dataclass(frozen=True)
class Binding:
    """Keywords ready to pass to one installed op, and those left out (each at its schema default)."""

    keywords: dict[str, Any]
    dropped: tuple[str, ...]


def bind(fn: Any, keywords: Mapping[str, Any], target: str) -> Binding:
    """Fit ``keywords`` to what ``fn`` accepts.

    A keyword ``fn`` lacks is dropped when its value is the schema default (nothing is lost); otherwise this raises
    FIAArgumentError naming it, since the installed release cannot express the call.
    """
    accepted = supported_keywords(fn, "air" if target.startswith("torchair") else "npu")
    if accepted is None:
        return Binding(dict(keywords), ())
    defaults = keyword_defaults(target.split(".")[1])
    kept, dropped = {}, []
    for name, value in keywords.items():
        if name in accepted:
            kept[name] = value
        elif _is_default(value, defaults.get(name)):
            dropped.append(name)
        else:
            raise FIAArgumentError(name, f"is not accepted by the installed {getattr(fn, '__name__', fn)} "
                                   "(an older torch_npu/TorchAir release)", value,
                                   hint="upgrade torch_npu, or leave the keyword at its default")
    return Binding(kept, tuple(dropped))


def _is_default(value: Any, default: Any) -> bool:
    return value is None if default is None else (not isinstance(value, torch.Tensor) and value == default)


def schema_violations(target: str, keywords: Mapping[str, Any]) -> list[str]:
    """Why ``keywords`` do not fit ``SCHEMAS[target]`` (empty when they do).

    Every keyword must be in the schema (types as torch's parser prints them): ``SymInt[]?`` (Optional[List[int]])
    takes a list or tuple of ints, a 1-D numpy integer array or a 1-D integer tensor (spec 25.2), ``Tensor?`` a tensor (TorchAir lengths: int64), ``int``/``float``/``bool``/``str`` their
    Python types, ``int?`` an int or None.
    """
    arguments = {a.name: a for a in schema_arguments(target) if a.keyword_only}
    problems = []
    for name, value in keywords.items():
        if name not in arguments:
            problems.append(f"{name}: not in the {target} schema")
        elif not _fits(arguments[name].type, value):
            problems.append(f"{name}: {type(value).__name__} does not fit {arguments[name].type}")
        elif target.startswith("torchair") and name in LENGTH_PARAMETERS and isinstance(value, torch.Tensor) \
                and value.dtype != torch.int64:
            problems.append(f"{name}: TorchAir lengths must be int64, got {value.dtype}")
    return problems


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "Tensor": lambda v: isinstance(v, torch.Tensor),
    # SymInt[]: torch's parser takes lists, tuples, numpy integer arrays and 1-D integer tensors (spec 25.2)
    "List[int]": lambda v: (isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                for x in v))
    or (type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 1 and v.dtype.kind in "iu")
    or (isinstance(v, torch.Tensor) and v.dim() == 1 and not v.is_floating_point() and v.dtype != torch.bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}


def _fits(schema_type: str, value: Any) -> bool:
    optional = schema_type.startswith("Optional[")
    base = schema_type.removeprefix("Optional[").removesuffix("]") if optional else schema_type
    return (optional and value is None) or _CHECKS[base](value)
