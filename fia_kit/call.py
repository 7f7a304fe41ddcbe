"""Parse a call's keywords once, in any of the op's forms, into one canonical description (spec 1).

``FIACall`` holds the arguments exactly as given, keyed by the kit's canonical (v1) names, with the form's
defaults filled in. ``fia_kit.planning.build_plan`` then validates it and resolves its geometry.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import FIAArgumentError
from .signatures import (
    V2_ALIASES,
    Form,
    canonical_name,
    keyword_defaults,
    schema_arguments,
    spelled,
    version_of,
)


@dataclass(frozen=True)
class FIACall:
    """One call of the op, as the user wrote it.

    Attributes:
        form: "v1" (npu_fused_infer_attention_score) or "v2" (..._v2).
        query, key, value: the three positional tensors.
        options: every keyword of the form, by canonical (v1) name where v1 has the parameter, else by its v2
            name; keywords not passed hold the schema's default.
        given: the canonical names the caller actually passed.
    """

    form: Form
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    options: Mapping[str, Any]
    given: frozenset[str] = field(default_factory=frozenset)

    def __getitem__(self, name: str) -> Any:
        return self.options[name]

    def keywords(self, form: Form | None = None) -> dict[str, Any]:
        """The keywords that were given, spelled as ``form`` (default: the call's own form) spells them."""
        form = version_of(form or self.form)
        out = {}
        for canon in self.options:
            if canon not in self.given:
                continue
            name = spelled(canon, form)
            if name not in keyword_defaults(form):
                raise FIAArgumentError(canon, f"has no equivalent in the {form} signature (spec 1.6)",
                                       self.options[canon])
            out[name] = self.options[canon]
        return out


def parse_call(form: str, query: Any, key: Any, value: Any, kwargs: Mapping[str, Any]) -> FIACall:
    """Map the keywords of a call in ``form`` (``signatures.FORMS``: "v1", "v2", "torchair-v1", "torchair-v2")
    onto canonical names, rejecting unknown or doubled keywords and any other form.

    TorchAir forms are their version's keywords with lengths as int64 tensors (read like lists): the parsed call
    has the version ("v1"/"v2") as its form.

    v2 also accepts the founding TorchAir page's ``actual_seq_lengths`` / ``actual_seq_lengths_kv`` as aliases of
    ``actual_seq_qlen`` / ``actual_seq_kvlen`` (spec 1.3); giving both spellings is an error.
    """
    form = version_of(form)
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, torch.Tensor):
            raise FIAArgumentError(name, "must be a torch.Tensor", tensor)
    defaults = keyword_defaults(form)
    given_as: dict[str, str] = {}  # form name -> the keyword the caller used
    for name in kwargs:
        target = V2_ALIASES.get(name, name) if form == "v2" else name
        if target not in defaults:
            raise FIAArgumentError(name, f"is not a keyword of the {form} op", kwargs[name],
                                   hint=_keyword_hint(name, form, defaults))
        if target in given_as:
            raise FIAArgumentError(f"{given_as[target]} + {name}", f"both name the v2 keyword '{target}' "
                                   "(actual_seq_lengths[_kv] is the old TorchAir page's spelling): give one",
                                   kwargs[name])
        given_as[target] = name
    _check_argument_types(form, {name: kwargs[name] for name in given_as.values()})
    options = {canonical_name(n): kwargs[given_as[n]] if n in given_as else d for n, d in defaults.items()}
    given = frozenset(canonical_name(n) for n in given_as)
    return FIACall(form, query, key, value, options, given)


def _check_argument_types(form: Form, given: Mapping[str, Any]) -> None:
    """A keyword the schema types ``Tensor?`` is a tensor or None; one typed ``int`` an integer and one typed
    ``float`` a real number, neither a bool (True would pass as 1)."""
    types = {a.name: a.type for a in schema_arguments(form)}
    for name, value in given.items():
        kind = types.get(V2_ALIASES.get(name, name) if form == "v2" else name)
        if kind in ("Tensor", "Optional[Tensor]") and value is not None and not isinstance(value, torch.Tensor):
            raise FIAArgumentError(name, "must be a torch.Tensor or None (the schema types it Tensor?)", value)
        if kind in ("int", "Optional[int]") and value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise FIAArgumentError(name, "must be an int (the schema types it int)", value)
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise FIAArgumentError(name, "must be a real number (the schema types it float)", value)


def check_devices(call: FIACall) -> None:
    """Every tensor of a call to compute (lengths given as tensors included) lies on the query's device, and that
    device holds data: one op runs on one device, and a "meta" tensor has no values to compute with (its shapes
    go through ``shapes.infer_output``). FIAArgumentError naming the first tensor that breaks it."""
    device = call.query.device
    if device.type == "meta":
        raise FIAArgumentError("query", "holds no data (device meta): the reference computes on real tensors; "
                               "fia_kit.shapes.infer_output takes meta tensors", "a tensor on meta")
    named = {"key": call.key, "value": call.value, **{spelled(n, call.form): call.options[n] for n in call.given}}
    for name, value in named.items():
        if isinstance(value, torch.Tensor) and value.device != device:
            raise FIAArgumentError(name, f"must be on the query's device ({device}): one call runs on one device",
                                   f"a tensor on {value.device}")


def _keyword_hint(name: str, form: Form, defaults: Mapping[str, Any]) -> str | None:
    other = "v1" if form == "v2" else "v2"
    translated = spelled(canonical_name(name), form)
    if translated != name:
        return f"that is the {other} name; the {form} op calls it '{translated}'"
    if name in keyword_defaults(other):
        return f"only the {other} op has '{name}'"
    close = difflib.get_close_matches(name, list(defaults), n=1)
    return f"did you mean '{close[0]}'?" if close else None
