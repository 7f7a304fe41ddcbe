"""One entry point for every way of running the op, and a comparison against the reference.

    result = fia_kit.run(call, backend="auto")      # RunResult: outputs, backend used, timings
    table = fia_kit.compare(call, backends=["npu", "npu-graph"])

Backends (``fia_kit.environment.BACKENDS``):
    reference  the kit's pure-PyTorch op (default without an NPU);
    npu        torch_npu's eager op, inputs on the NPU, lengths as int lists;
    npu-graph  TorchAir graph mode (tng.ops, int64 device-tensor lengths, max-autotune);
    compiled   torch.compile(fullgraph=True) of the kit's look-alike op on CPU/CUDA, the graph-mode stand-in.
"auto" is "npu" when ``fia_kit.environment.detect()`` finds a usable NPU, else "reference".

``call`` is a ``FIACall`` (``fia_kit.call.parse_call``), or a builders case / built call: anything with
``to_fia_call()``, or with ``build(form)`` returning one.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .. import reference
from ..call import FIACall, parse_call
from ..environment import detect
from ..errors import FIAArgumentError
from ..kernel import RowStatus, compute_dtype
from ..layouts import to_canonical
from ..planning import build_plan
from ..reference import run_call
from . import compiled as compiled_backend
from . import graph as graph_backend
from . import npu as npu_backend
from .bindings import convert_call, supported_keywords
from .compiled import captured_graph, recompile_counts
from .graph import GraphOptions
from .model import timed

__all__ = ["run", "compare", "as_call", "founding_example", "RunResult", "Comparison", "ComparisonRow",
           "GraphOptions", "TOLERANCES", "convert_call", "supported_keywords", "captured_graph",
           "recompile_counts"]

BACKEND_NAMES = ("reference", "compiled", "npu", "npu-graph")


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


def as_call(call: Any, form: str | None = None) -> FIACall:
    """A FIACall from a FIACall, an object with ``to_fia_call()``, or a case with ``build(form)``."""
    if isinstance(call, FIACall):
        return call
    if callable(getattr(call, "to_fia_call", None)):
        return call.to_fia_call()
    if callable(getattr(call, "build", None)):
        return call.build(form or "v1").to_fia_call()
    raise TypeError(f"expected a FIACall or a case with to_fia_call()/build(form), got {type(call).__name__}")


def run(call: Any, backend: str = "auto", *, repeat: int = 1, form: str | None = None,
        graph_options: GraphOptions | None = None, compile_backend: str = "aot_eager",
        lengths: compiled_backend.Lengths = "tensor", torch_npu: Any = None, torchair: Any = None,
        device: str | torch.device | None = None) -> RunResult:
    """Run ``call`` on one backend and time it.

    Args:
        call: see the module docstring; ``form`` ("v1"/"v2") picks the version when building a case.
        backend: "auto", "reference", "compiled", "npu" or "npu-graph".
        repeat: timed calls after the first.
        graph_options: npu-graph's CompilerConfig options (mode, tiling_schedule_optimize, graph_dump).
        compile_backend, lengths: the compiled backend's torch.compile backend ("aot_eager"; "inductor" compiles
            for seconds) and length type ("tensor": TorchAir schema; "list": torch_npu schema).
        torch_npu, torchair, device: stand-in modules and device for the npu backends (default: the installed
            modules, device "npu"); device for compiled (default: the query's).
    """
    call = as_call(call, form)
    if backend == "auto":
        backend = detect().default_backend()
    dropped: tuple[str, ...] = ()
    if backend == "reference":
        op = getattr(reference, npu_backend.OP_NAMES[call.form])
        fn, dev = (lambda: op(call.query, call.key, call.value, **call.keywords())), call.query.device
    elif backend == "compiled":
        build_plan(call)  # bad arguments raise here, not from inside the compiled graph
        fn, dev = compiled_backend.prepare(call, lengths, compile_backend, device)
    elif backend == "npu":
        fn, dev, binding = npu_backend.prepare(call, torch_npu, device or "npu")
        dropped = binding.dropped
    elif backend == "npu-graph":
        fn, dev, binding = graph_backend.prepare(call, graph_options, torch_npu, torchair, device or "npu")
        dropped = binding.dropped
    else:
        raise FIAArgumentError("backend", f"must be 'auto' or one of {', '.join(BACKEND_NAMES)}", backend)
    (out, lse), first, median = timed(fn, dev, repeat)
    return RunResult(out, lse, backend, {"first": first, "median": median}, dropped)


def founding_example(form: str = "v1", dtype: torch.dtype = torch.float16, seed: int = 0) -> FIACall:
    """The founding document's TorchAir example (spec 1.4) as a call, with seeded inputs.

    q (1, 8, 164, 128), k/v (1, 8, 1024, 128), BNSD, scale 1/sqrt(128), pre/next 65535, actual lengths [50] and
    [512]; v1 adds the shared prefix (1, 8, 1024, 128) with actual_shared_prefix_len [50] (v2 has no prefix).
    Rows 50..163 of the output are zero; batch 0 attends over 50 prefix + 512 keys.
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v, kp, vp = (torch.randn(1, 8, s, 128, generator=g).to(dtype) for s in (164, 1024, 1024, 1024, 1024))
    common = {"input_layout": "BNSD", "pre_tokens": 65535, "next_tokens": 65535}
    if form == "v1":
        return parse_call("v1", q, k, v, {**common, "num_heads": 8, "scale": 128 ** -0.5,
                                          "actual_seq_lengths": [50], "actual_seq_lengths_kv": [512],
                                          "key_shared_prefix": kp, "value_shared_prefix": vp,
                                          "actual_shared_prefix_len": [50]})
    return parse_call("v2", q, k, v, {**common, "num_query_heads": 8, "softmax_scale": 128 ** -0.5,
                                      "actual_seq_qlen": [50], "actual_seq_kvlen": [512]})


# dtype -> (atol, rtol) of the fixed per-dtype scheme (FlashInfer-style; fp16 1e-3, bf16 1e-2).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}
LSE_TOLERANCE = (1e-4, 1e-4)  # LSE is float32 whatever the query dtype


@dataclass(frozen=True)
class ComparisonRow:
    """Errors of one backend against the reference, on COMPUTED rows only.

    Attributes:
        out_abs, out_rel: max |x - ref| and max |x - ref| / max(|ref|, tiny) of attention_out.
        lse_abs: max |lse - ref_lse| (None when the call did not ask for the LSE).
        golden_ratio: max error vs a float64 golden over the reference's own max error vs it (the FlexAttention
            scheme; None when no golden could be computed).
        within_tolerance: every element within atol + rtol * |ref| (``TOLERANCES`` by dtype) and the LSE within
            ``LSE_TOLERANCE``.
        within_golden: error vs golden <= factor * the reference's error vs golden (+ 1e-6 floor).
    """

    backend: str
    out_abs: float
    out_rel: float
    lse_abs: float | None
    golden_ratio: float | None
    within_tolerance: bool
    within_golden: bool | None
    seconds: float


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
        head = ["backend", "out max abs", "out max rel", "lse max abs", "vs golden", "tolerance", "golden",
                "seconds"]
        fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        yes = lambda b: "-" if b is None else ("pass" if b else "FAIL")  # noqa: E731
        body = [[r.backend, fmt(r.out_abs), fmt(r.out_rel), fmt(r.lse_abs), fmt(r.golden_ratio),
                 yes(r.within_tolerance), yes(r.within_golden), f"{r.seconds:.4f}"] for r in self.rows]
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


def compare(call: Any, backends: list[str] | None = None, *, factor: float = 1.1, form: str | None = None,
            **run_options: Any) -> Comparison:
    """Max abs/rel error of attention_out and softmax_lse per backend against the reference.

    Only rows the spec defines are compared: the reference's ``row_status == RowStatus.COMPUTED`` (padding,
    out-of-band and fully masked rows are left out). Two verdicts per backend: the fixed per-dtype tolerance
    (``TOLERANCES``) and the relative scheme of FlexAttention's tests (error vs a float64 golden within ``factor``
    times the reference's own error vs that golden; here the reference computes in float32 and rounds to the
    query dtype, as the op's high-precision path does).

    Args:
        backends: default ["compiled"] off the box, ["npu", "npu-graph"] with a usable NPU.
        run_options: passed to ``run`` (repeat, graph_options, compile_backend, torch_npu, torchair, device, ...).
    """
    call = as_call(call, form)
    if backends is None:
        usable = detect().backends()
        backends = ["npu", "npu-graph"] if usable["npu"][0] else ["compiled"]
    problem = build_plan(call)
    reference = run_call(call)
    computed = reference.row_status == int(RowStatus.COMPUTED)
    golden = _golden(call)
    dtype = call.query.dtype
    rows = []
    ref_out = _rows(reference.attention_out, problem, computed, output=True)
    ref_lse = _rows(reference.softmax_lse, problem, computed, output=False)
    base_err = _max_abs(ref_out, golden) if golden is not None else None
    for backend in backends:
        result = run(call, backend, **run_options)
        out = _rows(result.attention_out.cpu(), problem, computed, output=True)
        lse = result.softmax_lse.cpu()
        lse_abs = _max_abs(_rows(lse, problem, computed, output=False), ref_lse) if lse.numel() else None
        atol, rtol = TOLERANCES[dtype]
        diff = (out.double() - ref_out.double()).abs()
        ok = bool((diff <= atol + rtol * ref_out.double().abs()).all())
        if lse_abs is not None:
            ok = ok and lse_abs <= LSE_TOLERANCE[0] + LSE_TOLERANCE[1] * _amax(ref_lse.abs())
        ratio = within = None
        if golden is not None:
            err = _max_abs(out, golden)
            ratio = err / base_err if base_err else (0.0 if err == 0 else float("inf"))
            within = err <= factor * base_err + 1e-6
        rows.append(ComparisonRow(backend, _amax(diff),
                                  _amax(diff / ref_out.double().abs().clamp_min(1e-6)),
                                  lse_abs, ratio, ok, within, result.timings["median"]))
    return Comparison(dtype, int(computed.sum()), computed.numel(), rows)


def _rows(x: torch.Tensor, problem, computed: torch.Tensor, output: bool) -> torch.Tensor:
    """The COMPUTED rows of attention_out (R, N_q, Dv) or of the LSE (R, N_q), from any layout."""
    if output:
        rows = to_canonical(x, problem.layout.out, problem.num_heads).permute(0, 2, 1, 3)  # (B, S, N, D)
    elif problem.layout.packed:
        rows = x.reshape(1, x.shape[0], x.shape[1])  # (T, N, 1) -> (1, T, N)
    else:
        rows = x[..., 0].permute(0, 2, 1)  # (B, N, S, 1) -> (B, S, N)
    return rows[computed.bool()]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return _amax((a.double() - b.double()).abs())


def _amax(x: torch.Tensor) -> float:
    """The largest element (0.0 for an empty tensor)."""
    return float(x.max()) if x.numel() else 0.0


def _golden(call: FIACall) -> torch.Tensor | None:
    """COMPUTED rows of attention_out computed in float64 from float64 copies of the float inputs (None: n/a)."""
    def up(v: Any) -> Any:
        return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    try:
        wide = replace(call, query=up(call.query), key=up(call.key), value=up(call.value),
                       options={n: up(v) for n, v in call.options.items()})
        with compute_dtype(torch.float64):
            result = run_call(wide)
        problem = build_plan(wide)
    except FIAArgumentError:
        return None
    return _rows(result.attention_out, problem, result.row_status == int(RowStatus.COMPUTED), output=True)
