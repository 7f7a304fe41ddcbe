"""Time and measure FIA calls on several backends (or any named callables) and keep the results.

    result = profile(call, ["reference", "compiled"], repeats=10)      # a FIACall or a builders case
    result = profile({"fia": lambda: op(q, k, v, ...), "sdpa": lambda: F.sdpa(q, k, v)})
    result.table(); result.figure(); result.save_json("profile.json")
    prof = read_ascend("run_ascend_pt")                                  # what torch_npu's profiler wrote
    compare_runs(baseline, new).passed                                  # the 8 % regression gate, per shape
    graph_modes(plan, kv_steps)      # eager / GE static / dynamic / tiling sink / aclgraph: compiles, host time

``call`` may be a plan (``fia_kit.plan(...)``): it is run through the call it was built from, not parsed again.

Per variant: one first call (timed alone: it includes torch.compile's tracing and compiling, or graph build), then
``warmup - 1`` untimed calls, then ``repeats`` timed calls (time.perf_counter, the device synchronised before and
after each call on CUDA/NPU). Reported: median, p10/p90, IQR, min/max in seconds; ``first_s - median_s`` as the
one-off (compile) cost; the dynamo graphs compiled while the variant ran; and one extra call's peak memory, bytes:

* CUDA / NPU: ``max_memory_allocated() - memory_allocated()`` before the call (peak stats reset first): exact for
  the caching allocator's live tensors.
* CPU: torch keeps no statistics, so the kit resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux)
  and reports VmHWM - VmRSS before the call. Noisy and a lower bound: memory the allocator freed earlier but kept
  resident is reused unseen (``benchmarks/bench_reference.py`` measures in a fresh process instead). None where
  /proc is not available.

Backends (names of ``variants``): "reference"; "compiled" / "compiled-list" (torch.compile of the look-alike op
with int64 tensor / int list lengths, aot_eager); and on an Ascend box "npu" (eager, host int lists),
"npu-graph" (TorchAir GE graph, int64 device-tensor lengths) and "npu-graph-tiling" (the same with
tiling_schedule_optimize). ``trace_dir`` writes one torch.profiler (torch_npu.profiler on the NPU) trace per
variant; kineto's stray "USDT:" lines on file descriptor 2 are silenced while it runs.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .ascend_profile import AscendProfile, ProfileFormatError, read_ascend
from .backends import RunOptions, as_call, as_plan, backend_names, prepare, recompile_counts
from .backends.graph import GraphOptions
from .backends.model import synchronize
from .call import FIACall
from .mode_matrix import MODES, ModeTable, graph_modes
from .tables import html_table, text_table

__all__ = ["profile", "variants", "ProfileResult", "ProfileRow", "compare_runs", "GateResult", "GateRow",
           "read_ascend", "AscendProfile", "ProfileFormatError", "recompiles", "peak_memory", "write_trace",
           "silenced_fd2", "atomic_write_json", "Progress", "VARIANTS", "NPU_BACKENDS", "graph_modes", "MODES",
           "ModeTable"]

# Profiling variants beyond the registered backends (``fia_kit.backends.backend_names()``): a backend with options.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "compiled-list": ("compiled", {"lengths": "list"}),
    "npu-graph-tiling": ("npu-graph", {"graph_options": GraphOptions(tiling_schedule_optimize=True)}),
}
NPU_BACKENDS = ("npu", "npu-graph", "npu-graph-tiling")

Runner = Callable[[], Any]


def variants(call: Any, backends: Sequence[str], *, compile_backend: str = "aot_eager",
             torch_npu: Any = None, torchair: Any = None,
             npu_device: str | torch.device = "npu") -> dict[str, tuple[Runner, torch.device]]:
    """Zero-argument runners of ``call`` (a Plan, FIACall or case, planned once) per backend or ``VARIANTS`` name.

    Building a runner does not run it: compile and graph build happen in its first call. ``torch_npu``,
    ``torchair`` and ``npu_device`` default to the installed modules and "npu" (tests pass stand-ins and "cpu").
    """
    the_plan = as_plan(call)
    made: dict[str, tuple[Runner, torch.device]] = {}
    for name in backends:
        backend, extra = VARIANTS.get(name, (name, {}))
        if backend not in backend_names():
            raise ValueError(f"unknown backend {name!r}: use one of {', '.join((*backend_names(), *VARIANTS))}")
        device = npu_device if backend.startswith("npu") else None
        options = RunOptions(device=device, compile_backend=compile_backend, torch_npu=torch_npu,
                             torchair=torchair, **extra)
        runner = prepare(the_plan, backend, options)
        made[name] = runner.fn, runner.device
    return made


@dataclass
class ProfileRow:
    """One variant. Seconds and bytes; ``peak_bytes`` None when not measured."""

    name: str
    device: str
    repeats: int
    median_s: float
    p10_s: float
    p90_s: float
    iqr_s: float
    min_s: float
    max_s: float
    first_s: float
    graphs_compiled: int
    peak_bytes: int | None
    memory_method: str | None
    trace: str | None = None

    @property
    def one_off_s(self) -> float:
        """First call minus a steady call: compile / graph build / lazy initialisation, >= 0."""
        return max(0.0, self.first_s - self.median_s)


@dataclass
class ProfileResult:
    """Rows of one profile run, plus free-form metadata (torch version, threads, call summary)."""

    rows: list[ProfileRow]
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> ProfileRow:
        return next(r for r in self.rows if r.name == name)

    def ratios(self, baseline: str) -> dict[str, float]:
        """median_s of each row / median_s of ``baseline``."""
        base = self.row(baseline).median_s
        return {r.name: r.median_s / base for r in self.rows}

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["name", "device", "median ms", "p10 ms", "p90 ms", "IQR ms", "first ms", "graphs", "peak MiB"]
        body = [[r.name, r.device, f"{r.median_s * 1e3:.3f}", f"{r.p10_s * 1e3:.3f}", f"{r.p90_s * 1e3:.3f}",
                 f"{r.iqr_s * 1e3:.3f}", f"{r.first_s * 1e3:.1f}", str(r.graphs_compiled),
                 "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}"] for r in self.rows]
        return head, body

    def table(self) -> str:
        head, body = self._cells()
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                         for row in [head, *body])

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        head, body = self._cells()
        cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
        rows = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in body)
        return f"<table><tr>{cells(head, 'th')}</tr>{rows}</table>"

    def figure(self) -> Any:
        """Plotly bars of the median time per variant, IQR as error bars (``fia_kit.figures.timing_chart``)."""
        from .figures import timing_chart
        return timing_chart([{"name": r.name, "median_ms": r.median_s * 1e3, "iqr_ms": r.iqr_s * 1e3}
                             for r in self.rows], error="iqr_ms")

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileResult:
        return cls([ProfileRow(**r) for r in data["rows"]], dict(data.get("meta", {})))

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temp file in the same directory, fsync, then os.replace over ``path``.

        An interrupted or failing write leaves any previous file at ``path`` untouched.
        """
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> ProfileResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """json.dump ``data`` to ``path`` atomically (temp file + fsync + os.replace); the temp file never stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def profile(target: Any, backends: Sequence[str] | None = None, *, warmup: int = 3, repeats: int = 10,
            memory: bool = True, trace_dir: str | os.PathLike[str] | None = None, progress: bool = False,
            device: str | torch.device = "cpu", **variant_options: Any) -> ProfileResult:
    """Profile named callables, or a call on ``backends``.

    Args:
        target: {name: zero-argument callable} (run on ``device``), or a Plan / FIACall / builders case (then
            ``backends``, default ["reference", "compiled"], picks the runners, see ``variants``).
        warmup: calls before timing, the first one included (>= 1).
        repeats: timed calls (>= 1).
        memory: measure one extra call's peak memory (see the module docstring for the method per device).
        trace_dir: write a profiler trace per variant there (``<name>.json``, or torch_npu's trace folder).
        progress: show a progress bar (ipywidgets in a notebook, else one stderr line). Off by default.
        variant_options: passed to ``variants`` (compile_backend, torch_npu, torchair, npu_device).
    """
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1, got warmup={warmup}, repeats={repeats}")
    if isinstance(target, Mapping):
        if backends is not None:
            raise ValueError("backends applies to a call, not to named callables")
        runners = {name: (fn, torch.device(device)) for name, fn in target.items()}
        meta: dict[str, Any] = {}
    else:
        the_plan = as_plan(target)
        runners = variants(the_plan, list(backends or ("reference", "compiled")), **variant_options)
        meta = {"call": _call_summary(the_plan.call)}
    meta |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "warmup": warmup,
             "repeats": repeats, "units": {"time": "s", "memory": "bytes"}}
    steps = len(runners) * (warmup + repeats + int(memory) + int(trace_dir is not None))
    rows = []
    with Progress(steps, enabled=progress) as bar:
        for name, (fn, dev) in runners.items():
            rows.append(_profile_one(name, fn, dev, warmup, repeats, memory, trace_dir, bar))
    return ProfileResult(rows, meta)


def _call_summary(call: FIACall) -> dict[str, Any]:
    return {"form": call.form, "query": list(call.query.shape), "key": list(call.key.shape),
            "dtype": str(call.query.dtype).removeprefix("torch."),
            "keywords": sorted(call.given)}


def _profile_one(name: str, fn: Runner, device: torch.device, warmup: int, repeats: int, memory: bool,
                 trace_dir: str | os.PathLike[str] | None, bar: Progress) -> ProfileRow:
    graphs_before = _graphs_compiled()
    first = _timed_call(fn, device)
    bar.step()
    for _ in range(warmup - 1):
        _timed_call(fn, device)
        bar.step()
    times = []
    for _ in range(repeats):
        times.append(_timed_call(fn, device))
        bar.step()
    peak, method = (None, None)
    if memory:
        peak, method = peak_memory(fn, device)
        bar.step()
    trace = None
    if trace_dir is not None:
        trace = str(write_trace(fn, device, Path(trace_dir), name))
        bar.step()
    p10, p25, p75, p90 = _quantiles(times, (0.10, 0.25, 0.75, 0.90))
    return ProfileRow(name, str(device), repeats, statistics.median(times), p10, p90, p75 - p25, min(times),
                      max(times), first, _graphs_compiled() - graphs_before, peak, method, trace)


def _timed_call(fn: Runner, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Linear-interpolated quantiles (numpy's default), exact for a single value."""
    ordered = sorted(values)
    out = []
    for q in qs:
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        out.append(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    return out


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (torch._dynamo.utils.counters)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------------------------------------------- memory

def peak_memory(fn: Runner, device: torch.device) -> tuple[int | None, str | None]:
    """(peak bytes one call of ``fn`` adds, method), see the module docstring; (None, None) if unmeasurable."""
    if device.type in ("cuda", "npu"):
        backend = getattr(torch, device.type)
        synchronize(device)
        backend.reset_peak_memory_stats(device)
        before = backend.memory_allocated(device)
        fn()
        synchronize(device)
        return int(backend.max_memory_allocated(device) - before), f"torch.{device.type}.max_memory_allocated delta"
    status = Path("/proc/self/status")
    if not status.exists() or not _reset_peak_rss():
        return None, None
    before = _status_bytes(status, "VmRSS")
    fn()
    return max(0, _status_bytes(status, "VmHWM") - before), "CPU VmHWM - VmRSS (noisy lower bound)"


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(status: Path, field_name: str) -> int:
    return int(re.search(rf"^{field_name}:\s+(\d+) kB", status.read_text(), re.M).group(1)) * 1024


# ------------------------------------------------------------------------------------------------------ traces

@contextlib.contextmanager
def silenced_fd2() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null inside the block (kineto writes "USDT:" lines there at random)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def write_trace(fn: Runner, device: torch.device, directory: Path, name: str) -> Path:
    """Profile one call of ``fn`` and write its trace: torch.profiler's Chrome JSON (``<name>.json``), or on the
    NPU torch_npu.profiler's trace folder (``<name>/``). Returns the path written."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if device.type == "npu":
        return _npu_trace(fn, directory / safe)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    path = directory / f"{safe}.json"
    with silenced_fd2():
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            fn()
            synchronize(device)
        prof.export_chrome_trace(str(path))
    return path


def _npu_trace(fn: Runner, folder: Path) -> Path:
    """torch_npu.profiler around one call (Ascend only; needs torch_npu imported)."""
    import torch_npu  # noqa: PLC0415  (present only on an Ascend box)
    prof_mod = torch_npu.profiler
    activities = [prof_mod.ProfilerActivity.CPU, prof_mod.ProfilerActivity.NPU]
    with silenced_fd2(), prof_mod.profile(activities=activities,
                                          on_trace_ready=prof_mod.tensorboard_trace_handler(str(folder))):
        fn()
        torch.npu.synchronize()
    return folder


# ---------------------------------------------------------------------------------------------------- progress

class Progress:
    """A progress bar for long sweeps: ipywidgets.IntProgress inside a Jupyter kernel, else one stderr line
    rewritten in place. Disabled (no output at all) unless ``enabled``."""

    def __init__(self, total: int, enabled: bool = True, description: str = "profiling") -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.description = description
        self.widget = self._widget() if enabled else None

    def _widget(self) -> Any:
        try:
            from IPython import get_ipython
            from IPython.display import display
            from ipywidgets import IntProgress
        except ImportError:
            return None
        shell = get_ipython()
        if shell is None or not hasattr(shell, "kernel"):
            return None
        bar = IntProgress(min=0, max=self.total, description=self.description)
        display(bar)
        return bar

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.widget is not None:
            self.widget.value = self.done
        else:
            sys.stderr.write(f"\r{self.description}: {self.done}/{self.total}")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self.widget is None:
            sys.stderr.write("\n")
        elif self.widget is not None:
            self.widget.close()


def recompiles(call: Any, kv_lengths: Sequence[Sequence[int]]) -> dict[str, int]:
    """Compiles dynamo makes for a decode step run with each of ``kv_lengths`` in turn, lengths given as an int
    list (torch_npu's schema: each new value recompiles) vs an int64 tensor (TorchAir's: one compile).

    Delegates to ``fia_kit.backends.compiled.recompile_counts``; returns {"list": n, "tensor": m}.
    """
    return recompile_counts(as_call(call), kv_lengths)


# ------------------------------------------------------------------------------------------ regression gate

@dataclass(frozen=True)
class GateRow:
    """One shape (Ascend profiles) or variant + call shape (ProfileResult). Microseconds; change = new/base - 1."""

    key: str
    baseline_us: float | None
    new_us: float | None
    change: float | None
    verdict: str  # "regressed", "faster", "ok", "only in baseline", "only in new"


@dataclass(frozen=True)
class GateResult:
    """``compare_runs``'s table; ``passed`` when no shape regressed by more than ``threshold``."""

    rows: list[GateRow]
    threshold: float

    @property
    def passed(self) -> bool:
        return not self.regressions

    @property
    def regressions(self) -> list[GateRow]:
        return [r for r in self.rows if r.verdict == "regressed"]

    def _cells(self) -> tuple[str, list[str], list[list[str]]]:
        caption = (f"regression gate at {self.threshold:.0%} on the median: "
                   + ("PASS" if self.passed else f"FAIL ({len(self.regressions)} regressed)"))
        head = ["shape", "baseline median us", "new median us", "change", "verdict"]
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        body = [[r.key, fmt(r.baseline_us), fmt(r.new_us), "-" if r.change is None else f"{r.change:+.1%}",
                 r.verdict] for r in self.rows]
        return caption, head, body

    def table(self) -> str:
        return text_table(*self._cells())

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return html_table(*self._cells())


def _medians(run: Any) -> tuple[str, dict[str, float]]:
    """("ascend" | "profile", {key: median us}) of an AscendProfile, a ProfileResult, its dict, or a path to one."""
    if isinstance(run, (str, os.PathLike)):
        path = Path(run)
        run = ProfileResult.load_json(path) if path.suffix == ".json" else read_ascend(path)
    if isinstance(run, Mapping):
        run = ProfileResult.from_dict(run)
    if isinstance(run, AscendProfile):
        return "ascend", {r.shapes: r.median_us for r in run.shape_table()}
    if isinstance(run, ProfileResult):
        call = run.meta.get("call") or {}
        shape = f" q{call['query']} k{call['key']} {call['dtype']}" if call else ""
        return "profile", {f"{r.name}{shape}": r.median_s * 1e6 for r in run.rows}
    raise TypeError(f"expected an AscendProfile, a ProfileResult (or its JSON) or a path, got {type(run).__name__}")


def compare_runs(baseline: Any, new: Any, threshold: float = 0.08) -> GateResult:
    """The regression gate: per shape, is the new median more than ``threshold`` slower than the baseline's?

    The op's own team gates at 8 % (spec 25.4). Works on ``read_ascend`` results (per distinct Input Shapes) and on
    the kit's ``ProfileResult`` (per variant, with the call's shapes), or paths to either (folder / CSV / .json).
    Shapes found in only one run are listed, not failed.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    kind_a, base = _medians(baseline)
    kind_b, other = _medians(new)
    if kind_a != kind_b:
        raise ValueError(f"cannot gate a {kind_a} run against a {kind_b} run: compare like with like")
    rows = []
    for key in list(base) + [k for k in other if k not in base]:
        a, b = base.get(key), other.get(key)
        if a is None or b is None:
            rows.append(GateRow(key, a, b, None, "only in baseline" if b is None else "only in new"))
            continue
        change = b / a - 1 if a else float("inf")
        verdict = "regressed" if change > threshold else ("faster" if change < -threshold else "ok")
        rows.append(GateRow(key, a, b, change, verdict))
    return GateResult(rows, threshold)
