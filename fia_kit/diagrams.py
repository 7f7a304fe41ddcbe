"""Teaching figures: how the op reads heads, packed tokens, quantisation scales and paged caches.

Pure functions, a Plan (or a few sizes) in, a plotly ``go.Figure`` out, each drawing what the library resolved
rather than re-deriving a rule:

- ``gqa_figure``: which KV head each query head reads (``Plan.group_size``; spec 10);
- ``packing_figure``: a packed (TND/NTD) call's token axes cut into batches by its cumulative lengths, and the tail of
  T past the last one (the plan's ``BatchPlan`` starts and lengths; spec 5.2);
- ``antiquant_scale_figure``: which scale (and offset) each K/V element shares, per tensor, channel, token, head, token
  and head (the op's scale shapes from ``fia_kit.quant.quantize_kv``, applied by ``fia_kit.quant.dequantize_kv``;
  spec 16.3);
- ``block_table_figure``: each sequence's logical blocks, the cache blocks its block_table row names, the valid
  tokens of the last block, the entries and cache blocks nobody reads (spec 11).

``agreement`` is a small comparison table (max |a - b| against a tolerance) for notebooks that show a check rather
than print True.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import paged, quant
from .errors import FIAArgumentError
from .planning import Plan, plan
from .signatures import spelled
from .tables import html_table, text_table

BATCH_COLORS = plotly.colors.qualitative.Set2
HEAD_COLORS = plotly.colors.qualitative.Set3
UNUSED = "#d9dde3"       # cache blocks and table entries nobody reads, the packed tail
TAIL = "#f1f3f5"         # the unused tail of a sequence's last block
OTHER = "#9aa3ad"        # cache blocks of sequences not shown
MAX_LABELLED = 48        # cells above which per-cell text is left to the hover
LEGEND = dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top", font=dict(size=11))


def _stepped(count: int, colors: Sequence[str]) -> list[list[float | str]]:
    """A colorscale giving integer codes 0..count-1 (zmin -0.5, zmax count - 0.5) the colours in turn, cycled."""
    scale: list[list[float | str]] = []
    for code in range(count):
        color = colors[code % len(colors)]
        scale += [[code / count, color], [(code + 1) / count, color]]
    return scale


def _stacked(heights: Sequence[int], titles: Sequence[str], gap: int = 105, top: int = 100,
             bottom: int = 70) -> tuple[go.Figure, int]:
    """One-column subplots whose plot areas are ``heights`` pixels tall, ``gap`` pixels apart (room for an axis
    title and the next subplot's title); returns the figure and its total height to set."""
    area = sum(heights) + gap * (len(heights) - 1)
    fig = make_subplots(rows=len(heights), cols=1, row_heights=list(heights), subplot_titles=list(titles),
                        vertical_spacing=gap / area if len(heights) > 1 else 0.0)
    fig.update_layout(margin=dict(t=top, b=bottom))
    return fig, area + top + bottom


def _spaced(ticks: set[int], gap: float) -> list[int]:
    """The sorted ticks, leaving out any closer than ``gap`` to the one before (the last one always stays)."""
    kept: list[int] = []
    for tick in sorted(ticks):
        if kept and tick - kept[-1] < gap:
            if tick != max(ticks):
                continue
            if len(kept) > 1:
                kept.pop()
        kept.append(tick)
    return kept


def _integer_ticks(count: int) -> dict:
    """Axis settings for integer positions 0..count-1: every one when few, else plotly's integer choice."""
    if count <= 40:
        return dict(tickmode="linear", tick0=0, dtick=1)
    return dict(tickmode="auto", tickformat="d")


# ---------------------------------------------------------------------------------------------------- GQA

def gqa_figure(source: Plan | int, num_kv_heads: int | None = None, *, tiled_contrast: bool = False) -> go.Figure:
    """Which KV head each query head reads: head n reads KV head n // G, G = N_q / N_kv (spec 10).

    Args:
        source: a Plan (its num_heads and num_kv_heads) or N_q.
        num_kv_heads: N_kv when ``source`` is N_q (default N_q: one KV head per query head).
        tiled_contrast: add a row with the common mistake, ``K.repeat(G)`` (tiled: head n reads n % N_kv).
    Returns:
        One heatmap, x = query head n; rows "query head n" (text n) and "KV head it reads" hold KV head n // G as
        z, with lines between the groups; with ``tiled_contrast`` a third row holds n % N_kv.
    """
    if isinstance(source, Plan):
        n_q, n_kv, group = source.num_heads, source.num_kv_heads, source.group_size
    else:
        n_q, n_kv = int(source), int(num_kv_heads or source)
        if n_kv <= 0 or n_q % n_kv:
            raise FIAArgumentError("num_key_value_heads", "must be positive and divide num_heads (spec 10)", n_kv)
        group = n_q // n_kv
    kv_of, tiled = [n // group for n in range(n_q)], [n % n_kv for n in range(n_q)]
    middle = (group - 1) // 2  # a KV head's number is written once, under the middle of its group
    rows = [("query head n", kv_of, [str(n) for n in range(n_q)]),
            ("KV head it reads", kv_of, [str(h) if n % group == middle else "" for n, h in enumerate(kv_of)])]
    if tiled_contrast:
        rows.append(("K.repeat(G), not FIA: n % N_kv", tiled, [str(h) for h in tiled]))
    labelled = n_q <= MAX_LABELLED
    fig = go.Figure(go.Heatmap(
        z=[z for _, z, _ in rows], x=list(range(n_q)), y=list(range(len(rows))), texttemplate="%{text}",
        text=[cells if labelled else [""] * n_q for _, _, cells in rows], colorscale=_stepped(n_kv, HEAD_COLORS),
        zmin=-0.5, zmax=n_kv - 0.5, showscale=False, xgap=1, ygap=6,
        hovertemplate="query head %{x}<br>KV head %{z}<extra></extra>"))
    if group > 1:
        for h in range(1, n_kv):
            fig.add_vline(x=h * group - 0.5, line=dict(color="#333333", width=2))
    fig.update_yaxes(tickvals=list(range(len(rows))), ticktext=[name for name, _, _ in rows], autorange="reversed")
    fig.update_xaxes(title_text="query head n", range=[-0.5, n_q - 0.5], **_integer_ticks(n_q))
    mqa = " (MQA)" if n_kv == 1 else " (no sharing)" if group == 1 else ""
    fig.update_layout(
        title=dict(text=f"GQA{mqa}: N_q={n_q} query heads share N_kv={n_kv} KV heads, G = N_q / N_kv = {group}<br>"
                        f"query head n reads KV head n // G: contiguous groups, as K.repeat_interleave(G) (spec 10)",
                   font=dict(size=13)),
        height=150 + 55 * len(rows), margin=dict(t=80, l=10, r=10))
    return fig


# ---------------------------------------------------------------------------------------------------- TND packing

def packing_figure(the_plan: Plan) -> go.Figure:
    """A packed call's token axes: batch b owns rows [cum[b-1], cum[b]) of T; rows past the last cum are the tail.

    One bar row per side: the query's T_q, and (not paged) the key/value T_kv; with paging the K/V lengths are per
    batch (spec 5.2) and come from the cache, which ``block_table_figure`` draws. Ticks sit at the cumulative lengths.
    """
    if not the_plan.layout.packed:
        raise ValueError(f"packing_figure needs a packed layout (TND, NTD, ...), got {the_plan.layout.name}")
    sides = [("query", "L_q", the_plan.query.shape[2], [(p.q_start, p.q_len) for p in the_plan.batches],
              spelled("actual_seq_lengths", the_plan.form))]
    if not the_plan.paged:
        sides.append(("key/value", "L_kv", the_plan.key.shape[2],
                      [(p.kv_start, p.kv_len) for p in the_plan.batches],
                      spelled("actual_seq_lengths_kv", the_plan.form)))
    titles = [f"{side}: {name} = {[s + n for s, n in spans]} (cumulative), T = {total}"
              for side, _, total, spans, name in sides]
    fig, height = _stacked([70] * len(sides), titles)
    legend_names = [f"batch {b}: " + ", ".join(f"{tag}={spans[b][1]}" for _, tag, _, spans, _ in sides)
                    for b in range(the_plan.batch)]
    for row, (side, _, total, spans, _) in enumerate(sides, start=1):
        for b, (start, length) in enumerate(spans):
            fig.add_trace(go.Bar(
                y=[side], x=[length], base=[start], orientation="h", legendgroup=f"batch {b}", name=legend_names[b],
                showlegend=row == 1, marker=dict(color=BATCH_COLORS[b % len(BATCH_COLORS)],
                                                 line=dict(color="white", width=2)),
                text=[f"b{b}: {length}"], textposition="inside", insidetextanchor="middle",
                hovertemplate=f"batch {b}: rows [{start}, {start + length}) of T, {length} tokens<extra></extra>"),
                row=row, col=1)
        end = max((s + n for s, n in spans), default=0)
        if total > end:
            fig.add_trace(go.Bar(
                y=[side], x=[total - end], base=[end], orientation="h", name="T past the last cumulative length",
                legendgroup="tail", showlegend=not any(t.legendgroup == "tail" for t in fig.data),
                marker=dict(color=UNUSED, line=dict(color="white", width=2)), text=[f"tail: {total - end}"],
                textposition="inside", insidetextanchor="middle",
                hovertemplate=f"rows [{end}, {total}): no batch; output unspecified, [inferred] zero "
                              "(spec 5.2, 23 q.2)<extra></extra>"), row=row, col=1)
        ticks = _spaced({0, total, *(s + n for s, n in spans)}, total / 40)  # labels that do not overlap
        fig.update_xaxes(tickvals=ticks, range=[0, max(total, 1)], title_text="token row t of T", showgrid=False,
                         row=row, col=1)
        fig.update_yaxes(showticklabels=False, row=row, col=1)
    paged = "<br>key/value are paged: actual_seq_lengths_kv is per batch (spec 5.2)" if the_plan.paged else ""
    fig.update_layout(
        title=dict(text=f"{the_plan.layout.name}: {the_plan.batch} batches packed on one token axis; batch b is "
                        f"rows [cum[b-1], cum[b]) (spec 5.2){paged}", font=dict(size=13)),
        barmode="overlay", height=height, legend=LEGEND)
    return fig


# ---------------------------------------------------------------------------------------------------- antiquant

# quant.quantize_kv granularity -> the separate-form key_antiquant_mode that takes its scale shape (spec 16.3).
ANTIQUANT_MODES = {"tensor": 0, "channel": 0, "token": 1, "head": 2, "token_head": 3}
GRANULARITY_TITLES = {"tensor": "per tensor", "channel": "per channel", "token": "per token", "head": "per head",
                      "token_head": "per token and head"}


def scale_indices(granularity: str, batch: int = 2, kv_heads: int = 2, tokens: int = 4,
                  channels: int = 8) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Which scale each K element uses: numbers the op's scale tensor 1, 2, ... and dequantises an all-ones K.

    The scale has the op's shape for ``granularity`` (``quant.quantize_kv``); a decode call with that scale and
    mode ``ANTIQUANT_MODES[granularity]`` is planned, and ``quant.dequantize_kv`` reads it back per element.
    Returns:
        ((B, N_kv, S, D) int64 flat index into the scale tensor, the scale tensor's shape).
    """
    mode = ANTIQUANT_MODES[granularity]
    shape = tuple(quant.quantize_kv(torch.ones(batch, kv_heads, tokens, channels), granularity)[1].shape)
    numbered = torch.arange(1, math.prod(shape) + 1, dtype=torch.float32).reshape(shape)
    if mode in (0, 2):  # these scales take the query's dtype (spec 16.3); float16 holds these integers exactly
        numbered = numbered.to(torch.float16)
    ones = torch.ones(batch, kv_heads, tokens, channels, dtype=torch.int8)
    query = torch.zeros(batch, kv_heads, 1, channels, dtype=torch.float16)
    planned = plan("v1", query, ones, ones, key_antiquant_scale=numbered, value_antiquant_scale=numbered,
                   key_antiquant_mode=mode, value_antiquant_mode=mode, num_heads=kv_heads, input_layout="BNSD")
    scales = torch.stack([quant.dequantize_kv(ones[b], planned.quant.key, b, 0, None, torch.float64)
                          for b in range(batch)])
    return (scales - 1).round().to(torch.int64), shape


def antiquant_scale_figure(granularities: Sequence[str] = tuple(ANTIQUANT_MODES), batch: int = 2,
                           kv_heads: int = 2, tokens: int = 4, channels: int = 8) -> go.Figure:
    """A small K tensor (B, N_kv, S, D) per granularity, each element coloured and labelled by the scale it uses.

    Rows are (batch b, KV head h, token t), columns channel d; elements with the same number share one scale (and
    one offset): ``K_fp = scale · (K_int + offset)`` (spec 16.3). Modes 4/5 are modes 1/3 stored like the cache.
    """
    panels = [(g, *scale_indices(g, batch, kv_heads, tokens, channels)) for g in granularities]
    titles = [f"{GRANULARITY_TITLES[g]}: mode {ANTIQUANT_MODES[g]}<br>scale {shape}, {math.prod(shape)} value"
              f"{'s' if math.prod(shape) > 1 else ''}" for g, _, shape in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.12 / max(len(panels), 1))
    labels = [f"b{b} h{h} t{t}" for b in range(batch) for h in range(kv_heads) for t in range(tokens)]
    for col, (_, index, shape) in enumerate(panels, start=1):
        flat = index.reshape(-1, channels)
        fig.add_trace(go.Heatmap(
            z=flat.tolist(), x=list(range(channels)), y=list(range(len(labels))), text=flat.tolist(),
            texttemplate="%{text}", colorscale=_stepped(math.prod(shape), HEAD_COLORS), zmin=-0.5,
            zmax=math.prod(shape) - 0.5, showscale=False, xgap=1, ygap=1,
            customdata=[[label] * channels for label in labels],
            hovertemplate="%{customdata} d%{x}: scale index %{z}<extra></extra>"), row=1, col=col)
        for r in range(tokens, len(labels), tokens):
            fig.add_hline(y=r - 0.5, line=dict(color="#333333", width=2), row=1, col=col)
        fig.update_xaxes(title_text="channel d", **_integer_ticks(channels), row=1, col=col)
    fig.update_yaxes(tickvals=list(range(len(labels))), ticktext=labels, autorange="reversed", row=1, col=1)
    fig.update_annotations(font=dict(size=12))
    fig.update_layout(
        title=dict(text=f"K/V antiquant: which elements of K (B={batch}, N_kv={kv_heads}, S={tokens}, D={channels})"
                        " share one scale/offset; K_fp = scale · (K_int + offset) (spec 16.3)", font=dict(size=13)),
        height=170 + 26 * len(labels), margin=dict(t=120, l=10, r=10))
    return fig


# ---------------------------------------------------------------------------------------------------- block table

@dataclass(frozen=True)
class BlockUse:
    """Logical block k of sequence b: block_table[row, k] names cache block ``physical``, holding ``tokens``."""

    batch: int
    logical: int
    physical: int
    tokens: int  # valid tokens in the block: block_size, or fewer in the last block; 0 for entries not read


def block_uses(the_plan: Plan) -> list[BlockUse]:
    """Every block_table entry of every sequence: the first ceil(L_kv / block_size) are read, the rest are not."""
    if not the_plan.paged:
        raise ValueError("block_table_figure needs a paged call (block_table given)")
    size, uses = the_plan.block_size, []
    for b, batch_plan in enumerate(the_plan.batches):
        row = the_plan.block_table[batch_plan.kv_index].tolist()
        for k, physical in enumerate(row):
            uses.append(BlockUse(b, k, int(physical), max(0, min(size, batch_plan.kv_len - k * size))))
    return uses


def _block_bars(fig: go.Figure, cells: list[tuple[float, str, float]], name: str, color: str, group: str,
                legend: bool, row: int, line: str = "white") -> None:
    """Bars of width ``fraction`` starting at ``start`` on category y, one trace (one legend entry)."""
    if not cells:
        return
    fig.add_trace(go.Bar(x=[f for _, _, f in cells], base=[s for s, _, _ in cells], y=[y for _, y, _ in cells],
                         orientation="h", width=0.7, name=name, legendgroup=group, showlegend=legend,
                         marker=dict(color=color, line=dict(color=line, width=1)), hoverinfo="skip"),
                  row=row, col=1)


def block_table_figure(the_plan: Plan, batches: Sequence[int] | None = None) -> go.Figure:
    """Paged K/V: each sequence's block_table row (logical blocks) and the cache's physical blocks (spec 11).

    Top: one row per sequence b, cell k = block_table[b, k], coloured over the share of its block_size tokens that
    are valid (L_kv ends inside the last block: the rest is its unused tail); entries past ceil(L_kv / block_size)
    are never read. Bottom: the cache's blocks 0..num_blocks-1, coloured by the sequence that reads them, labelled
    "b·k"; blocks no shown sequence reads are grey. Token t of sequence b lives in block
    block_table[b, t // block_size] at offset t % block_size.
    """
    uses = block_uses(the_plan)
    shown = list(range(the_plan.batch)) if batches is None else [int(b) for b in batches]
    size, num_blocks, width = the_plan.block_size, the_plan.key.shape[0], the_plan.block_table.shape[1]
    fig, height = _stacked([10 + 40 * len(shown), 50],
                           [f"block_table ({the_plan.block_table.shape[0]} x {width}): logical block k of each "
                            "batch -> cache block",
                            f"cache: {num_blocks} blocks of {size} tokens, labelled b·k (batch b, logical block k)"])
    rows = {b: f"batch {b}" for b in shown}
    tails, unread = [], []
    for b in shown:
        read = [u for u in uses if u.batch == b and u.tokens]
        kv_len = the_plan.batches[b].kv_len
        _block_bars(fig, [(u.logical - 0.45, rows[b], 0.9 * u.tokens / size) for u in read],
                    f"batch {b}: L_kv={kv_len}, {len(read)} block{'s' if len(read) != 1 else ''}",
                    BATCH_COLORS[b % len(BATCH_COLORS)], f"batch {b}", True, 1)
        tails += [(u.logical - 0.45 + 0.9 * u.tokens / size, rows[b], 0.9 * (1 - u.tokens / size))
                  for u in read if u.tokens < size]
        unread += [(u.logical - 0.45, rows[b], 0.9) for u in uses if u.batch == b and not u.tokens]
    _block_bars(fig, tails, "unused tail of a last block", TAIL, "tail", True, 1, line=OTHER)
    _block_bars(fig, unread, "block_table entry not read", "white", "unread", True, 1, line=OTHER)
    owners: dict[int, list[BlockUse]] = {}
    for u in uses:
        if u.tokens:
            owners.setdefault(u.physical, []).append(u)
    for b in shown:
        mine = [(p, us[0]) for p, us in owners.items() if us[0].batch == b]
        _block_bars(fig, [(p - 0.45, "cache", 0.9 * u.tokens / size) for p, u in mine], f"batch {b}",
                    BATCH_COLORS[b % len(BATCH_COLORS)], f"batch {b}", False, 2)
        _block_bars(fig, [(p - 0.45 + 0.9 * u.tokens / size, "cache", 0.9 * (1 - u.tokens / size))
                          for p, u in mine if u.tokens < size], "unused tail", TAIL, "tail", False, 2, line=OTHER)
    others = [(p - 0.45, "cache", 0.9) for p, us in owners.items() if us[0].batch not in rows]
    _block_bars(fig, others, "cache block of another batch", OTHER, "other", True, 2)
    free = [(p - 0.45, "cache", 0.9) for p in range(num_blocks) if p not in owners]
    _block_bars(fig, free, "cache block no batch reads", UNUSED, "free", True, 2)
    labelled = [u for u in uses if u.batch in rows]
    fig.add_trace(go.Scatter(
        x=[u.logical for u in labelled], y=[rows[u.batch] for u in labelled], mode="markers+text",
        marker=dict(size=14, opacity=0),
        text=[str(u.physical) if width <= MAX_LABELLED else "" for u in labelled], showlegend=False,
        textfont=dict(color=["#111111" if u.tokens else OTHER for u in labelled]),
        customdata=[[u.batch, u.logical, u.physical, u.tokens] for u in labelled],
        hovertemplate="block_table[b%{customdata[0]}, %{customdata[1]}] = %{customdata[2]}: "
                      "%{customdata[3]} valid tokens<extra></extra>"), row=1, col=1)
    physical = sorted(owners)
    fig.add_trace(go.Scatter(
        x=physical, y=["cache"] * len(physical), mode="markers+text", marker=dict(size=14, opacity=0),
        showlegend=False,
        text=[", ".join(f"b{u.batch}·{u.logical}" for u in owners[p]) if num_blocks <= MAX_LABELLED // 2 else ""
              for p in physical],
        customdata=[[", ".join(f"sequence {u.batch} block {u.logical} ({u.tokens} tokens)" for u in owners[p])]
                    for p in physical],
        hovertemplate="cache block %{x}: %{customdata[0]}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="logical block k (block_table column)", range=[-0.6, width - 0.4],
                     **_integer_ticks(width), row=1, col=1)
    fig.update_xaxes(title_text="physical block id (the cache's first axis)", range=[-0.6, num_blocks - 0.4],
                     **_integer_ticks(num_blocks), row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_annotations(font=dict(size=12))
    fig.update_layout(
        title=dict(text=f"Paged KV: token t of batch b is in cache block block_table[b, t // {size}], offset "
                        f"t % {size}<br>cache {paged.CACHE_LAYOUTS[the_plan.key.dim()]} "
                        f"{tuple(the_plan.key.shape)} (spec 11)",
                   font=dict(size=13)),
        barmode="overlay", legend=LEGEND, height=height)
    return fig


# ---------------------------------------------------------------------------------------------------- agreement

@dataclass(frozen=True)
class Agreement:
    """Rows of (what, max |actual - expected|, the tolerance's worst ratio): a check shown as numbers.

    ``ratio`` is max |a - e| / (atol + rtol·|e|): at most 1 means every element is within tolerance, as
    ``torch.allclose`` decides. Numbers below 1 are shown to 1 significant digit, below 10 to 1 decimal, then to 2
    significant digits; differences below ``resolution`` and ratios below 0.1 read "< ..." (exactly 0 only when
    the tolerance is 0). Float32 results differ by machine in their last bits; this keeps a notebook's table the
    same everywhere.
    """

    rows: tuple[tuple[str, float, float], ...]
    atol: float
    rtol: float
    resolution: float = 1e-5

    def _cells(self) -> tuple[str, list[str], list[list[str]]]:
        exact = not (self.atol or self.rtol)

        def shown(x: float, floor: float) -> str:
            if x < floor:  # with a tolerance, an exact 0 reads "< floor" too: elsewhere it may be last-bit noise
                return "0" if x == 0 and exact else f"< {floor:g}"
            return format(x, ".1g" if x < 1 else ".1f") if x < 10 else f"{float(f'{x:.2g}'):g}"

        caption = ("tolerance 0: agrees only where actual == expected" if exact else
                   f"tolerance: |actual - expected| <= {self.atol:g} + {self.rtol:g}·|expected|")
        head = ["compared", "max |actual - expected|", "x tolerance (<= 1 agrees)", "agrees"]
        body = [[what, shown(worst, self.resolution), shown(ratio, 0.1), "yes" if ratio <= 1 else "no"]
                for what, worst, ratio in self.rows]
        return caption, head, body

    def __repr__(self) -> str:
        return text_table(*self._cells())

    def _repr_html_(self) -> str:
        return html_table(*self._cells())


def agreement(pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], atol: float, rtol: float,
              resolution: float = 1e-5) -> Agreement:
    """Compare each (actual, expected) pair in float64: its max abs difference and tolerance ratio, in a table.

    With ``atol = rtol = 0`` the table says whether the pairs are equal. ``resolution``: see ``Agreement``.
    """
    rows = []
    for what, (actual, expected) in pairs.items():
        a, e = actual.detach().cpu().to(torch.float64), expected.detach().cpu().to(torch.float64)
        diff = (a - e).abs()
        bound = atol + rtol * e.abs()
        ratio = torch.where(diff == 0, 0.0, diff / bound) if diff.numel() else diff
        rows.append((what, float(diff.max()) if diff.numel() else 0.0, float(ratio.max()) if diff.numel() else 0.0))
    return Agreement(tuple(rows), atol, rtol, resolution)
