"""``fia_kit.compare``: each backend's outputs against the reference, on the rows the spec defines.

    table = fia_kit.compare(target, backends=["npu", "npu-graph"])   # a Comparison; table.passed, table.table()

``target`` is planned once (``fia_kit.plan``); the reference, the float64 golden and every backend take that plan.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from typing import Any

import torch

from ..environment import detect
from ..kernel import RowStatus, compute_dtype, run_plan
from ..layouts import to_canonical
from ..planning import Plan
from ..precision import Method12, method12
from .registry import RunOptions
from .running import as_plan, run_plan_on
from .tolerances import LSE_TOLERANCE, TOLERANCES

# The backends compared with the reference when none are named: on an Ascend box the op itself, eager and in
# graph mode; elsewhere an independent computation of the same plan.
NPU_PEERS = ("npu", "npu-graph")
OFF_NPU_PEERS = ("flex",)


def default_peers() -> list[str]:
    """The backends ``compare`` runs when none are named: ``NPU_PEERS`` with a usable NPU, else ``OFF_NPU_PEERS``."""
    return list(NPU_PEERS if detect().backends()["npu"][0] else OFF_NPU_PEERS)


@dataclass(frozen=True)
class ComparisonRow:
    """Errors of one backend against the reference, on COMPUTED rows only.

    Attributes:
        out_abs, out_rel: max |x - ref| and max |x - ref| / max(|ref|, tiny) of attention_out.
        lse_abs: max |lse - ref_lse| (None when the call did not ask for the LSE).
        out_tolerance, lse_tolerance: the worst error in units of the tolerance, max |x - ref| / (atol + rtol *
            |ref|) (``TOLERANCES`` by dtype; ``LSE_TOLERANCE`` for the LSE, None without one): 1 is the limit.
        golden_ratio: max error vs a float64 golden over the reference's own max error vs it (the FlexAttention
            scheme; None when no golden could be computed).
        within_tolerance: both of those at most 1: every element within atol + rtol * |ref|.
        within_golden: error vs golden <= factor * the reference's error vs golden (+ 1e-6 floor).
        method12: the op's own precision standard (spec 25.4, ``fia_kit.precision``): MARE / MERE / RMSE vs the
            golden within 10x / 2x / 2x the reference's (the benchmark); None without a golden.
    """

    backend: str
    out_abs: float
    out_rel: float
    lse_abs: float | None
    golden_ratio: float | None
    within_tolerance: bool
    within_golden: bool | None
    seconds: float
    method12: Method12 | None = None
    out_tolerance: float = 0.0
    lse_tolerance: float | None = None


@dataclass(frozen=True)
class Comparison:
    """A table of ``ComparisonRow``s for one call (``.table()``, or rich display in a notebook)."""

    dtype: torch.dtype
    computed_rows: int
    total_rows: int
    rows: list[ComparisonRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every backend within the fixed per-dtype tolerance (the golden verdict is reported, not required)."""
        return all(r.within_tolerance for r in self.rows)

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["backend", "out err (x tolerance)", "lse err (x tolerance)", "out max abs", "out max rel",
                "lse max abs", "vs golden (x ref's err)", "tolerance", "golden", "method 12 (max/mean/rmse, x ref)",
                "seconds"]
        fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        yes = lambda b: "-" if b is None else ("pass" if b else "FAIL")  # noqa: E731

        def m12(v: Method12 | None) -> str:
            if v is None:
                return "-"
            return f"{yes(v.passed)} " + "/".join(f"{x:.2g}" for x in v.ratios.values())
        body = [[r.backend, fmt(r.out_tolerance), fmt(r.lse_tolerance), fmt(r.out_abs), fmt(r.out_rel),
                 fmt(r.lse_abs), fmt(r.golden_ratio),
                 yes(r.within_tolerance), yes(r.within_golden), m12(r.method12), f"{r.seconds:.4f}"]
                for r in self.rows]
        return head, body

    def table(self) -> str:
        head, body = self._cells()
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"{str(self.dtype).removeprefix('torch.')}, {self.computed_rows}/{self.total_rows} query rows "
                 "compared (COMPUTED rows only)"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head, body = self._cells()
        cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
        rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
        caption = html.escape(self.table().splitlines()[0])
        return f"<table><caption>{caption}</caption><tr>{cells(head, 'th')}</tr>{rows}</table>"

    def __repr__(self) -> str:
        return self.table()


def compare(target: Any, backends: list[str] | None = None, *, factor: float = 1.1, form: str | None = None,
            repeat: int = 1, **run_options: Any) -> Comparison:
    """Max abs/rel error of attention_out and softmax_lse per backend against the reference.

    Only rows the spec defines are compared: the reference's ``row_status == RowStatus.COMPUTED`` (padding,
    out-of-band and fully masked rows are left out). Three verdicts per backend: the fixed per-dtype tolerance
    (``TOLERANCES``) and the relative scheme of FlexAttention's tests (error vs a float64 golden within ``factor``
    times the reference's own error vs that golden; here the reference computes in float32 and rounds to the
    query dtype, as the op's high-precision path does); and the op team's "method 12" (``fia_kit.precision``)
    with the reference as the benchmark.

    Args:
        target: a Plan or anything ``fia_kit.plan`` takes (``form`` picks a case's form); planned once.
        backends: default ``default_peers()``.
        repeat, run_options: as ``run`` (graph_options, compile_backend, lengths, torch_npu, torchair, device).
    """
    the_plan = as_plan(target, form)
    options = RunOptions(**run_options)
    backends = default_peers() if backends is None else backends
    reference = run_plan(the_plan)
    computed = reference.row_status == int(RowStatus.COMPUTED)
    wide = golden_outputs(the_plan)
    golden = _rows(wide, the_plan, computed, output=True) if wide is not None else None
    dtype = the_plan.call.query.dtype
    rows = []
    ref_out = _rows(reference.attention_out, the_plan, computed, output=True)
    ref_lse = _rows(reference.softmax_lse, the_plan, computed, output=False)
    base_err = _max_abs(ref_out, golden) if golden is not None else None
    atol, rtol = TOLERANCES[dtype]
    for backend in backends:
        result = run_plan_on(the_plan, backend, options, repeat)
        out = _rows(result.attention_out.cpu(), the_plan, computed, output=True)
        lse = result.softmax_lse.cpu()
        lse_rows = _rows(lse, the_plan, computed, output=False) if lse.numel() else None
        lse_abs = _max_abs(lse_rows, ref_lse) if lse_rows is not None else None
        diff = (out.double() - ref_out.double()).abs()
        out_tol = _tolerance_units(out, ref_out, atol, rtol)
        lse_tol = _tolerance_units(lse_rows, ref_lse, *LSE_TOLERANCE) if lse_rows is not None else None
        ok = out_tol <= 1 and (lse_tol is None or lse_tol <= 1)
        ratio = within = verdict = None
        if golden is not None:
            err = _max_abs(out, golden)
            ratio = err / base_err if base_err else (0.0 if err == 0 else float("inf"))
            within = err <= factor * base_err + 1e-6
            verdict = method12(out, ref_out, golden)
        rows.append(ComparisonRow(backend, _amax(diff), _amax(diff / ref_out.double().abs().clamp_min(1e-6)),
                                  lse_abs, ratio, ok, within, result.timings["median"], verdict, out_tol, lse_tol))
    return Comparison(dtype, int(computed.sum()), computed.numel(), rows)


def golden_outputs(the_plan: Plan) -> torch.Tensor | None:
    """attention_out of the plan computed in float64 from float64 copies of its float inputs (no re-validation).

    Quantised (integer) inputs stay as they are and are dequantised in float64; None when the plan quantises
    the output (an int8 output has no float64 golden).
    """
    if the_plan.quant is not None and the_plan.quant.output is not None:
        return None
    def up(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.double() if t is not None and t.is_floating_point() else t
    wide = dataclasses.replace(
        the_plan, query=up(the_plan.query), key=up(the_plan.key), value=up(the_plan.value),
        query_rope=up(the_plan.query_rope), key_rope=up(the_plan.key_rope), prefix_key=up(the_plan.prefix_key),
        prefix_value=up(the_plan.prefix_value), pse=up(the_plan.pse), learnable_sink=up(the_plan.learnable_sink),
        out_dtype=torch.float64)
    with compute_dtype(torch.float64):
        return run_plan(wide).attention_out


def _rows(x: torch.Tensor, the_plan: Plan, computed: torch.Tensor, output: bool) -> torch.Tensor:
    """The COMPUTED rows of attention_out (R, N_q, Dv) or of the LSE (R, N_q), from any layout."""
    if output:
        rows = to_canonical(x, the_plan.layout.out, the_plan.num_heads).permute(0, 2, 1, 3)  # (B, S, N, D)
    elif the_plan.layout.packed:
        rows = x.reshape(1, x.shape[0], x.shape[1])  # (T, N, 1) -> (1, T, N)
    else:
        rows = x[..., 0].permute(0, 2, 1)  # (B, N, S, 1) -> (B, S, N)
    return rows[computed.bool()]


def _tolerance_units(x: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> float:
    """max |x - ref| / (atol + rtol * |ref|) elementwise: at most 1 when every element is within tolerance.

    Equal values (both infinite included) are 0; one infinite and the other not is inf.
    """
    x, ref = x.double(), ref.double()
    diff = torch.where(x == ref, torch.zeros_like(x), (x - ref).abs())
    return _amax(diff / (atol + rtol * ref.abs().nan_to_num(posinf=0.0)))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return _amax((a.double() - b.double()).abs())


def _amax(x: torch.Tensor) -> float:
    """The largest element (0.0 for an empty tensor)."""
    return float(x.max()) if x.numel() else 0.0
