"""Plotly figures of one FIA call: pure functions, data in, ``go.Figure`` out (no widgets, no global state).

Every figure reads what the library computed: visibility from the plan's ``fia_kit.visibility.Visibility``,
probabilities from ``fia_kit.kernel.pooled_probabilities``, outputs, LSE and row status from the
``ReferenceResult``, memory order from ``fia_kit.layouts``. No masking or layout rule is re-derived here.

Maps larger than ``MAX_CELLS`` x ``MAX_CELLS`` are pooled into blocks (the title says how), so a figure never carries
millions of cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import torch

from . import kernel
from .diagrams import block_table_figure
from .kernel import ReferenceResult, RowStatus
from .layouts import INPUT_LAYOUTS, from_canonical, to_canonical
from .masks import TREE_MODE
from .planning import Plan

MAX_CELLS = 256
MAX_HEAD_PANELS = 4
VISIBILITY_TILE_CELLS = 2**21  # bool cells of one row tile of the pooled visibility map with atten_mask (2 MB)
SAMPLE_ROWS_ABOVE = 2**24  # score cells (heads x L_q x keys) above which probabilities sample rows
SATURATE_ABOVE = 4096  # probability cells above which the colour saturates at their 99th percentile (else the max)
PROBABILITY_CELLS = 128  # rows and key blocks per probability panel: four panels share a figure's width, and a
# FigureWidget sends a 2-D z as nested lists (ipywidgets walks every cell: ~1 ms per 1000 cells on this CPU)

# Visibility categories, ordered so that max-pooling keeps the most visible state of a block.
PADDING, OUTSIDE_BAND, MASKED, VISIBLE = 0, 1, 2, 3
CATEGORY_NAMES = {PADDING: "padding (beyond L)", OUTSIDE_BAND: "outside the band", MASKED: "hidden by atten_mask",
                  VISIBLE: "visible"}
CATEGORY_COLORS = {PADDING: "#e8e8e8", OUTSIDE_BAND: "#b0b7c3", MASKED: "#e07a5f", VISIBLE: "#2a9d8f"}
STATUS_NAMES = {RowStatus.PADDING: "padding row: 0", RowStatus.COMPUTED: "computed",
                RowStatus.OUT_OF_BAND: "no key in band: 0", RowStatus.FULLY_MASKED: "fully masked"}
STATUS_COLORS = {RowStatus.PADDING: "#e8e8e8", RowStatus.COMPUTED: "#2a9d8f", RowStatus.OUT_OF_BAND: "#264653",
                 RowStatus.FULLY_MASKED: "#e07a5f"}


# ---------------------------------------------------------------------------------------------------- pooling

def pool(values: torch.Tensor, how: str = "max", max_cells: int = MAX_CELLS) -> tuple[torch.Tensor, int, int]:
    """Pool a (rows, cols) map into at most ``max_cells`` per axis.

    Args:
        values: (rows, cols) float or int tensor; NaN cells are ignored by "max" and "mean".
        how: "max" (largest value of each block), "absmax" (largest magnitude, sign kept) or "mean".
    Returns:
        (pooled (ceil(rows / rs), ceil(cols / cs)) float64 tensor, rs, cs): block heights and widths, 1 if unpooled.
    """
    rows, cols = values.shape
    rs, cs = max(1, math.ceil(rows / max_cells)), max(1, math.ceil(cols / max_cells))
    v = values.to(torch.float64)
    if rs == 1 and cs == 1:
        return v, 1, 1
    pr, pc = -rows % rs, -cols % cs
    v = torch.nn.functional.pad(v, (0, pc, 0, pr), value=float("nan"))
    blocks = v.view(v.shape[0] // rs, rs, v.shape[1] // cs, cs).permute(0, 2, 1, 3).reshape(
        v.shape[0] // rs, v.shape[1] // cs, rs * cs)
    if how == "mean":
        return blocks.nanmean(-1), rs, cs
    if how == "absmax":
        idx = blocks.nan_to_num(0.0).abs().argmax(-1, keepdim=True)
        return blocks.gather(-1, idx).squeeze(-1), rs, cs
    return blocks.nan_to_num(float("-inf")).amax(-1).masked_fill_(blocks.isnan().all(-1), float("nan")), rs, cs


def _pool_note(rs: int, cs: int, how: str) -> str:
    if rs == 1 and cs == 1:
        return ""
    word = {"max": "max", "absmax": "largest |value|", "mean": "mean"}[how]
    return f"<br>[downsampled: each cell = {word} of a {rs}x{cs} block]"  # its own title line: titles do not wrap


def _axis(count: int, step: int) -> np.ndarray:
    """The centre of each pooled block along an axis of ``count`` entries (the index itself when unpooled).

    A numpy array: plotly takes it as is, where a list is validated element by element (tens of ms a redraw).
    """
    starts = np.arange(0, count, step, dtype=np.float64)
    return starts + (np.minimum(count, starts + step) - 1 - starts) / 2


def _discrete_scale(colors: Mapping[int, str]) -> list[list[Any]]:
    """A stepped colorscale for integer codes 0..len(colors)-1."""
    n = len(colors)
    scale = []
    for code, color in sorted(colors.items()):
        scale += [[code / n, color], [(code + 1) / n, color]]
    return scale


# ---------------------------------------------------------------------------------------------------- geometry

def _batch_rows(problem: Plan, b: int) -> tuple[int, int]:
    """(first canonical query row, number of rows shown) of batch b: all S_q rows, or its packed slice."""
    plan = problem.batches[b]
    if problem.layout.packed:
        return plan.q_start, plan.q_len
    return 0, problem.query.shape[2]


def row_status_of_batch(problem: Plan, result: ReferenceResult | None, b: int) -> torch.Tensor:
    """(rows,) int RowStatus of the rows ``visibility_codes`` shows for batch b.

    From the call's result when given, else from the plan alone (``kernel.batch_row_status``: no attention), the
    rows past L_q being PADDING.
    """
    first, count = _batch_rows(problem, b)
    if result is not None:
        return result.row_status[problem.batches[b].q_index, first:first + count].to(torch.int64)
    status = torch.full((count,), int(RowStatus.PADDING), dtype=torch.int64)
    status[:problem.batches[b].q_len] = kernel.batch_row_status(problem, b).cpu()
    return status


def _visibility_columns(problem: Plan, b: int) -> int:
    """Columns of batch b's map: P + key axis, or P + L_kv for a packed batch (its slice has no padding)."""
    return problem.visibility.num_keys(b) if problem.layout.packed else problem.key_columns


def _visibility_tile(problem: Plan, b: int, r0: int, r1: int, columns: int) -> torch.Tensor:
    """(r1 - r0, columns) int8 codes of batch b's rows [r0, r1); rows >= L_q and keys >= P + L_kv are PADDING."""
    vis = problem.visibility
    codes = torch.full((r1 - r0, columns), PADDING, dtype=torch.int8)
    stop, num_keys = min(r1, vis.num_rows(b)), vis.num_keys(b)
    if stop > r0 and num_keys:
        block = codes[:stop - r0, :num_keys]
        block.fill_(OUTSIDE_BAND)
        block.masked_fill_(vis.in_band_rows(b, r0, stop).cpu(), MASKED)
        block.masked_fill_(vis.dense_rows(b, r0, stop).cpu(), VISIBLE)
    return codes


def visibility_codes(problem: Plan, b: int) -> torch.Tensor:
    """(rows, P + key axis) int8 of batch b: VISIBLE, MASKED (by atten_mask), OUTSIDE_BAND or PADDING per cell.

    Rows are the batch's query rows (all S_q rows for non-packed layouts: rows >= L_q are padding); columns are the
    prefix keys then the key axis (columns >= P + L_kv are padding). The full map: for large calls use
    ``pooled_visibility_codes``, which never holds it.
    """
    return _visibility_tile(problem, b, 0, _batch_rows(problem, b)[1], _visibility_columns(problem, b))


def pooled_visibility_codes(problem: Plan, b: int, max_cells: int = MAX_CELLS) -> tuple[torch.Tensor, int, int]:
    """``pool(visibility_codes(problem, b), "max", max_cells)``, without building the map.

    A block's maximum is its most visible state, so each block needs only three facts: whether it holds a real cell
    (row < L_q, key < P + L_kv: at least OUTSIDE_BAND), a key inside the band (``Band.key_range`` of the block's
    rows: every column of that range is in the band for some row of the block, since the rows' bands overlap), and
    without atten_mask that already makes it VISIBLE. With atten_mask (or the tree mask) the in-band blocks are
    MASKED unless some cell is visible, found row tile by row tile over the band's key range only, in bool tiles of
    about ``VISIBILITY_TILE_CELLS`` cells (tens of MB at 8192 x 8192) reduced as they go.

    Returns:
        (pooled (ceil(rows / rs), ceil(cols / cs)) float64 codes, rs, cs), as ``pool``.
    """
    rows, columns = _batch_rows(problem, b)[1], _visibility_columns(problem, b)
    if not rows or not columns:
        return pool(visibility_codes(problem, b), "max", max_cells)
    rs, cs = max(1, math.ceil(rows / max_cells)), max(1, math.ceil(columns / max_cells))
    vis, band = problem.visibility, problem.batches[b].band
    q_len, num_keys = vis.num_rows(b), vis.num_keys(b)
    codes = torch.full((-(-rows // rs), -(-columns // cs)), PADDING, dtype=torch.int8)
    real_rows, real_cols = -(-q_len // rs), -(-num_keys // cs)
    codes[:real_rows, :real_cols] = OUTSIDE_BAND
    masked = problem.atten_mask is not None
    for block in range(real_rows):
        c0, c1 = band.key_range(block * rs, min(q_len, (block + 1) * rs), num_keys)
        if c1 > c0:
            codes[block, c0 // cs:-(-c1 // cs)] = MASKED if masked else VISIBLE
    if masked:
        step = max(1, VISIBILITY_TILE_CELLS // (rs * max(1, num_keys))) * rs
        for r0 in range(0, q_len, step):
            _mark_visible_blocks(problem, b, r0, min(q_len, r0 + step), rs, cs, codes)
    return codes.to(torch.float64), rs, cs


def _mark_visible_blocks(problem: Plan, b: int, r0: int, r1: int, rs: int, cs: int, codes: torch.Tensor) -> None:
    """Set VISIBLE in ``codes`` for the blocks of rows [r0, r1) (r0 a multiple of rs) holding a visible cell."""
    vis, band = problem.visibility, problem.batches[b].band
    c0, c1 = band.key_range(r0, r1, vis.num_keys(b))
    if c1 <= c0:
        return
    a0, a1 = c0 - c0 % cs, c1
    hidden = vis.hidden_tile(b, r0, r1, a0, a1).cpu()  # not seen: hidden by the mask, or outside the band
    outside = band.outside_tile(r0, r1, a0, a1)
    if outside is not None:
        hidden = hidden | outside
    if (a1 - a0) % cs or (r1 - r0) % rs:
        hidden = torch.nn.functional.pad(hidden, (0, -(a1 - a0) % cs, 0, -(r1 - r0) % rs), value=True)
    shape = (hidden.shape[0] // rs, rs, hidden.shape[1] // cs, cs)
    blocks = hidden.view(torch.uint8).reshape(shape).amin(3).amin(1) == 0  # uint8 min: the fast block reduction
    target = codes[r0 // rs:r0 // rs + blocks.shape[0], a0 // cs:a0 // cs + blocks.shape[1]]
    target.masked_fill_(blocks, VISIBLE)


# ---------------------------------------------------------------------------------------------------- figures

def visibility_figure(problem: Plan, result: ReferenceResult | None = None, b: int = 0) -> go.Figure:
    """Which keys each query row of batch b sees, with the band edges, the right-down diagonal and the row status.

    Left panel: one cell per (query row i, key j), coloured visible / hidden by atten_mask / outside the band /
    padding. Lines: the band edges j - i = lo and j - i = hi, the right-down diagonal j = i + delta with
    delta = P + L_kv - L_q, and the end of the shared prefix. Right strip: what the op writes for each row
    (``RowStatus``: computed, or 0 for padding and out-of-band rows, fully masked rows per inner_precise), read
    from ``result`` when given, else from the plan (no attention computed).
    """
    plan = problem.batches[b]
    rows, columns = _batch_rows(problem, b)[1], _visibility_columns(problem, b)
    status = row_status_of_batch(problem, result, b)
    z, rs, cs = pooled_visibility_codes(problem, b)
    zs, _, _ = pool(status.view(-1, 1), "max")
    rows_axis, cols_axis = _axis(rows, rs), _axis(columns, cs)
    traces = [
        go.Heatmap(z=z.numpy(), x=cols_axis, y=rows_axis, zmin=-0.5, zmax=3.5,
                   colorscale=_discrete_scale(CATEGORY_COLORS), name="visibility",
                   hovertemplate="query row %{y}<br>key %{x}<br>state %{z} (see colour bar)<extra></extra>",
                   colorbar=dict(title="key state", tickvals=list(CATEGORY_NAMES),
                                 ticktext=list(CATEGORY_NAMES.values()), x=1.02, len=0.45, y=0.78)),
        go.Heatmap(z=zs.numpy(), x=["row"], y=rows_axis, zmin=-0.5, zmax=3.5, xaxis="x2",
                   colorscale=_discrete_scale(STATUS_COLORS), name="row status",
                   text=[[STATUS_NAMES[RowStatus(int(c))]] for c in zs.view(-1).tolist()],
                   hovertemplate="query row %{y}<br>%{text}<extra></extra>",
                   colorbar=dict(title="row output", tickvals=[int(s) for s in STATUS_NAMES],
                                 ticktext=list(STATUS_NAMES.values()), x=1.02, len=0.42, y=0.22)),
        *_band_lines(problem, plan, columns),
    ]
    delta = problem.prefix_len + plan.kv_len - plan.q_len
    title = (f"Visible keys per query row, batch {b}: sparse_mode {problem.sparse_mode}<br>L_q={plan.q_len}, "
             f"L_kv={plan.kv_len}, prefix P={problem.prefix_len}, delta=P+L_kv-L_q={delta}" + _pool_note(rs, cs, "max")
             + ("<br>decode (S_q=1): sparse_mode and pre/next are ignored" if problem.decode else "")
             + (f"<br>tree mask: keys below L_kv-L_q={plan.kv_len - plan.q_len} are context (all seen), the rest "
                "the draft tokens, seen where the tree mask is 0" if problem.sparse_mode == TREE_MODE else "")
             + _band_note(problem, plan, columns))
    shapes, annotations = [], []
    if problem.prefix_len:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=problem.prefix_len - 0.5,
                           x1=problem.prefix_len - 0.5, y0=0, y1=1, line=dict(color="#6a4c93", width=2)))
        annotations.append(dict(xref="x", yref="paper", x=problem.prefix_len - 0.5, y=1, yanchor="bottom",
                                showarrow=False, text=f"prefix | own keys (P={problem.prefix_len})"))
    layout = dict(
        title=dict(text=title, font=dict(size=13)), margin=dict(t=40 + 18 * (title.count("<br>") + 1)), shapes=shapes,
        annotations=annotations,
        showlegend=True, legend=dict(orientation="h", y=-0.15, yanchor="top"), height=520,
        xaxis=dict(domain=[0, 0.92], title="key j (prefix first)", range=[-0.5, columns - 0.5]),
        xaxis2=dict(domain=[0.93, 1], anchor="y"),
        yaxis=dict(title="query row i", range=[rows - 0.5, -0.5]),  # fixed: the lines' ends add no margin
    )
    return go.Figure(data=traces, layout=layout)


def _signed(offset: int) -> str:
    """'i + 3', 'i - 1', 'i' : an offset from the row index as one reads it."""
    return "i" if offset == 0 else f"i {'+' if offset > 0 else '-'} {abs(offset)}"


def _edge_on_plot(offset: int | None, plan: Any, columns: int) -> bool:
    """Whether the band edge j - i = offset crosses the plotted keys of some row (a far edge hides nothing)."""
    return offset is not None and -plan.q_len < offset < columns


def _band_note(problem: Plan, plan: Any, columns: int) -> str:
    """A title line when pre/next are in play but their band edges lie beyond every key (e.g. their defaults)."""
    band = plan.band
    if problem.decode or (band.lo is None and band.hi is None):
        return ""
    if _edge_on_plot(band.lo, plan, columns) or _edge_on_plot(band.hi, plan, columns):
        return ""
    return (f"<br>pre_tokens={problem.pre_tokens}, next_tokens={problem.next_tokens}: the band hides no key "
            f"here; set smaller pre/next to see it")


def _band_lines(problem: Plan, plan: Any, columns: int) -> list[go.Scatter]:
    """The band edges and the right-down diagonal as lines, in original (unpooled) coordinates.

    An edge that lies beyond every key (e.g. pre/next at their INT_MAX defaults) is not drawn; the title says so.
    """
    last = max(plan.q_len - 1, 0)

    def diagonal(offset: float, name: str, color: str, dash: str) -> go.Scatter:
        return go.Scatter(x=[offset - 0.5, last + offset + 0.5], y=[-0.5, last + 0.5], mode="lines",
                          line=dict(color=color, dash=dash, width=2), name=name, hoverinfo="name")

    lines, band = [], plan.band
    if _edge_on_plot(band.hi, plan, columns) and problem.sparse_mode != 3:  # mode 3: the diagonal is that edge
        lines.append(diagonal(band.hi + 0.5, f"band edge j = {_signed(band.hi)} (last visible key)", "#1d3557",
                              "dash"))
    if _edge_on_plot(band.lo, plan, columns):
        lines.append(diagonal(band.lo - 0.5, f"band edge j = {_signed(band.lo)} (first visible key)", "#1d3557",
                              "dot"))
    if problem.sparse_mode in (3, 4) and not problem.decode:
        delta = problem.prefix_len + plan.kv_len - plan.q_len
        lines.append(diagonal(delta, f"right-down diagonal j = {_signed(delta)}", "#e63946", "solid"))
    return lines


def probabilities_figure(problem: Plan, b: int = 0, heads: Sequence[int] | None = None,
                         sample_rows: bool | None = None) -> go.Figure:
    """Softmax probabilities of batch b, one panel per query head (up to MAX_HEAD_PANELS), kv head noted for GQA.

    Only the shown heads are computed, pooled as they go (``fia_kit.kernel.pooled_probabilities``). Above
    SAMPLE_ROWS_ABOVE score cells (heads x L_q x keys), or with ``sample_rows=True``, each pooled row is one
    sampled query row rather than the maximum over its block (the title says so): the work is the sampled rows
    times every key. A panel has at most PROBABILITY_CELLS rows and key blocks. With learnable sinks the sink's
    share is left out of every row, which then sums to less than 1; that uses the LSE excluding the sink, which is
    [inferred] (spec 8, 13).
    """
    heads = list(heads) if heads is not None else list(range(min(problem.num_heads, MAX_HEAD_PANELS)))
    plan = problem.batches[b]
    num_keys = problem.visibility.num_keys(b)
    if sample_rows is None:
        sample_rows = len(heads) * plan.q_len * num_keys > SAMPLE_ROWS_ABOVE
    pooled = kernel.pooled_probabilities(problem, b, heads, PROBABILITY_CELLS, sample_rows)
    rs, cs = pooled.row_block, pooled.col_block
    rows_axis = np.arange(0, plan.q_len, rs) if pooled.sampled_rows else _axis(plan.q_len, rs)
    note = _pool_note(rs, cs, "max")
    if pooled.sampled_rows:
        note = f"<br>[downsampled: every {rs}th query row; each cell = max over {cs} keys]"
    g, count, gap = problem.group_size, len(heads), 0.03
    width = (1 - gap * (count - 1)) / count
    shown = pooled.values[pooled.values > 0]  # long rows: most p are small, a few early causal rows hold p = 1
    clipped = shown.numel() > SATURATE_ABOVE
    top = max(float(shown.quantile(0.99) if clipped else shown.max()) if shown.numel() else 1.0, 1e-6)
    scale_note = f"the colour saturates at p = {top:.3g} (99% of cells below)" if clipped else \
        f"the colour runs up to the largest p, {top:.3g}"
    traces, annotations, layout = [], [], {}
    for k, n in enumerate(heads):
        axis = "" if k == 0 else str(k + 1)
        traces.append(go.Heatmap(z=pooled.values[k].numpy(), x=_axis(num_keys, cs), y=rows_axis, zmin=0,
                                 zmax=top, colorscale="Viridis", showscale=k == 0, colorbar=dict(title="p"),
                                 xaxis=f"x{axis}", yaxis="y",
                                 hovertemplate="query row %{y}<br>key %{x}<br>p = %{z:.4f}<extra></extra>"))
        left = k * (width + gap)
        layout[f"xaxis{axis}"] = dict(domain=[left, left + width], title="key j", anchor="y")
        annotations.append(dict(text=f"head {n}<br>kv head {n // g}", xref="paper", yref="paper",
                                x=left + width / 2, y=1, yanchor="bottom", showarrow=False, font=dict(size=11)))
    layout.update(
        yaxis=dict(autorange="reversed", title="query row i"), annotations=annotations,
        title=dict(text=f"Attention probabilities softmax({_score_terms(problem)} + masks), batch {b}<br>{count} of "
                        f"{problem.num_heads} query heads (G={g} query heads per kv head); {scale_note}{note}",
                        font=dict(size=13)),
        margin=dict(t=130))
    return go.Figure(data=traces, layout=layout)


def _score_terms(problem: Plan) -> str:
    """The score as the op forms it for this plan: rope concatenated to Q and K, int8 K dequantised, pse added."""
    key = "K" if problem.quant is None or problem.quant.key is None else "dequant(K_int8)"
    terms = f"scale·Q{key}ᵀ" if problem.query_rope is None else f"scale·[Q|Q_rope][{key}|K_rope]ᵀ"
    return terms + (" + pse_shift" if problem.pse is not None else "")


def canonical_output(problem: Plan, result: ReferenceResult) -> torch.Tensor:
    """attention_out as (B, N_q, S_q, Dv), or (1, N_q, T, Dv) for packed layouts."""
    return to_canonical(result.attention_out, problem.layout.out, problem.num_heads)


def output_figure(problem: Plan, result: ReferenceResult, b: int = 0) -> go.Figure:
    """attention_out of batch b: rows are query positions, columns head n's Dv values side by side."""
    out = canonical_output(problem, result)[problem.batches[b].q_index].to(torch.float64)
    first, count = _batch_rows(problem, b)
    n, _, dv = out.shape[0], out.shape[1], out.shape[2]
    flat = out[:, first:first + count].permute(1, 0, 2).reshape(count, n * dv)
    z, rs, cs = pool(flat, "mean")
    bound = float(z.nan_to_num(0).abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(z=z.numpy(), x=_axis(flat.shape[1], cs), y=_axis(count, rs), colorscale="RdBu",
                               zmid=0, zmin=-bound, zmax=bound, colorbar=dict(title="value"),
                               hovertemplate="query row %{y}<br>column %{x}<br>%{z:.4f}<extra></extra>"))
    for h in range(1, n):
        fig.add_vline(x=h * dv - 0.5, line=dict(color="black", width=1))
    fig.update_layout(title=dict(text=f"attention_out, batch {b} ({problem.out_dtype}): column = head·{dv} + d, "
                                      f"{n} heads<br>padding and out-of-band rows are 0" + _pool_note(rs, cs, "mean"),
                                 font=dict(size=13)), margin=dict(t=110))
    fig.update_xaxes(title_text="head · Dv + d")
    fig.update_yaxes(title_text="query row", autorange="reversed")
    return fig


def lse_figure(problem: Plan, result: ReferenceResult, b: int = 0) -> go.Figure:
    """softmax LSE (natural log) per query row and head of batch b; rows not computed (+inf) are marked.

    Not computed rows (out of band, padding, fully masked with inner_precise 2/3) hold +inf and show as gaps with a
    marker; fully masked rows with inner_precise 0/1 show -1e12 + ln(count), which is [inferred] (spec 7).
    """
    first, count = _batch_rows(problem, b)
    plan = problem.batches[b]
    lse = result.softmax_lse
    rows = lse[first:first + count, :, 0] if problem.layout.packed else lse[plan.q_index, :, :, 0].T[first:first + count]
    rows = rows.to(torch.float64)
    status = row_status_of_batch(problem, result, b)
    shown = torch.isfinite(rows) & (status == RowStatus.COMPUTED).unsqueeze(1)  # -1e12 + ln(n) would swamp it
    finite = rows.masked_fill(~shown, float("nan"))
    z, rs, cs = pool(finite, "mean")
    fig = go.Figure(go.Heatmap(z=z.numpy(), x=_axis(rows.shape[1], cs), y=_axis(count, rs), colorscale="Cividis",
                               colorbar=dict(title="LSE (ln)"),
                               hovertemplate="query row %{y}<br>head %{x}<br>LSE %{z:.4f}<extra></extra>"))
    invalid = [i for i, s in enumerate(status.tolist()) if s != RowStatus.COMPUTED]
    if invalid:
        fig.add_trace(go.Scatter(
            x=[rows.shape[1] - 0.5 + 0.3] * len(invalid), y=invalid, mode="markers",
            marker=dict(symbol="x", color="#e63946", size=8),
            text=[f"{STATUS_NAMES[RowStatus(int(status[i]))]}; LSE {float(rows[i, 0]):.4g}" for i in invalid],
            hovertemplate="query row %{y}: %{text}<extra></extra>", name="row not computed (LSE +inf, gap)"))
    fig.update_layout(title=dict(text=f"softmax LSE (natural log) per query row and head, batch {b}; gaps and x = "
                                      "rows not computed" + _pool_note(rs, cs, "mean"), font=dict(size=13)),
                      margin=dict(t=100),
                      legend=dict(orientation="h", y=-0.15))
    fig.update_xaxes(title_text="query head")
    fig.update_yaxes(title_text="query row", autorange="reversed")
    return fig


def difference_figure(actual: torch.Tensor, expected: torch.Tensor, tolerance: float,
                      labels: tuple[str, str] = ("actual", "expected"),
                      tolerance_name: str = "tolerance") -> go.Figure:
    """|actual - expected| as a heatmap over (all leading axes flattened, last axis), with its max and tolerance
    (``tolerance_name`` says what the tolerance is, e.g. a dtype's comparison tolerance given for scale)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    diff = (actual.to(torch.float64) - expected.to(torch.float64)).abs()
    flat = diff.reshape(-1, diff.shape[-1]) if diff.dim() > 1 else diff.view(1, -1)
    worst = float(diff.max()) if diff.numel() else 0.0
    z, rs, cs = pool(flat, "max")
    verdict = "within" if worst <= tolerance else "EXCEEDS"
    fig = go.Figure(go.Heatmap(z=z.numpy(), x=_axis(flat.shape[1], cs), y=_axis(flat.shape[0], rs),
                               colorscale="Reds", zmin=0, zmax=max(worst, tolerance),
                               colorbar=dict(title="|diff|"),
                               hovertemplate="row %{y}<br>col %{x}<br>|diff| %{z:.3g}<extra></extra>"))
    fig.update_layout(title=dict(text=f"|{labels[0]} - {labels[1]}|, shape {tuple(actual.shape)} flattened to "
                                      f"{tuple(flat.shape)}<br>max {worst:.3g} {verdict} {tolerance_name} "
                                      f"{tolerance:.3g}" + _pool_note(rs, cs, "max"), font=dict(size=13)),
                      margin=dict(t=90))
    fig.update_xaxes(title_text="last axis")
    fig.update_yaxes(title_text="leading axes (flattened)", autorange="reversed")
    return fig


def paged_figure(problem: Plan, b: int = 0) -> go.Figure:
    """Batch b's block_table row mapped to the cache's physical blocks: ``diagrams.block_table_figure`` for b."""
    return block_table_figure(problem, [b])


def layout_figure(input_layout: str, batch: int = 2, seq: int = 3, heads: int = 2) -> go.Figure:
    """How query rows lie in memory for ``input_layout``: each cell is one D-vector, in address order.

    One panel per tensor part (the input, and the output when the layout has two parts), each with its own axes.
    Cell colour = head n (key above the plot), text = (b, s, n) (packed parts: (t, n), t the token of all batches). Uses
    ``fia_kit.layouts`` to lay an index tensor out, so the figure shows exactly what the library does.
    """
    query_part, out_part = INPUT_LAYOUTS[input_layout]
    parts = [("query/key/value", query_part)] + ([("attention_out", out_part)] if out_part != query_part else [])
    colors = plotly.colors.qualitative.Pastel1
    panel, gap, top, bottom = 60, 75, 80, 60
    area = panel * len(parts) + gap * (len(parts) - 1)
    fig = go.Figure()
    for k, (what, part) in enumerate(parts):
        packed = part in ("TND", "NTD")
        b = 1 if packed or part == "NSD" else batch
        s = batch * seq if packed else seq
        ids = torch.arange(b * heads * s, dtype=torch.float64).view(b, heads, s, 1)  # canonical (B, N, S, 1)
        order = from_canonical(ids, part).reshape(-1).to(torch.int64).tolist()
        labels = [(i // (heads * s), (i // s) % heads, i % s) for i in order]  # (b, n, s) of each vector
        text = [f"t{si}<br>n{ni}" if packed else f"b{bi} s{si}<br>n{ni}" for bi, ni, si in labels]
        suffix = "" if k == 0 else str(k + 1)
        fig.add_trace(go.Heatmap(z=[[ni for _, ni, _ in labels]], x=list(range(len(order))), y=[f"{what}: {part}"],
                                 text=[text], texttemplate="%{text}", colorscale=_discrete_scale(
                                     {n: colors[n % len(colors)] for n in range(heads)}),
                                 zmin=-0.5, zmax=heads - 0.5, showscale=False, xgap=1,
                                 xaxis=f"x{suffix}", yaxis=f"y{suffix}",
                                 hovertemplate="address slot %{x}: %{text}<extra></extra>"))
        top_edge = 1 - k * (panel + gap) / area
        fig.layout[f"yaxis{suffix}"] = dict(domain=[round(top_edge - panel / area, 6), round(top_edge, 6)],
                                            anchor=f"x{suffix}")
        fig.layout[f"xaxis{suffix}"] = dict(anchor=f"y{suffix}", tickmode="linear", tick0=0, dtick=1,
                                            title=dict(text="memory order (one D-vector per cell)"
                                                       if k == len(parts) - 1 else ""))
    swatches = "   ".join(f"<span style='color:{colors[n % len(colors)]}'>■</span> n{n}" for n in range(heads))
    fig.add_annotation(text=f"colour = head: {swatches}", xref="paper", yref="paper", x=1, y=1, xanchor="right",
                       yanchor="bottom", showarrow=False, font=dict(size=13))
    fig.update_layout(title=dict(text=f"input_layout {input_layout}: D-vectors in memory order (d fastest inside "
                                      f"each cell), B={batch}, S={seq}, N={heads}", font=dict(size=13)),
                      height=area + top + bottom, margin=dict(t=top, b=bottom), plot_bgcolor="white")
    return fig


def timing_chart(rows: Sequence[Mapping[str, Any]], label: str = "name", value: str = "median_ms",
                 error: str | None = None, group: str | None = None) -> go.Figure:
    """Horizontal bars of ``row[value]`` per ``row[label]`` (optional error bars and colour groups)."""
    fig = go.Figure()
    groups = sorted({str(r.get(group)) for r in rows}) if group else [None]
    for g in groups:
        chosen = [r for r in rows if group is None or str(r.get(group)) == g]
        fig.add_trace(go.Bar(y=[str(r[label]) for r in chosen], x=[float(r[value]) for r in chosen], orientation="h",
                             name=g or value,
                             error_x=dict(array=[float(r[error]) for r in chosen]) if error else None,
                             hovertemplate="%{y}: %{x:.4g}<extra></extra>", showlegend=group is not None))
    fig.update_layout(title=dict(text=f"{value} per {label}" + (f", by {group}" if group else "")),
                      barmode="group", height=max(250, 30 * len(rows) + 120))
    fig.update_xaxes(title_text=value)
    return fig


def roofline_chart(points: Sequence[Mapping[str, Any]], peak_flops: float, peak_bandwidth: float) -> go.Figure:
    """Log-log roofline: points {"label", "intensity" (FLOP/byte), "flops" (FLOP/s)} under min(peak, bw * I)."""
    intensities = [float(p["intensity"]) for p in points] or [1.0]
    ridge = peak_flops / peak_bandwidth
    lo, hi = min(min(intensities), ridge) / 4, max(max(intensities), ridge) * 4
    xs = [lo * (hi / lo) ** (k / 63) for k in range(64)]
    fig = go.Figure(go.Scatter(x=xs, y=[min(peak_flops, peak_bandwidth * x) for x in xs], mode="lines",
                               name=f"roof: min({peak_flops:.3g} FLOP/s, {peak_bandwidth:.3g} B/s x intensity)",
                               line=dict(color="black")))
    fig.add_trace(go.Scatter(x=intensities, y=[float(p["flops"]) for p in points], mode="markers+text",
                             text=[str(p.get("label", "")) for p in points], textposition="top center",
                             marker=dict(size=9), name="measured"))
    fig.update_xaxes(type="log", title_text="arithmetic intensity (FLOP/byte)")
    fig.update_yaxes(type="log", title_text="achieved FLOP/s")
    fig.update_layout(title=dict(text=f"Roofline: ridge at {ridge:.3g} FLOP/byte"),
                      legend=dict(orientation="h", y=-0.25, yanchor="top"), margin=dict(b=110))
    return fig
