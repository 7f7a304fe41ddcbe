"""``Ported``: a source call translated to FIA, with the way back and an agreement check.

    p = fia_kit.port.translate("flash_attn.flash_attn_func", q, k, v, causal=True)
    p.call                 # the FIA call (a BuiltCall): fia_kit.plan / run / compare / lint / explore take it
    p.notes                # one line per convention that changed, before -> after
    p.out_to_source(out)   # FIA's attention_out in the source's layout
    p.check()              # the agreement table: source semantics vs the FIA reference, float64, in tolerance units
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backends.tolerances import TOLERANCES
from ..case import BuiltCall
from ..errors import FIAArgumentError
from ..planning import Plan, build_plan
from ..reference import op_outputs
from ..signatures import spelled
from ..tables import html_table, text_table
from .common import Translation

SourceRun = Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Api:
    """One source API: its signature, translator, float64 semantics and (on CUDA) the library itself."""

    name: str
    signature: Callable[..., Any]
    translate: Callable[[dict[str, Any]], Translation]
    semantics: SourceRun
    semantics_kind: str  # "torch (CPU)" or "contract (float64, written from the library's docs and code)"
    library: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor | None]] | None = None
    module: str | None = None  # the importable module the library row needs


def built_call(t: Translation) -> BuiltCall:
    """The FIA call of a translation, keywords spelled as its form spells them."""
    return BuiltCall(t.form, t.query, t.key, t.value, {spelled(n, t.form): v for n, v in t.keywords.items()})


@dataclass(frozen=True)
class AgreementRow:
    quantity: str      # "attention_out" or "lse"
    against: str       # what the FIA reference is compared with
    max_abs: float
    units: float       # max |fia - source| / (atol + rtol * |source|): 1.0 = at the tolerance
    rows: int          # rows compared (rows where the source sees at least one key)


@dataclass(frozen=True, repr=False)
class Agreement:
    """The agreement table of one translation: errors in units of the caller dtype's tolerance (``TOLERANCES``)."""

    api: str
    dtype: torch.dtype
    rows: tuple[AgreementRow, ...]
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every row is within its tolerance (units <= 1)."""
        return all(r.units <= 1.0 for r in self.rows)

    def row(self, quantity: str, against: str | None = None) -> AgreementRow:
        return next(r for r in self.rows if r.quantity == quantity and (against is None or against in r.against))

    def _cells(self) -> tuple[str, list[str], list[list[str]]]:
        atol, rtol = TOLERANCES[self.dtype]
        caption = (f"{self.api} vs FIA (float64; tolerance of {str(self.dtype).removeprefix('torch.')}: "
                   f"atol {atol:g}, rtol {rtol:g})")
        body = [[r.quantity, r.against, f"{r.max_abs:.3g}", f"{r.units:.3g}", str(r.rows),
                 "ok" if r.units <= 1 else "DIFFERS"] for r in self.rows]
        body += [["-", s, "", "", "", "skipped"] for s in self.skipped]
        return caption, ["quantity", "against", "max |diff|", "x tolerance", "rows", "verdict"], body

    def __str__(self) -> str:
        return text_table(*self._cells())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(*self._cells())


@dataclass(frozen=True, eq=False)
class Ported:
    """A source call and its FIA translation.

    Attributes:
        api: the source function's qualified name.
        call: the FIA call (``BuiltCall``: ``call.call(fia_kit.npu_fused_infer_attention_score)`` runs it).
        notes: one line per convention that changed, with the value before and after.
        arguments: the source call's arguments by the source's names (defaults filled in).
    """

    api: str
    call: BuiltCall
    notes: tuple[str, ...]
    arguments: dict[str, Any] = field(repr=False)
    _spec: Api = field(repr=False)
    _translation: Translation = field(repr=False)

    @property
    def form(self) -> str:
        """"v1" or "v2" (v2 where the translation needs learnable_sink)."""
        return self.call.form

    def plan(self) -> Plan:
        """The validated FIA plan of ``call``."""
        return build_plan(self.call.to_fia_call())

    def to_fia_call(self) -> Any:
        """The parsed FIA call (so ``fia_kit.plan(ported)``, ``run``, ``lint``, ``to_script`` take a Ported too)."""
        return self.call.to_fia_call()

    def out_to_source(self, out: torch.Tensor) -> torch.Tensor:
        """FIA's attention_out in the source API's layout and shape."""
        return self._translation.out_to_source(out)

    def lse_to_source(self, lse: torch.Tensor) -> torch.Tensor:
        """FIA's softmax_lse (natural log, (B, N, S, 1) or (T, N, 1)) in the source's layout, shape and log base."""
        if self._translation.lse_to_source is None:
            raise FIAArgumentError("lse", f"{self.api} returns no LSE in this call (ask for it: return_lse / "
                                   "return_attn_probs / return_softmax_lse; SDPA has none)", "not requested")
        return self._translation.lse_to_source(lse)

    def __str__(self) -> str:
        return "\n".join([f"{self.api} -> FIA {self.form}", *(f"  - {n}" for n in self.notes)])

    def check(self, library: bool | None = None) -> Agreement:
        """Run the source semantics and the FIA reference on the same inputs in float64 and tabulate the errors.

        Rows: attention_out (and the LSE where the call returns one) against the source semantics (SDPA / flex run
        on the CPU, flash-attn / FlashInfer from their written contracts); where a derived tensor (pse_shift,
        learnable_sink) is rounded to a float16/bfloat16 query's dtype, the same again with the rounded tensor, so
        the translation's own approximation shows; where the library imports on CUDA (``library`` None or True),
        the library itself in the caller's dtype.
        """
        dtype = self.call.query.dtype
        args64 = _float64(self.arguments)
        src_out, src_lse = self._spec.semantics(args64)
        t64 = self._spec.translate(args64)
        fia_out, fia_lse = _fia(t64)
        rows = list(_rows(self._spec.semantics_kind, t64, fia_out, fia_lse, src_out, src_lse, dtype))
        if self._translation.derived and dtype not in (torch.float64, torch.float32):
            rounded = _round_derived(t64, self._translation.derived)
            out_r, lse_r = _fia(rounded)
            rounded_names = ", ".join(f"{n} in {str(d).removeprefix('torch.')}"
                                      for n, d in self._translation.derived.items())
            rows += _rows(f"{self._spec.semantics_kind}, FIA's derived {rounded_names}",
                          rounded, out_r, lse_r, src_out, src_lse, dtype)
        skipped: list[str] = []
        if library is not False and self._spec.library is not None:
            if _library_available(self._spec.module):
                lib_out, lib_lse = self._spec.library(self.arguments)
                rows += _rows(f"{self._spec.module} on CUDA ({str(dtype).removeprefix('torch.')})", t64, fia_out,
                              fia_lse, lib_out.double().cpu(), None if lib_lse is None else lib_lse.double().cpu(),
                              dtype, source_is_lib=True)
            else:
                skipped.append(f"{self._spec.module} itself: needs the library and a CUDA device")
        return Agreement(self.api, dtype, tuple(rows), tuple(skipped))


def _library_available(module: str | None) -> bool:
    return module is not None and torch.cuda.is_available() and importlib.util.find_spec(module) is not None


def _float64(value: Any) -> Any:
    """Floating tensors (also inside tuples/lists/dicts) as float64 copies; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _float64(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_float64(v) for v in value)
    return value


def _fia(t: Translation) -> tuple[torch.Tensor, torch.Tensor | None]:
    out, lse = op_outputs(build_plan(built_call(t).to_fia_call()))
    src_out = t.out_to_source(out)
    return src_out, (t.lse_to_source(lse) if t.lse_to_source is not None and lse.numel() else None)


def _round_derived(t: Translation, derived: dict[str, torch.dtype]) -> Translation:
    keywords = dict(t.keywords)
    for name, dtype in derived.items():
        keywords[name] = keywords[name].to(dtype).to(torch.float64)
    return Translation(t.form, t.query, t.key, t.value, keywords, t.notes, t.out_to_source, t.lse_to_source,
                       t.derived)


def _rows(against: str, t: Translation, fia_out: torch.Tensor, fia_lse: torch.Tensor | None,
          src_out: torch.Tensor, src_lse: torch.Tensor | None, dtype: torch.dtype,
          source_is_lib: bool = False) -> list[AgreementRow]:
    atol, rtol = TOLERANCES[dtype]
    rows = []
    valid = torch.isfinite(src_out).all(dim=-1)  # SDPA writes NaN for a row that sees no key
    rows.append(_row("attention_out", against, fia_out[valid], src_out.to(fia_out.dtype)[valid], atol, rtol,
                     int(valid.sum())))
    if src_lse is not None and fia_lse is not None:
        finite = torch.isfinite(src_lse)
        rows.append(_row("lse", against, fia_lse[finite], src_lse.to(fia_lse.dtype)[finite], atol, rtol,
                         int(finite.sum())))
    return rows


def _row(quantity: str, against: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float,
         count: int) -> AgreementRow:
    if got.numel() == 0:
        return AgreementRow(quantity, against, 0.0, 0.0, count)
    diff = (got - want).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    units = diff / (atol + rtol * want.abs())
    return AgreementRow(quantity, against, float(diff.max()), float(units.max()), count)
