"""An interactive explorer of one FIA call: change a control, see at once which keys each query sees and what comes out.

    import fia_kit
    fia_kit.explore()                       # the default case, reference backend
    fia_kit.explore(case.replace(sparse_mode=3))

Three layers, the outer two thin:

* ``prepare(case, backend) -> Outcome``: build the call from the ``Case`` and validate it (a rejected call gives an
  Outcome holding the FIAArgumentError message; nothing raises); ``run_call(outcome)`` adds the full call's results
  (the backend's output and LSE, and what the difference tab compares them with); ``compute`` does both.
* ``build_figures(outcome, batch) -> dict[str, go.Figure]`` and ``call_code(call)``: pure, from ``fia_kit.figures``.
* ``Explorer``: ipywidgets controls whose observers rebuild the case, validate it and redraw what is on screen.

What a redraw computes is what is shown. The visibility map and its row-status strip need no attention (the plan's
visibility rule, pooled block by block); the probabilities tab computes only the shown heads of the shown batch,
pooled as they go. The full call runs only for the tabs that show it (output, LSE, difference), at once when it
has at most ``FULL_CALL_AT_ONCE`` in-band scores, else when the user presses "run the full call" (a progress bar
follows its row tiles). Random Q/K/V are drawn again only when their shapes change (``case.reusing_tensors``).
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from . import figures
from .backends import TOLERANCES
from .backends import run as run_backend
from .call import FIACall
from .case import MASK_KINDS, Case, reusing_tensors
from .errors import FIAArgumentError
from .kernel import ReferenceResult, run_plan
from .layouts import INPUT_LAYOUTS
from .masks import INT_MAX, SPARSE_MODES, TREE_MODE
from .planning import Plan, plan
from .roofline import batch_score_pairs
from .signatures import LENGTH_PARAMETERS, OP_NAMES, version_of

FIGURES = ("visibility", "probabilities", "output", "lse", "difference", "paged KV", "layout")
TABS = FIGURES[1:]  # shown in tabs under the visibility map; only the selected tab is redrawn at once
NEEDS_CALL = ("output", "lse", "difference")  # tabs that show the full call's results
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
CUSTOM_MASK = "the case's own tensor"
SPARSE_CHOICES = [(f"{m}: {n}", m) for m, n in SPARSE_MODES.items()] + [(f"{TREE_MODE}: tree (v2, MLA)", TREE_MODE)]
PSE_CHOICES = [("off", "off"), ("random N(0,1)", "random"), ("ALiBi slopes", "alibi")]
QUANT_CHOICES = [("off: float K/V", "none"), ("int8 per tensor", "tensor"), ("int8 per channel", "channel"),
                 ("int8 per token", "token"), ("int8 per head", "head"), ("int8 per token+head", "token_head")]
_LENGTHS = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")

REDRAW_THREADS = 1  # torch threads while a change redraws (many small ops: on a shared 2-core CPU one thread is 3-5x
# faster than two, whose OpenMP barriers stall); the full call on request keeps the session's threads
FULL_CALL_AT_ONCE = 2**22  # in-band scores (heads x rows x keys in the band) up to which the full call runs at once
LARGEST_PSE = 2**26  # pse_shift elements (B x N_q x S_q x S_kv) the explorer builds (128 MB in float16)
CONTROL_WIDTH = "260px"  # fits "3: rightDownCausal" after a 95 px label; three columns fit beside Lab's side bar
CONTROL_COLUMNS = (  # masking and lengths; heads, dtype and what the scores hold; memory, extras and what is shown
    ("layout", "sparse_mode", "pre_tokens", "next_tokens", "mask", "q_lens", "kv_lens", "batch_shown"),
    ("heads", "kv_heads", "head_dim", "dtype", "rope_dim", "pse", "kv_quant", "inner_precise"),
    ("paged", "cache_rank", "block_size", "prefix_len", "sinks", "backend"),
)
PREVIEW_CELLS = 48  # the static preview's map is pooled to at most this many rows and columns
PREVIEW_CELL_PX = 8


# ------------------------------------------------------------------------------------------------ pure layer

@dataclass(frozen=True)
class Outcome:
    """One case in the explorer: the case, and either the validated plan (and, once run, the call's results) or the
    error.

    Attributes:
        result: None until the full call ran (``run_call``); then the backend's attention_out and softmax_lse with
            the reference's row status (the reference's own result when the backend is "reference" or declined).
        reference_out: what the difference tab compares ``result.attention_out`` with: the reference's output
            when another backend ran, the same call with float K/V when the case quantises K/V, else None.
        compared: the labels of those two outputs, e.g. ("flex", "reference").
        tolerance: the absolute tolerance of the difference figure (``fia_kit.backends.TOLERANCES``).
        declined: why the chosen backend did not compute the call (e.g. flex's FlexUnsupported), or None.
    """

    case: Case
    backend: str
    call: FIACall | None = None
    problem: Plan | None = None
    result: ReferenceResult | None = None
    error: str | None = None
    reference_out: torch.Tensor | None = None
    compared: tuple[str, str] = ("", "")
    tolerance: float | None = None
    declined: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ran(self) -> bool:
        """Whether the full call ran (the output, LSE and difference tabs can be drawn)."""
        return self.result is not None


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


def prepare(case: Case, backend: str = "reference") -> Outcome:
    """Build and validate ``case`` (no attention computed); a rejected case gives an Outcome with ``error`` set."""
    try:
        problem = plan(case)  # the case's natural form: v2 for sinks and the tree mask (v2-only), else its own / v1
    except FIAArgumentError as err:
        return Outcome(case, backend, error=str(err))
    return Outcome(case, backend, problem.call, problem)


def in_band_scores(problem: Plan) -> int:
    """Scores the full call computes: N_q x the (row, key) pairs inside each batch's band (what the tile loop
    multiplies, ``roofline.batch_score_pairs``; the user mask hides scores, it does not skip them)."""
    return problem.num_heads * sum(batch_score_pairs(problem))


def run_call(outcome: Outcome, progress: Callable[[int, int], None] | None = None) -> Outcome:
    """``outcome`` with the full call's results: the reference's, the backend's, and the difference tab's pair.

    Another backend than the reference also runs the reference, whose row status the figures read and whose output
    the difference tab compares with; a backend that declines the call (``NotImplementedError``, e.g. flex's
    FlexUnsupported for quantised K/V) or fails leaves the reference's result and says why in ``declined``. A case
    with int8 K/V (``kv_quant``), when nothing else is compared, is also run with its float K/V: the difference
    tab then shows the quantisation error. ``progress(done, total)`` follows the reference's row tiles.
    """
    if not outcome.ok or outcome.ran:
        return outcome
    problem, backend, case = outcome.problem, outcome.backend, outcome.case
    rows = sum(problem.q_len)
    float_twin = case.kv_quant != "none" and not (case.source is not None and case == case.source.case)
    total = rows * (1 + float_twin) + (rows if backend != "reference" else 0)
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    reference = run_plan(problem, step)
    result, compared, other, declined = reference, ("", ""), None, None
    if backend != "reference":
        try:
            ran = run_backend(problem, backend)
        except NotImplementedError as err:
            declined = f"{backend} does not compute this call: {getattr(err, 'feature', err)}"
        except Exception as err:  # noqa: BLE001  (a backend failing, e.g. a compile error: shown, not raised)
            declined = f"backend {backend!r} failed: {type(err).__name__}: {err}"
        else:
            lse = ran.softmax_lse.cpu() if ran.softmax_lse.numel() else reference.softmax_lse
            result = replace(reference, attention_out=ran.attention_out.cpu(), softmax_lse=lse)
            compared, other = (backend, "reference"), reference.attention_out
        step(rows)
    if other is None and float_twin:
        floats = run_plan(plan(case.replace(kv_quant="none")), step)
        compared, other = (f"int8 K/V per {case.kv_quant.replace('_', '+')}", "float K/V"), floats.attention_out
    atol = TOLERANCES.get(problem.call.query.dtype, (0.0, 0.0))[0] if other is not None else None
    return replace(outcome, result=result, reference_out=other, compared=compared, tolerance=atol, declined=declined)


def compute(case: Case, backend: str = "reference") -> Outcome:
    """``run_call(prepare(case, backend))``: validate and run the full call at once, whatever its size."""
    return run_call(prepare(case, backend))


def build_figures(outcome: Outcome, batch: int = 0, names: tuple[str, ...] = FIGURES) -> dict[str, go.Figure]:
    """The named figures (default: all of ``FIGURES``) of a valid outcome, for one batch.

    The output, LSE and difference figures need the full call: before it ran (``Outcome.ran``) they are a note
    saying so.
    """
    problem, result = outcome.problem, outcome.result
    if problem is None:
        raise ValueError(f"no figures for a rejected call: {outcome.error}")
    b = min(batch, problem.batch - 1)
    makers: dict[str, Callable[[], go.Figure]] = {
        "visibility": lambda: figures.visibility_figure(problem, None, b),
        "probabilities": lambda: figures.probabilities_figure(problem, b),
        "output": lambda: figures.output_figure(problem, result, b),
        "lse": lambda: figures.lse_figure(problem, result, b),
        "paged KV": lambda: figures.paged_figure(problem, b) if problem.paged else _note_figure(
            "KV is not paged: tick 'paged KV' to see how block_table maps tokens to cache blocks"),
        "layout": lambda: figures.layout_figure(problem.layout.name),
        "difference": lambda: _difference(outcome),
    }
    if result is None:
        for name in NEEDS_CALL:
            makers[name] = lambda: _note_figure("the full call has not run yet: press 'run the full call' above")
    return {name: makers[name]() for name in names}


def _difference(outcome: Outcome) -> go.Figure:
    """The difference tab: |result - reference_out|, or a note saying why there is nothing to compare."""
    if outcome.reference_out is None:
        why = outcome.declined or "backend is the reference: choose another backend (or int8 K/V) to compare"
        return _note_figure(why)
    quantised = outcome.compared[1] == "float K/V"
    name = f"the {_dtype_name(outcome.problem.call.query.dtype)} comparison tolerance" if quantised else "tolerance"
    fig = figures.difference_figure(outcome.result.attention_out, outcome.reference_out, outcome.tolerance,
                                    outcome.compared, name)
    if outcome.declined:  # a title line: an annotation would sit on the axis title
        fig.update_layout(title_text=f"{fig.layout.title.text}<br><span style='color:#b00020'>"
                                     f"{html.escape(outcome.declined)}</span>", margin_t=110)
    return fig


def hints(case: Case) -> list[str]:
    """What the op needs for the features the case turns on, as short lines (shown under the controls)."""
    lines = []
    if case.sparse_mode == 4 and min(case.pre_tokens, case.next_tokens) >= INT_MAX:
        lines.append("sparse_mode 4 is a band around the right-down diagonal: set pre_tokens and next_tokens (at "
                     "their default 2147483647 every key is inside it) (spec 6.3)")
    if case.sparse_mode == TREE_MODE:
        lines.append("sparse_mode 9, the tree mask: v2, MLA only (rope 64 with head dim 512), "
                     "L_q <= L_kv; A2/A3 kernels from CANN 9.1 [inferred], not Ascend950 (fia_kit.target); the case "
                     "builds a binary draft tree: token t sees itself, its ancestors (parent (t - 1) // 2) and every "
                     "context key (spec 6.6, 25.1, 25.3)")
    if case.rope_dim:
        lines.append("MLA rope: query/key head dim 512 (decode MLA: 1 KV head; before CANN 9.1 N_q a power of two "
                     "<= 128) or 128 (prefill MLA); no pse, prefix or K/V quantisation (spec 12, 25.1)")
    if case.kv_quant != "none":
        lines.append("int8 K/V (antiquant, separated form): with S_q > 1 only per tensor/channel/token and "
                     "S_q <= 16; the difference tab shows the error against the same call with float K/V "
                     "(flex does not compute quantised calls) (spec 16.3)")
    if case.pse:
        lines.append("pse_shift is added to scale·QKᵀ before the mask and the softmax: see the probabilities tab; "
                     "not with packed layouts, rope or sinks (spec 9)")
    return lines


def route_line(outcome: Outcome) -> str:
    """The host route of a valid outcome's call, in words (``fia_kit.rules.route_note``); "" for a rejected one."""
    if outcome.problem is None:
        return ""
    from .rules.route_note import route_note

    return route_note(outcome.problem).with_rules().removeprefix("route ")


def _note_figure(text: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=dict(text=text, font=dict(size=13)), height=200, xaxis_visible=False,
                      yaxis_visible=False, plot_bgcolor="white")
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
    """The explorer panel: controls, hints, an error line, the figures, the full call on request, the call as code.

    Attributes:
        controls: name -> the ipywidgets control (setting ``.value`` rebuilds the case, as a user's edit does).
        figures: name -> go.FigureWidget (``FIGURES``), updated in place: the visibility map on every change, the
            tabs below it (``TABS``) when shown (a hidden tab is redrawn when it is selected).
        tabs: the ipywidgets.Tab holding the ``TABS`` figures.
        error: an HTML widget, empty while the call is valid, else the FIAArgumentError message.
        hint: an HTML widget with what the op needs for the features turned on (``hints``).
        route: an HTML widget with the kernel's host route of the call shown (``route_line``): which checks it
            meets, the LSE of a row without keys there, the rules of that route alone.
        run_button, progress, call_note: the full call on request: the button, a progress bar fed by the row tiles
            of the reference's loop, and the line saying why the call did not run at once.
        code: an HTML widget with the call in torch_npu v1, v2 and TorchAir form.
        outcome: the last Outcome; ``good`` the last valid one (whose figures are shown).
        widget: the whole panel (display it, or display the Explorer itself).
    """

    def __init__(self, case: Case | None = None, backend: str = "reference") -> None:
        self.case = case if case is not None else Case()
        self.backend = backend
        self._custom_mask = self.case.mask  # a tensor the case brought, offered as a mask choice
        self._tensors: dict[str, Any] = {}  # the last random Q/K/V draw, reused while their shapes stay
        self.controls = self._make_controls(self.case, backend)
        self.error = widgets.HTML()
        self.hint = widgets.HTML()
        self.route = widgets.HTML()
        self.code = widgets.HTML()
        self.run_button = widgets.Button(description="run the full call", icon="play", button_style="primary",
                                         layout=widgets.Layout(width="auto", flex="0 0 auto", display="none"))
        self.progress = widgets.IntProgress(min=0, max=1, value=0, layout=widgets.Layout(width="300px",
                                                                                         display="none"))
        self.call_note = widgets.HTML()
        self.run_button.on_click(lambda _: self.run_full_call())
        self.figures = {name: go.FigureWidget() for name in FIGURES}
        self.outcome: Outcome | None = None
        self.good: Outcome | None = None
        self._stale: set[str] = set()
        self._drawn: dict[str, tuple[Any, ...]] = {}  # figure -> what it shows (case, batch, ...), to skip no-ops
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

        def dropdown(options: list[Any], value: Any, description: str, tooltip: str = "") -> widgets.Dropdown:
            return widgets.Dropdown(options=options, value=value, description=description, style=style,
                                    tooltip=tooltip or None)

        return {
            "layout": dropdown(list(INPUT_LAYOUTS), case.layout, "layout"),
            "sparse_mode": dropdown(SPARSE_CHOICES, case.sparse_mode, "sparse_mode"),
            "pre_tokens": widgets.IntText(value=case.pre_tokens, description="pre_tokens", **text),
            "next_tokens": widgets.IntText(value=case.next_tokens, description="next_tokens", **text),
            "q_lens": widgets.Text(value=", ".join(map(str, case.q_lens)), description="query lengths", **text),
            "kv_lens": widgets.Text(value=", ".join(map(str, case.kv_lens)), description="KV lengths", **text),
            "heads": widgets.IntText(value=case.heads, description="query heads", **text),
            "kv_heads": widgets.IntText(value=case.kv_heads, description="KV heads", **text),
            "head_dim": dropdown(sorted({16, 32, 64, 128, 192, 256, 512, case.head_dim}), case.head_dim, "head dim"),
            "dtype": dropdown(list(DTYPES), _dtype_name(case.dtype), "dtype"),
            "mask": dropdown(list(MASK_KINDS) + ([CUSTOM_MASK] if custom else []),
                             CUSTOM_MASK if custom else case.mask, "atten_mask"),
            "paged": widgets.Checkbox(value=case.paged, description="paged KV"),
            "cache_rank": dropdown([("3: BnBsH", 3), ("4: BnNBsD", 4), ("5: NZ", 5)], case.cache_rank,
                                   "cache layout"),
            "block_size": widgets.IntText(value=case.block_size, description="block size", **text),
            "prefix_len": widgets.IntText(value=case.prefix_len, description="prefix length", **text),
            "sinks": widgets.Checkbox(value=case.sinks, description="learnable sinks"),
            "pse": dropdown(PSE_CHOICES, case.pse_kind if case.pse else "off", "pse_shift",
                            "an additive bias per head, query and key (spec 9)"),
            "kv_quant": dropdown(QUANT_CHOICES, case.kv_quant, "K/V quant", "int8 K/V, antiquant (spec 16.3)"),
            "rope_dim": dropdown([("off", 0), ("64: MLA", 64)], case.rope_dim, "rope",
                                 "MLA query_rope/key_rope (spec 12)"),
            "inner_precise": dropdown([0, 1, 2, 3], case.inner_precise, "inner_precise"),
            "backend": dropdown(usable_backends(), backend, "backend"),
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
            cache_rank=c["cache_rank"], block_size=c["block_size"], prefix_len=c["prefix_len"], sinks=c["sinks"],
            pse=c["pse"] != "off", pse_kind=self.case.pse_kind if c["pse"] == "off" else c["pse"],
            kv_quant=c["kv_quant"], rope_dim=c["rope_dim"], inner_precise=c["inner_precise"],
        )

    def _on_change(self, change: Mapping[str, Any]) -> None:
        self.refresh()

    def _on_tab(self, change: Mapping[str, Any]) -> None:
        with torch_threads(REDRAW_THREADS):
            self._redraw(self._shown())

    def _shown(self) -> tuple[str, ...]:
        """The figures on screen: the visibility map and the selected tab."""
        selected = self.tabs.selected_index
        return ("visibility",) + ((TABS[selected],) if selected is not None else ())

    # -- refresh ------------------------------------------------------------------------------------------

    def refresh(self) -> Outcome:
        """Validate the call the controls describe and redraw what is shown; on a rejected call, show why and keep
        the figures."""
        with torch_threads(REDRAW_THREADS):
            return self._refresh()

    def _refresh(self) -> Outcome:
        try:
            case = self._case_from_controls()
            _check_buildable(case)
        except (FIAArgumentError, ValueError, TypeError) as err:
            return self._reject(Outcome(self.case, self.backend, error=str(err)))
        self.case = case
        self.backend = self.controls["backend"].value
        self.hint.value = "".join(f"<div style='color:#555'><b>hint:</b> {html.escape(line)}</div>"
                                  for line in hints(case))
        if self.good is not None and _same((self.good.case, self.good.backend), (case, self.backend)):
            outcome = self.good  # the same call (e.g. only the batch shown changed): keep its results
        else:
            with reusing_tensors(self._tensors):
                outcome = prepare(case, self.backend)
        if not outcome.ok:
            return self._reject(outcome)
        self.outcome = self.good = outcome
        self.error.value = ""
        self.route.value = f"<div style='color:#1f4e79'><b>host route:</b> {html.escape(route_line(outcome))}</div>"
        self._stale = set(FIGURES)
        self._redraw(self._shown())
        self.code.value = _code_html(call_codes(outcome.call))
        return outcome

    def run_full_call(self) -> Outcome | None:
        """Run the full call of the shown case now (the button), with the progress bar, and redraw its tabs."""
        if self.good is None or self.good.ran:
            return self.good
        self.run_button.layout.display = "none"
        self.progress.layout.display = None
        self.progress.value, self.progress.max = 0, 1
        self.progress.description = "running"
        backend = self.good.backend

        def progress(done: int, total: int) -> None:
            self.progress.max, self.progress.value = max(1, total), done
            then = f", then {backend}" if backend != "reference" and done < total else ""
            self.call_note.value = (f"<span style='color:#555'>the full call: {done} of {total} query rows{then} "
                                    "(with a causal band the later rows see more keys)</span>")

        with reusing_tensors(self._tensors):
            self.good = self.outcome = run_call(self.good, progress)
        self.progress.layout.display = "none"
        self.call_note.value = ""
        self._stale |= set(NEEDS_CALL)
        with torch_threads(REDRAW_THREADS):
            self._redraw(self._shown())
        return self.good

    def redraw_all(self) -> None:
        """Redraw every figure now, hidden tabs included (e.g. before exporting them); runs the full call if it has
        not run."""
        self.run_full_call()
        self._redraw(FIGURES)

    def _redraw(self, names: tuple[str, ...]) -> None:
        if self.good is None:
            return
        if any(name in NEEDS_CALL for name in names) and not self.good.ran:
            scores = in_band_scores(self.good.problem)
            if scores <= FULL_CALL_AT_ONCE:
                self.run_full_call()
                return
            self._offer_full_call(scores)
        else:
            self.run_button.layout.display = "none"
            self.call_note.value = ""
        batch = min(self.controls["batch_shown"].value, self.good.problem.batch - 1)
        shows = {name: self._shows(name, batch) for name in names if name in self._stale}
        for name in [name for name, what in shows.items() if _same(self._drawn.get(name), what)]:
            self._stale.discard(name)  # what it shows has not changed (e.g. another backend, a clamped batch)
            del shows[name]
        if not shows:
            return
        for name, fig in build_figures(self.good, batch, tuple(shows)).items():
            _replace_figure(self.figures[name], fig)
            self._drawn[name] = shows[name]
            if self.good.ran or name not in NEEDS_CALL:
                self._stale.discard(name)

    def _shows(self, name: str, batch: int) -> tuple[Any, ...]:
        """What figure ``name`` shows: the case and batch, and for the full call's tabs the backend and results."""
        if name in NEEDS_CALL:
            return self.good.case, batch, self.good.backend, self.good.result is not None
        return self.good.case, batch

    def _offer_full_call(self, scores: int) -> None:
        problem = self.good.problem
        self.run_button.layout.display = None
        self.call_note.value = (
            f"<span style='color:#555'>The full call computes {scores:.3g} in-band scores ({problem.num_heads} "
            f"query heads, {sum(problem.q_len)} query rows): above {FULL_CALL_AT_ONCE:.3g} it runs when you press "
            "the button, so that a control change stays fast. The map and the probabilities tab need no full "
            "call.</span>")

    def _reject(self, outcome: Outcome) -> Outcome:
        self.outcome = outcome
        kept = " (the figures show the last valid call)" if self.good is not None else ""
        self.error.value = (f"<div style='color:#b00020;font-family:monospace;white-space:pre-wrap'>"
                            f"rejected: {html.escape(outcome.error or '')}{kept}</div>")
        return outcome

    # -- display ------------------------------------------------------------------------------------------

    def _layout(self) -> widgets.Widget:
        for control in self.controls.values():
            control.layout.width = CONTROL_WIDTH  # three columns fit a notebook; narrower panels wrap them
        boxes = [widgets.VBox([self.controls[name] for name in column]) for column in CONTROL_COLUMNS]
        full_call = widgets.HBox([self.run_button, self.progress, self.call_note],
                                 layout=widgets.Layout(align_items="center"))
        return widgets.VBox([widgets.HBox(boxes, layout=widgets.Layout(flex_flow="row wrap")), self.hint, self.route,
                             self.error, self.figures["visibility"], full_call, self.tabs, self.code])

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


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch threads (None: as they are), then restore the previous number."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same(a: tuple[Any, ...] | None, b: tuple[Any, ...]) -> bool:
    """Whether two ``Explorer._shows`` keys are equal (a case holding a mask tensor compares by identity, else
    tensor equality would be ambiguous)."""
    try:
        return a is not None and a == b
    except RuntimeError:
        return False


def _check_buildable(case: Case) -> None:
    """Refuse a case whose pse_shift the explorer would not build (``LARGEST_PSE``): an explorer limit, not the op's."""
    if case.pse:
        size = case.batch * case.heads * case.s_q * case.kv_columns
        if size > LARGEST_PSE:
            raise FIAArgumentError("pse_shift", f"the explorer builds pse_shift (B x N_q x S_q x S_kv) up to "
                                   f"{LARGEST_PSE:.3g} elements; this one would hold {size:.3g}: shorten the "
                                   "lengths or use fewer heads (the op itself takes it)", "on")


def static_preview(outcome: Outcome | None) -> str:
    """HTML without scripts: the case's settings and its visibility map for batch 0, as coloured table cells."""
    title = ("<b>fia_kit explorer</b>: a static picture of its first view. Run the cell (with a kernel) to get "
             "the controls: layout, sparse_mode, pre/next tokens, lengths, heads, dtype, mask, paged KV, prefix, "
             "sinks, pse, K/V quantisation, MLA rope, backend.")
    if outcome is None or outcome.problem is None:
        return f"<div>{title}</div>"
    case = outcome.case
    settings = (f"layout {case.layout}, sparse_mode {case.sparse_mode}, L_q {list(case.q_lens)}, "
                f"L_kv {list(case.kv_lens)}, {case.heads} query / {case.kv_heads} KV heads, head dim "
                f"{case.head_dim}, {_dtype_name(case.dtype)}; host route {outcome.problem.route}")
    codes, rs, cs = figures.pooled_visibility_codes(outcome.problem, 0, PREVIEW_CELLS)
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
