"""Read what torch_npu's profiler and msprof write about FIA kernels (spec 25.4).

    prof = read_ascend("run_ascend_pt")      # a *_ascend_pt folder, its ASCEND_PROFILER_OUTPUT, or a CSV file
    prof.kernels[0]                          # FIAKernel: name, start, duration, wait, block num, shapes, metrics
    print(prof.shape_table())                # per distinct input shapes: count, median, p90, wait share
    prof.timeline_figure(); prof.kv_figure() # one step around the FIA calls; duration against KV length

Files and columns, as torch_npu 2.13.0 writes them (``torch_npu/profiler/analysis``):

* ``ASCEND_PROFILER_OUTPUT/kernel_details.csv`` (``KernelViewParser``): msprof's op_summary columns, the first eight
  renamed (``Op Name`` -> ``Name``, ``OP Type`` -> ``Type``, ``Task Type`` -> ``Accelerator Core``,
  ``Task Start Time(us)`` -> ``Start Time(us)``, ``Task Duration(us)`` -> ``Duration(us)``,
  ``Task Wait Time(us)`` -> ``Wait Time(us)``; ``Device_id`` and ``Block Num`` kept), a leading ``Step Id`` when the
  run had steps; Level0 keeps only those plus the shape columns, Level1/2 every op_summary column (the AI-core
  metrics: ``aicore_time(us)``, ``aic_mte2_ratio``, ``cube_utilization(%)``, ...).
* ``trace_view.json`` (``TraceViewParser``): a Chrome-trace event list (``ts`` in microseconds, often a string;
  ``dur`` in microseconds). Host events named ``Enqueue@<op>``, ``Dequeue@<op>`` (the task queue's two threads),
  ``AscendCL@<api>`` (CANN), ``ProfilerStep#N``, torch ops; device tasks in the "Ascend Hardware" process, flows
  ``torch_to_npu`` / ``HostToDevice`` ending on a kernel's start.
* ``op_statistic.csv`` (``OP Type, Core Type, Count, Total Time(us), Min Time(us), Avg Time(us), Max Time(us),
  Ratio(%)``).
* msprof's ``op_summary_*.csv`` (``PROF_*/mindstudio_profiler_output/`` or given directly): ``Op Name``,
  ``OP Type``, ``Task Start Time(us)``, ``Task Duration(us)``, ``Task Wait Time(us)``, ``Block Num`` (``Block Dim``
  in older CANN), ``Input Shapes`` (tensors separated by ``;``, dims by ``,``) and the metrics.

A file that is not one of these (a foreign CSV, a missing column, a non-number where a time belongs, broken JSON)
raises ``ProfileFormatError`` (a ValueError) naming the file and what is wrong.

KV length is read from Input Shapes: the key tensor's sequence axis as ``layout`` reads it (BNSD: axis 2; BSND and
BSH: axis 1; TND: axis 0). It is the key tensor's size, not the actual lengths (those are values, not shapes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .tables import html_table, text_table

__all__ = ["ProfileFormatError", "FIAKernel", "HostEvent", "ShapeRow", "AscendProfile", "read_ascend",
           "read_kernel_csv", "read_trace", "read_op_statistic", "FIA_TYPE"]

FIA_TYPE = "FusedInferAttentionScore"
KERNEL_DETAILS = "kernel_details.csv"
TRACE_VIEW = "trace_view.json"
OP_STATISTIC = "op_statistic.csv"
OUTPUT_DIR = "ASCEND_PROFILER_OUTPUT"
OP_SUMMARY_PATTERN = re.compile(r"^op_summary_(slice_)?\d{1,20}.*\.csv$")

# our field -> the column name in kernel_details.csv, and in msprof's op_summary (aliases in order)
COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "kernel_details": {"name": ("Name",), "type": ("Type",), "start": ("Start Time(us)",),
                       "duration": ("Duration(us)",), "wait": ("Wait Time(us)",), "block_num": ("Block Num",)},
    "op_summary": {"name": ("Op Name",), "type": ("OP Type",), "start": ("Task Start Time(us)",),
                   "duration": ("Task Duration(us)",), "wait": ("Task Wait Time(us)",),
                   "block_num": ("Block Num", "Block Dim")},
}
NOT_METRICS = frozenset({
    "Step Id", "Device_id", "Model Name", "Model ID", "Task ID", "Stream ID", "Infer ID", "Context ID", "OP State",
    "Accelerator Core", "Task Type", "HF32 Eligible", "Mix Block Num", "Mix Block Dim", "Input Shapes",
    "Input Data Types", "Input Formats", "Output Shapes", "Output Data Types", "Output Formats",
    *(c for spec in COLUMNS.values() for names in spec.values() for c in names)})
KV_AXIS = {"BNSD": 2, "BSND": 1, "BSH": 1, "TND": 0}


class ProfileFormatError(ValueError):
    """A profile file is not what torch_npu / msprof write. ``file``: its path; ``problem``: what is wrong."""

    def __init__(self, file: str | Path, problem: str) -> None:
        self.file, self.problem = str(file), problem
        super().__init__(f"{file}: {problem}")


@dataclass(frozen=True)
class HostEvent:
    """One trace_view.json duration event near an FIA kernel. Microseconds.

    kind: "launch" (AscendCL@aclnnFusedInferAttentionScore*), "dequeue" / "enqueue" (task-queue threads),
    "event_wait" (EventWait / EVENT_WAIT tasks), "torch_op" (the Python-side op), "step" (ProfilerStep#N).
    """

    name: str
    kind: str
    start_us: float
    duration_us: float
    process: str
    thread: str

    @property
    def end_us(self) -> float:
        return self.start_us + self.duration_us


@dataclass(frozen=True)
class FIAKernel:
    """One FIA kernel row. Times in microseconds; metrics: the AI-core columns present (numbers only)."""

    name: str
    type: str
    start_us: float
    duration_us: float
    wait_us: float
    block_num: int | None
    input_shapes: tuple[tuple[int, ...], ...]
    step: int | None
    metrics: dict[str, float]
    host: tuple[HostEvent, ...] = ()

    @property
    def end_us(self) -> float:
        return self.start_us + self.duration_us

    @property
    def shape_key(self) -> str:
        """The Input Shapes as written ("1,32,1,128;..."), the key of ``shape_table``."""
        return ";".join(",".join(str(d) for d in s) for s in self.input_shapes)

    def kv_length(self, layout: str = "BNSD") -> int | None:
        """The key tensor's sequence axis (input 1) as ``layout`` reads it; None without a key shape."""
        if len(self.input_shapes) < 2 or layout not in KV_AXIS:
            return None
        key = self.input_shapes[1]
        axis = KV_AXIS[layout]
        return key[axis] if len(key) > axis else None


@dataclass(frozen=True)
class ShapeRow:
    """Kernels of one distinct Input Shapes. Microseconds; wait_share = sum(wait) / sum(wait + duration)."""

    shapes: str
    count: int
    median_us: float
    p90_us: float
    wait_share: float
    kv_length: int | None


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class AscendProfile:
    """What ``read_ascend`` found: FIA kernels with their host events, the files read, op_statistic rows."""

    source: Path
    kind: str  # "kernel_details" or "op_summary"
    kernels: list[FIAKernel]
    files: dict[str, Path]
    events: list[HostEvent] = field(default_factory=list)  # every host-side duration event of trace_view.json
    op_statistic: list[dict[str, str]] | None = None
    layout: str = "BNSD"

    def shape_table(self) -> list[ShapeRow]:
        """One row per distinct Input Shapes, in order of first appearance."""
        groups: dict[str, list[FIAKernel]] = {}
        for k in self.kernels:
            groups.setdefault(k.shape_key, []).append(k)
        rows = []
        for key, ks in groups.items():
            durations = [k.duration_us for k in ks]
            busy = sum(durations) + sum(k.wait_us for k in ks)
            rows.append(ShapeRow(key, len(ks), statistics.median(durations), _quantile(durations, 0.9),
                                 sum(k.wait_us for k in ks) / busy if busy else 0.0, ks[0].kv_length(self.layout)))
        return rows

    def metrics(self) -> list[str]:
        """Names of the AI-core metric columns the kernels carry."""
        return sorted({m for k in self.kernels for m in k.metrics})

    def steps(self) -> list[int]:
        return sorted({k.step for k in self.kernels if k.step is not None})

    def _cells(self) -> tuple[str, list[str], list[list[str]]]:
        caption = f"{len(self.kernels)} {FIA_TYPE} kernels from {self.kind} ({self.source.name}); times in us"
        head = ["Input Shapes", "KV len", "count", "median us", "p90 us", "wait share"]
        body = [[r.shapes, "-" if r.kv_length is None else str(r.kv_length), str(r.count), f"{r.median_us:.2f}",
                 f"{r.p90_us:.2f}", f"{r.wait_share:.1%}"] for r in self.shape_table()]
        return caption, head, body

    def table(self) -> str:
        """The shape table as text, with its units."""
        return text_table(*self._cells())

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return html_table(*self._cells())

    def step_window(self, step: int | None = None) -> tuple[float, float]:
        """(start, end) us of ``step`` (its ProfilerStep#N event, else its kernels); default the first step."""
        steps = [e for e in self.events if e.kind == "step"]
        wanted = step if step is not None else (self.steps()[0] if self.steps() else None)
        for e in steps:
            if wanted is not None and e.name == f"ProfilerStep#{wanted}":
                return e.start_us, e.end_us
        ks = [k for k in self.kernels if wanted is None or k.step == wanted] or self.kernels[:1]
        if not ks:
            raise ValueError(f"{self.source}: no {FIA_TYPE} kernels")
        starts = [min([k.start_us, *(h.start_us for h in k.host)]) for k in ks]
        return min(starts), max(k.end_us for k in ks)

    def timeline_figure(self, step: int | None = None) -> Any:
        """Plotly Gantt of one step: FIA kernels (with their wait before them) and the host events around them."""
        import plotly.graph_objects as go

        start, end = self.step_window(step)
        kernels = [k for k in self.kernels if k.start_us < end and k.end_us > start]
        host = {(h.name, h.start_us): h for k in kernels for h in k.host}.values()
        fig = go.Figure()
        colors = {"kernel": "#1f77b4", "wait": "#d62728", "launch": "#2ca02c", "dequeue": "#ff7f0e",
                  "enqueue": "#9467bd", "event_wait": "#d62728", "torch_op": "#8c564b"}
        bars: dict[str, list[tuple[str, float, float, str]]] = {}
        for h in host:
            bars.setdefault(h.kind, []).append((f"{h.process}/{h.thread}", h.start_us - start, h.duration_us, h.name))
        for k in kernels:
            bars.setdefault("kernel", []).append(("device", k.start_us - start, k.duration_us, k.name))
            if k.wait_us:
                bars.setdefault("wait", []).append(("device", k.start_us - k.wait_us - start, k.wait_us,
                                                     f"wait before {k.name}"))
        for kind, items in bars.items():
            fig.add_trace(go.Bar(y=[i[0] for i in items], x=[i[2] for i in items], base=[i[1] for i in items],
                                 orientation="h", name=kind, marker_color=colors.get(kind, "#7f7f7f"),
                                 hovertext=[i[3] for i in items]))
        fig.update_layout(barmode="overlay", title=f"one step around the FIA calls ({len(kernels)} kernels)",
                          xaxis_title="time since step start (us)", height=320)
        return fig

    def kv_figure(self) -> Any:
        """Plotly scatter: kernel duration (us) against KV length (from Input Shapes, see module docstring)."""
        import plotly.graph_objects as go

        points = [(k.kv_length(self.layout), k.duration_us) for k in self.kernels]
        points = [p for p in points if p[0] is not None]
        fig = go.Figure(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
                                   name=FIA_TYPE))
        fig.update_layout(title="FIA duration against KV length", xaxis_title=f"KV length ({self.layout} key axis)",
                          yaxis_title="duration (us)", height=320)
        return fig


# ------------------------------------------------------------------------------------------------ CSV files

def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [_whole_row(path, i, row, len(header)) for i, row in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ProfileFormatError(path, f"not a readable CSV ({err})") from err
    if not header:
        raise ProfileFormatError(path, "empty file (no header row)")
    if not text.endswith(("\n", "\r")):  # the profiler ends every row with a newline: the last one was cut off
        raise ProfileFormatError(path, f"row {len(rows) + 1}: the file ends mid-line (cut off)")
    return header, rows


def _whole_row(path: Path, row_no: int, row: dict[str | None, Any], columns: int) -> dict[str, str]:
    """A data row with exactly one cell per header column (csv.DictReader marks missing cells None and puts extra
    ones under the key None), stripped."""
    cells = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
    if cells != columns:
        raise ProfileFormatError(path, f"row {row_no}: {cells} cells, the header has {columns} columns (a row cut "
                                       "off mid-line, or malformed)")
    return {k.strip(): v.strip() for k, v in row.items() if k is not None}


def _column(path: Path, header: Sequence[str], names: tuple[str, ...], kind: str) -> str:
    for name in names:
        if name in header:
            return name
    raise ProfileFormatError(path, f"missing column {names[0]!r} of a {kind} file "
                                   f"(columns found: {', '.join(header[:12])}{', ...' if len(header) > 12 else ''})")


def _number(path: Path, row_no: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ProfileFormatError(path, f"row {row_no}: column {column!r} is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise ProfileFormatError(path, f"row {row_no}: column {column!r} is {text!r}, not a finite number")
    return value


def _count(path: Path, row_no: int, column: str, text: str) -> int:
    value = _number(path, row_no, column, text)
    if value != int(value) or value < 0:
        raise ProfileFormatError(path, f"row {row_no}: column {column!r} is {text!r}, not a count")
    return int(value)


def parse_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    """"1,32,1,128;1,8,4096,128;;" -> ((1, 32, 1, 128), (1, 8, 4096, 128), (), ()); quotes ignored."""
    text = text.strip().strip('"')
    if not text:
        return ()
    shapes = []
    for part in text.split(";"):
        dims = [d.strip() for d in part.split(",") if d.strip()]
        shapes.append(tuple(int(d) for d in dims if re.fullmatch(r"-?\d+", d)))
    return tuple(shapes)


def read_kernel_csv(path: str | Path, op_type: str = FIA_TYPE) -> tuple[str, list[FIAKernel]]:
    """(kind, FIA kernels) of a kernel_details.csv or an msprof op_summary_*.csv: the rows whose type (or name)
    contains ``op_type``. kind is "kernel_details" or "op_summary", told apart by their column names."""
    path = Path(path)
    header, rows = _read_csv(path)
    kind = "op_summary" if "Op Name" in header or "Task Duration(us)" in header else "kernel_details"
    spec = COLUMNS[kind]
    cols = {f: _column(path, header, names, kind) for f, names in spec.items()}
    metric_cols = [h for h in header if h not in NOT_METRICS]
    kernels = []
    for i, row in enumerate(rows, start=2):
        if op_type not in row[cols["type"]] and op_type not in row[cols["name"]]:
            continue
        block = row[cols["block_num"]]
        metrics = {}
        for m in metric_cols:
            try:
                metrics[m] = float(row.get(m, ""))
            except ValueError:
                continue  # "N/A" or empty: the metric was not collected for this row
        step = row.get("Step Id", "")
        kernels.append(FIAKernel(
            name=row[cols["name"]], type=row[cols["type"]],
            start_us=_number(path, i, cols["start"], row[cols["start"]]),
            duration_us=_number(path, i, cols["duration"], row[cols["duration"]]),
            wait_us=_number(path, i, cols["wait"], row[cols["wait"]] or "0"),
            block_num=_count(path, i, cols["block_num"], block) if block not in ("", "N/A") else None,
            input_shapes=parse_shapes(row.get("Input Shapes", "")),
            step=int(step) if step.isdigit() else None, metrics=metrics))
    return kind, kernels


def read_op_statistic(path: str | Path) -> list[dict[str, str]]:
    """op_statistic.csv's rows (OP Type, Core Type, Count, Total/Min/Avg/Max Time(us), Ratio(%))."""
    path = Path(path)
    header, rows = _read_csv(path)
    for name in ("OP Type", "Count", "Total Time(us)", "Avg Time(us)"):
        _column(path, header, (name,), "op_statistic")
    return rows


# ------------------------------------------------------------------------------------------------ trace_view

def _kind(name: str) -> str | None:
    if name.startswith("ProfilerStep#"):
        return "step"
    if name.startswith("Dequeue@"):
        return "dequeue"
    if name.startswith("Enqueue"):
        return "enqueue"
    if re.search(r"event_?wait", name, re.I):
        return "event_wait"
    if "aclnnFusedInferAttentionScore" in name:
        return "launch"
    if "fused_infer_attention_score" in name:
        return "torch_op"
    return None


def read_trace(path: str | Path) -> tuple[list[HostEvent], list[HostEvent]]:
    """(host events, device events) of a trace_view.json: the duration ("X") events whose names the kit knows
    (see ``HostEvent.kind``); device events: the EventWait tasks of the "Ascend Hardware" process."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProfileFormatError(path, f"not JSON ({err})") from err
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ProfileFormatError(path, "not a Chrome trace (expected a list of events or {'traceEvents': [...]})")
    processes, threads = {}, {}
    for e in events:
        if isinstance(e, dict) and e.get("ph") == "M":
            name = (e.get("args") or {}).get("name")
            if e.get("name") == "process_name":
                processes[e.get("pid")] = str(name)
            elif e.get("name") == "thread_name":
                threads[(e.get("pid"), e.get("tid"))] = str(name)
    host, device = [], []
    for n, e in enumerate(events):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        kind = _kind(str(e.get("name", "")))
        if kind is None:
            continue
        try:
            start, dur = float(e["ts"]), float(e.get("dur", 0))
        except (KeyError, TypeError, ValueError):
            raise ProfileFormatError(path, f"event {n} ({e.get('name')!r}): missing or non-numeric 'ts'/'dur'") \
                from None
        process = processes.get(e.get("pid"), str(e.get("pid")))
        event = HostEvent(str(e["name"]), kind, start, dur, process,
                          threads.get((e.get("pid"), e.get("tid")), str(e.get("tid"))))
        if process != "Ascend Hardware":
            host.append(event)
        elif kind == "event_wait":  # of the device's tasks only the waits: the kernels come from the CSV
            device.append(event)
    return host, device


def _attach(kernels: list[FIAKernel], events: Iterable[HostEvent], window_us: float) -> list[FIAKernel]:
    """Each kernel with the known events overlapping [previous FIA kernel's end (at most window_us back), its end]."""
    ordered = sorted(events, key=lambda e: e.start_us)
    out = []
    previous_end = None
    for k in sorted(kernels, key=lambda k: k.start_us):
        lo = k.start_us - window_us if previous_end is None else max(previous_end, k.start_us - window_us)
        near = tuple(e for e in ordered if e.kind != "step" and e.end_us > lo and e.start_us < k.end_us)
        out.append(replace(k, host=near))
        previous_end = k.end_us
    return out


# ------------------------------------------------------------------------------------------------ folders

def _find(path: Path) -> dict[str, Path]:
    """The files of a profile: a file itself, an ASCEND_PROFILER_OUTPUT folder, or a *_ascend_pt folder."""
    if path.is_file():
        if path.name == TRACE_VIEW:
            raise ProfileFormatError(path, f"a trace alone has no kernel table: give its folder (with {KERNEL_DETAILS})"
                                           " or read it with read_trace")
        return {"kernels": path}
    if not path.is_dir():
        raise ProfileFormatError(path, "no such file or folder")
    if (path / OUTPUT_DIR).is_dir():
        root = path / OUTPUT_DIR
    elif (path / KERNEL_DETAILS).is_file():
        root = path
    else:
        runs = sorted(p for p in path.iterdir() if p.is_dir() and (p / OUTPUT_DIR).is_dir())
        if len(runs) == 1:
            return _find(runs[0])
        summaries = sorted(p for p in path.rglob("op_summary_*.csv") if OP_SUMMARY_PATTERN.match(p.name))
        if not runs and summaries:
            return {"kernels": summaries[0]}
        if runs:
            raise ProfileFormatError(path, f"{len(runs)} profiler runs inside ({', '.join(p.name for p in runs)}):"
                                           " read one at a time")
        raise ProfileFormatError(path, f"no {OUTPUT_DIR}/{KERNEL_DETAILS} and no msprof op_summary_*.csv here")
    files = {"kernels": root / KERNEL_DETAILS}
    if not files["kernels"].is_file():
        raise ProfileFormatError(root, f"missing {KERNEL_DETAILS}")
    for key, name in (("trace", TRACE_VIEW), ("op_statistic", OP_STATISTIC)):
        if (root / name).is_file():
            files[key] = root / name
    return files


def read_ascend(path: str | Path, *, op_type: str = FIA_TYPE, layout: str = "BNSD",
                window_us: float = 2000.0) -> AscendProfile:
    """Read a torch_npu profiler folder (``*_ascend_pt`` or its ``ASCEND_PROFILER_OUTPUT``), a kernel_details.csv,
    or an msprof op_summary_*.csv, keeping the ``op_type`` kernels.

    Args:
        layout: the FIA calls' input_layout, to read KV length from the key's shape (see the module docstring).
        window_us: how far before a kernel to look for its host events (bounded by the previous FIA kernel).
    Raises:
        ProfileFormatError: a file is missing, foreign or malformed (names the file and the column / problem).
    """
    path = Path(path)
    if layout not in KV_AXIS:
        raise ValueError(f"layout must be one of {sorted(KV_AXIS)}, got {layout!r}")
    files = _find(path)
    kind, kernels = read_kernel_csv(files["kernels"], op_type)
    events: list[HostEvent] = []
    if "trace" in files:
        host, device = read_trace(files["trace"])
        events = host + device
        kernels = _attach(kernels, events, window_us)
    stats = read_op_statistic(files["op_statistic"]) if "op_statistic" in files else None
    return AscendProfile(path, kind, kernels, files, events, stats, layout)

