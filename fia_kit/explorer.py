"""An interactive explorer of one FIA call: change a control, see at once which keys each query sees and what comes out.

    import fia_kit
    fia_kit.explore()                       # the default case, reference backend
    fia_kit.explore(case.replace(sparse_mode=3))

Three layers, the outer two thin:

* ``compute(case, backend) -> Outcome``: build the call from the ``Case``, validate and run it; a rejected call gives
  an Outcome holding the FIAArgumentError message (nothing raises).
* ``build_figures(outcome, batch) -> dict[str, go.Figure]`` and ``call_code(call)``: pure, from ``fia_kit.figures``.
* ``Explorer``: ipywidgets controls whose observers rebuild the case, re-run ``compute`` and redraw the figure
  widgets in place; a rejected call shows its message and keeps the last good figures.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from . import figures
from .backends import TOLERANCES
from .backends import run as run_backend
from .call import FIACall
from .case import MASK_KINDS, Case
from .errors import FIAArgumentError
from .kernel import ReferenceResult, run_plan
from .layouts import INPUT_LAYOUTS
from .masks import SPARSE_MODES
from .planning import Plan, plan
from .signatures import LENGTH_PARAMETERS, OP_NAMES, version_of

FIGURES = ("visibility", "probabilities", "output", "lse", "difference", "paged KV", "layout")
TABS = FIGURES[1:]  # shown in tabs under the visibility map; only the selected tab is redrawn at once
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
CUSTOM_MASK = "the case's own tensor"
_LENGTHS = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")

CONTROL_WIDTH = "260px"  # fits "3: rightDownCausal" after a 95 px label; four columns fit a 1400 px window
PREVIEW_CELLS = 48  # the static preview's map is pooled to at most this many rows and columns
PREVIEW_CELL_PX = 8


# ------------------------------------------------------------------------------------------------ pure layer

@dataclass(frozen=True)
class Outcome:
    """One run of the explorer: the case, and either the validated problem and its results, or the error.

    Attributes:
        result: the backend's attention_out and softmax_lse with the reference's row status (the reference's own
            result when the backend is "reference").
        reference_out: the reference's attention_out when another backend ran (for the difference figure).
        tolerance: the absolute tolerance of the difference figure (``fia_kit.backends.TOLERANCES``).
    """

    case: Case
    backend: str
    call: FIACall | None = None
    problem: Plan | None = None
    result: ReferenceResult | None = None
    error: str | None = None
    reference_out: torch.Tensor | None = None
    tolerance: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_lengths(text: str, name: str) -> tuple[int, ...]:
    """Parse "5, 7" into (5, 7): non-negative integers separated by commas, nothing else (no eval).

    Raises:
        FIAArgumentError: naming ``name`` for anything else (empty text, signs, letters, expressions).
    """
    if not isinstance(text, str) or not _LENGTHS.match(text):
        raise FIAArgumentError(name, "must be non-negative integers separated by commas, e.g. '5, 7'", text)
    return tuple(int(part) for part in text.split(",") if part.strip())


def usable_backends() -> list[str]:
    """Backends usable here (``fia_kit.environment.detect().backends()``), the reference first."""
    from .environment import detect

    return [name for name, (usable, _) in detect().backends().items() if usable]


def compute(case: Case, backend: str = "reference") -> Outcome:
    """Build, validate and run ``case`` on ``backend``; a rejected case gives an Outcome with ``error`` set.

    Another backend than the reference also runs the reference, whose row status the figures read and whose
    output the difference figure compares with.
    """
    try:
        problem = plan(case)  # the case's natural form: v2 for learnable sinks (v2-only), else its own / v1
        call = problem.call
        reference = run_plan(problem)
        if backend == "reference":
            return Outcome(case, backend, call, problem, reference)
        ran = run_backend(problem, backend)
    except FIAArgumentError as err:
        return Outcome(case, backend, error=str(err))
    lse = ran.softmax_lse.cpu() if ran.softmax_lse.numel() else reference.softmax_lse
    result = replace(reference, attention_out=ran.attention_out.cpu(), softmax_lse=lse)
    atol = TOLERANCES.get(call.query.dtype, (0.0, 0.0))[0]
    return Outcome(case, backend, call, problem, result, reference_out=reference.attention_out, tolerance=atol)


def build_figures(outcome: Outcome, batch: int = 0, names: tuple[str, ...] = FIGURES) -> dict[str, go.Figure]:
    """The named figures (default: all of ``FIGURES``) of a successful outcome, for one batch."""
    problem, result = outcome.problem, outcome.result
    if problem is None or result is None:
        raise ValueError(f"no figures for a rejected call: {outcome.error}")
    b = min(batch, problem.batch - 1)
    makers: dict[str, Callable[[], go.Figure]] = {
        "visibility": lambda: figures.visibility_figure(problem, result, b),
        "probabilities": lambda: figures.probabilities_figure(problem, b),
        "output": lambda: figures.output_figure(problem, result, b),
        "lse": lambda: figures.lse_figure(problem, result, b),
        "paged KV": lambda: figures.paged_figure(problem, b) if problem.paged else _note_figure(
            "KV is not paged: tick 'paged KV' to see how block_table maps tokens to cache blocks"),
        "layout": lambda: figures.layout_figure(problem.layout.name),
        "difference": lambda: _note_figure("backend is the reference: choose another backend to compare") if
        outcome.reference_out is None else figures.difference_figure(
            result.attention_out, outcome.reference_out, outcome.tolerance, (outcome.backend, "reference")),
    }
    return {name: makers[name]() for name in names}


def _note_figure(text: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=dict(text=text, font=dict(size=13)), height=200, xaxis_visible=False,
                      yaxis_visible=False)
    return fig


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}"


def _value_code(name: str, value: Any, tensors: dict[str, str], torchair: bool) -> str:
    """One keyword's value as code; a tensor becomes its keyword's name and is listed in ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[name] = _describe(value)
        return name
    if torchair and name in LENGTH_PARAMETERS and value is not None:
        return f"torch.tensor({list(value)!r}, dtype=torch.int64, device=query.device)"
    return repr(list(value) if isinstance(value, tuple) else value)


def call_code(call: FIACall, form: str, torchair: bool = False) -> str:
    """The call as copyable Python: torch_npu (or TorchAir ``tng.ops``) v1/v2, tensors as names with shapes.

    Raises:
        FIAArgumentError: when the call uses a keyword the form lacks (e.g. learnable_sink in v1, spec 1.6).
    """
    tensors = {name: _describe(getattr(call, name)) for name in ("query", "key", "value")}
    args = [f"{name}={_value_code(name, value, tensors, torchair)}" for name, value in call.keywords(form).items()]
    header = "\n".join(f"# {name}: {desc}" for name, desc in tensors.items())
    op = OP_NAMES[version_of(form)]
    module = "tng.ops" if torchair else "torch_npu"
    inner = ",\n    ".join(["query, key, value", *args])
    return f"{header}\nattention_out, softmax_lse = {module}.{op}(\n    {inner},\n)"


def call_codes(call: FIACall) -> dict[str, str]:
    """call_code in torch_npu v1, v2 and TorchAir v1 forms; a form that cannot express the call says why."""
    codes = {}
    for label, form, graph in (("torch_npu v1", "v1", False), ("torch_npu v2", "v2", False),
                               ("TorchAir (tng.ops) v1", "v1", True), ("TorchAir (tng.ops) v2", "v2", True)):
        try:
            codes[label] = call_code(call, form, graph)
        except FIAArgumentError as err:
            codes[label] = f"# not expressible in this form: {err}"
    return codes


# ------------------------------------------------------------------------------------------------ widget layer

def _removed_paths(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the properties ``old`` has and ``new`` lacks (nested dicts compared key by key)."""
    paths = []
    for key, value in old.items():
        if key not in new:
            paths.append(prefix + key)
        elif isinstance(value, Mapping) and isinstance(new[key], Mapping):
            paths.extend(_removed_paths(value, new[key], f"{prefix}{key}."))
    return paths


def _replace_figure(target: go.FigureWidget, new: go.Figure) -> None:
    """Make ``target`` show exactly ``new``: its traces and layout, nothing left over from the previous figure.

    A FigureWidget sends the browser only the properties it is given, so a property the old figure had and the new
    one lacks (shapes, annotations, a height, a trace's text) would stay on screen; those are reset explicitly
    (``None`` removes a property on both sides). Same trace types: traces are updated in place (one batched message).
    """
    layout = new.layout.to_plotly_json()
    layout.pop("template", None)  # the widget keeps its own template
    current = target.layout.to_plotly_json()
    current.pop("template", None)
    same_types = [t.type for t in target.data] == [t.type for t in new.data]
    with target.batch_update():
        if same_types:
            for old, trace in zip(target.data, new.data, strict=True):
                wanted = trace.to_plotly_json()
                for path in _removed_paths(old.to_plotly_json(), wanted):
                    old[path] = None
                old.update(wanted, overwrite=True)
        for path in _removed_paths(current, layout):
            target.layout[path] = None
    if not same_types:
        target.data = ()
        target.add_traces(list(new.data))
    with target.batch_update():
        target.update_layout(layout, overwrite=True)


class Explorer:
    """The explorer panel: controls, an error line, the call as code, and the figures, redrawn on every change.

    Attributes:
        controls: name -> the ipywidgets control (setting ``.value`` re-runs the call, as a user's edit does).
        figures: name -> go.FigureWidget (``FIGURES``), updated in place: the visibility map on every change, the
            tabs below it (``TABS``) when shown (a hidden tab is redrawn when it is selected).
        tabs: the ipywidgets.Tab holding the ``TABS`` figures.
        error: an HTML widget, empty while the call is valid, else the FIAArgumentError message.
        code: an HTML widget with the call in torch_npu v1, v2 and TorchAir form.
        outcome: the last Outcome; ``good`` the last successful one (whose figures are shown).
        widget: the whole panel (display it, or display the Explorer itself).
    """

    def __init__(self, case: Case | None = None, backend: str = "reference") -> None:
        self.case = case if case is not None else Case()
        self.backend = backend
        self._custom_mask = self.case.mask  # a tensor the case brought, offered as a mask choice
        self.controls = self._make_controls(self.case, backend)
        self.error = widgets.HTML()
        self.code = widgets.HTML()
        self.figures = {name: go.FigureWidget() for name in FIGURES}
        self.outcome: Outcome | None = None
        self.good: Outcome | None = None
        self._stale: set[str] = set()
        self.tabs = widgets.Tab(children=[self.figures[name] for name in TABS], titles=TABS)
        self.tabs.observe(self._on_tab, names="selected_index")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.widget = self._layout()
        self.refresh()

    # -- controls -----------------------------------------------------------------------------------------

    @staticmethod
    def _make_controls(case: Case, backend: str) -> dict[str, widgets.Widget]:
        style = {"description_width": "95px"}
        custom = isinstance(case.mask, torch.Tensor)
        text = {"style": style, "continuous_update": False}
        return {
            "layout": widgets.Dropdown(options=list(INPUT_LAYOUTS), value=case.layout, description="layout",
                                       style=style),
            "sparse_mode": widgets.Dropdown(options=[(f"{m}: {n}", m) for m, n in SPARSE_MODES.items()],
                                            value=case.sparse_mode, description="sparse_mode", style=style),
            "pre_tokens": widgets.IntText(value=case.pre_tokens, description="pre_tokens", **text),
            "next_tokens": widgets.IntText(value=case.next_tokens, description="next_tokens", **text),
            "q_lens": widgets.Text(value=", ".join(map(str, case.q_lens)), description="query lengths", **text),
            "kv_lens": widgets.Text(value=", ".join(map(str, case.kv_lens)), description="KV lengths", **text),
            "heads": widgets.IntText(value=case.heads, description="query heads", **text),
            "kv_heads": widgets.IntText(value=case.kv_heads, description="KV heads", **text),
            "head_dim": widgets.Dropdown(options=sorted({16, 32, 64, 128, 192, 256, 512, case.head_dim}),
                                         value=case.head_dim,
                                         description="head dim", style=style),
            "dtype": widgets.Dropdown(options=list(DTYPES), value=_dtype_name(case.dtype), description="dtype",
                                      style=style),
            "mask": widgets.Dropdown(options=list(MASK_KINDS) + ([CUSTOM_MASK] if custom else []),
                                     value=CUSTOM_MASK if custom else case.mask, description="atten_mask",
                                     style=style),
            "paged": widgets.Checkbox(value=case.paged, description="paged KV"),
            "cache_rank": widgets.Dropdown(options=[("3: BnBsH", 3), ("4: BnNBsD", 4), ("5: NZ", 5)],
                                           value=case.cache_rank, description="cache layout", style=style),
            "block_size": widgets.IntText(value=case.block_size, description="block size", **text),
            "prefix_len": widgets.IntText(value=case.prefix_len, description="prefix length", **text),
            "sinks": widgets.Checkbox(value=case.sinks, description="learnable sinks"),
            "inner_precise": widgets.Dropdown(options=[0, 1, 2, 3], value=case.inner_precise,
                                              description="inner_precise", style=style),
            "backend": widgets.Dropdown(options=usable_backends(), value=backend, description="backend", style=style),
            "batch_shown": widgets.BoundedIntText(value=0, min=0, max=4095, description="batch shown", **text),
        }

    def _case_from_controls(self) -> Case:
        """The case the controls describe; raises FIAArgumentError for a malformed length list."""
        c = {name: control.value for name, control in self.controls.items()}
        return self.case.replace(
            layout=c["layout"], sparse_mode=c["sparse_mode"], pre_tokens=c["pre_tokens"],
            next_tokens=c["next_tokens"], q_lens=parse_lengths(c["q_lens"], "query lengths"),
            kv_lens=parse_lengths(c["kv_lens"], "KV lengths"), heads=c["heads"], kv_heads=c["kv_heads"],
            head_dim=c["head_dim"], dtype=DTYPES[c["dtype"]],
            mask=self._custom_mask if c["mask"] == CUSTOM_MASK else c["mask"], paged=c["paged"],
            cache_rank=c["cache_rank"], block_size=c["block_size"],
            prefix_len=c["prefix_len"], sinks=c["sinks"], inner_precise=c["inner_precise"],
        )

    def _on_change(self, change: Mapping[str, Any]) -> None:
        self.refresh()

    def _on_tab(self, change: Mapping[str, Any]) -> None:
        self._redraw(self._shown())

    def _shown(self) -> tuple[str, ...]:
        """The figures on screen: the visibility map and the selected tab."""
        selected = self.tabs.selected_index
        return ("visibility",) + ((TABS[selected],) if selected is not None else ())

    # -- refresh ------------------------------------------------------------------------------------------

    def refresh(self) -> Outcome:
        """Re-run the call the controls describe and redraw; on a rejected call, show why and keep the figures."""
        try:
            case = self._case_from_controls()
        except (FIAArgumentError, ValueError, TypeError) as err:
            return self._reject(Outcome(self.case, self.backend, error=str(err)))
        self.case = case
        self.backend = self.controls["backend"].value
        try:
            outcome = compute(case, self.backend)
        except Exception as err:  # noqa: BLE001  (a backend failing, e.g. a compile error: shown, not raised)
            outcome = Outcome(case, self.backend, error=f"backend {self.backend!r} failed: {type(err).__name__}: {err}")
        if not outcome.ok:
            return self._reject(outcome)
        self.outcome = self.good = outcome
        self.error.value = ""
        self._stale = set(FIGURES)
        self._redraw(self._shown())
        self.code.value = _code_html(call_codes(outcome.call))
        return outcome

    def redraw_all(self) -> None:
        """Redraw every figure now, hidden tabs included (e.g. before exporting them)."""
        self._redraw(FIGURES)

    def _redraw(self, names: tuple[str, ...]) -> None:
        todo = tuple(name for name in names if name in self._stale)
        if self.good is None or not todo:
            return
        for name, fig in build_figures(self.good, self.controls["batch_shown"].value, todo).items():
            _replace_figure(self.figures[name], fig)
            self._stale.discard(name)

    def _reject(self, outcome: Outcome) -> Outcome:
        self.outcome = outcome
        kept = " (the figures show the last valid call)" if self.good is not None else ""
        self.error.value = (f"<div style='color:#b00020;font-family:monospace;white-space:pre-wrap'>"
                            f"rejected: {html.escape(outcome.error or '')}{kept}</div>")
        return outcome

    # -- display ------------------------------------------------------------------------------------------

    def _layout(self) -> widgets.Widget:
        for control in self.controls.values():
            control.layout.width = CONTROL_WIDTH  # four columns fit a notebook; narrower panels wrap them
        boxes = [widgets.VBox(list(self.controls.values())[k:k + 6]) for k in range(0, len(self.controls), 6)]
        return widgets.VBox([widgets.HBox(boxes, layout=widgets.Layout(flex_flow="row wrap")), self.error, self.figures["visibility"], self.tabs, self.code])

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, plus a static HTML picture of the current view for viewers without a kernel.

        JupyterLab shows the widget when the output is trusted (the cell ran here) and the HTML otherwise (a
        notebook opened from disk, before its cells run); nbconvert and GitHub show the HTML too.
        """
        for fig in self.figures.values():
            fig._repr_mimebundle_()  # a FigureWidget sends its current figure to views created after this call
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = static_preview(self.good)
        bundle["text/plain"] = "fia_kit explorer: run this cell in JupyterLab to get its controls"
        return bundle


def static_preview(outcome: Outcome | None) -> str:
    """HTML without scripts: the case's settings and its visibility map for batch 0, as coloured table cells."""
    title = ("<b>fia_kit explorer</b>: a static picture of its first view. Run the cell (with a kernel) to get "
             "the controls: layout, sparse_mode, pre/next tokens, lengths, heads, dtype, mask, paged KV, prefix, "
             "sinks, backend.")
    if outcome is None or outcome.problem is None:
        return f"<div>{title}</div>"
    case = outcome.case
    settings = (f"layout {case.layout}, sparse_mode {case.sparse_mode}, L_q {list(case.q_lens)}, "
                f"L_kv {list(case.kv_lens)}, {case.heads} query / {case.kv_heads} KV heads, head dim "
                f"{case.head_dim}, {_dtype_name(case.dtype)}")
    codes, rs, cs = figures.pool(figures.visibility_codes(outcome.problem, 0), "max", PREVIEW_CELLS)
    cell = (f"width:{PREVIEW_CELL_PX}px;height:{PREVIEW_CELL_PX}px;padding:0;border:1px solid white;"
            "background-color:")
    rows = "".join("<tr>" + "".join(f"<td style='{cell}{figures.CATEGORY_COLORS[int(c)]}'></td>" for c in row)
                   + "</tr>" for row in codes.tolist())
    legend = " ".join(f"<span style='background-color:{figures.CATEGORY_COLORS[k]}'>&nbsp;&nbsp;&nbsp;</span> "
                      f"{html.escape(name)}" for k, name in figures.CATEGORY_NAMES.items())
    pooled = f" (each cell: {rs}x{cs} pooled)" if rs > 1 or cs > 1 else ""
    return (f"<div>{title}<br>{html.escape(settings)}<br>Batch 0: query rows down, keys across{pooled}"
            f"<table style='border-collapse:collapse;margin:4px 0'>{rows}</table>{legend}</div>")


def _code_html(codes: Mapping[str, str]) -> str:
    blocks = [f"<b>{html.escape(label)}</b><pre style='user-select:all'>{html.escape(code)}</pre>"
              for label, code in codes.items()]
    return "<details><summary>the call as code</summary>" + "".join(blocks) + "</details>"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def explore(case: Case | None = None, backend: str = "reference") -> Explorer:
    """Open the explorer on ``case`` (default: ``Case()``) with ``backend``; display the returned Explorer."""
    return Explorer(case, backend)
