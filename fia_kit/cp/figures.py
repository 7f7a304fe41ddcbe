"""Plotly figures of context-parallel layouts: which rank holds which token. Data in, ``go.Figure`` out.

    split_figure([1, 6, 35], world_size=4, interleave_size=2)   # DCP: each request's tokens coloured by rank
    caches_figure(shard_paged(keys, values, 4, 16, 2))          # each rank's paged cache: table -> positions
    zigzag_figure(32, world_size=4)                             # ring / PCP prefill's zigzag chunks

Every figure reads ``fia_kit.cp.layouts``; no split rule is re-derived here.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .layouts import RankCache, local_index, owner, zigzag_positions

__all__ = ["split_figure", "caches_figure", "zigzag_figure"]

PALETTE = plotly.colors.qualitative.Set2


def _rank_scale(world_size: int) -> list[list[float | str]]:
    """A stepped colour scale: value r in [0, W) gets rank r's colour; -1 (no token) is white."""
    stops: list[list[float | str]] = [[0.0, "white"], [1 / (world_size + 1), "white"]]
    for r in range(world_size):
        lo, hi = (r + 1) / (world_size + 1), (r + 2) / (world_size + 1)
        stops += [[lo, PALETTE[r % len(PALETTE)]], [hi, PALETTE[r % len(PALETTE)]]]
    return stops


def split_figure(seq_lens: Sequence[int], world_size: int, interleave_size: int = 1) -> go.Figure:
    """Requests (rows) by token position (columns), each token coloured by the rank holding it."""
    longest = max(int(n) for n in seq_lens)
    positions = torch.arange(longest)
    ranks = owner(positions, world_size, interleave_size)
    local = local_index(positions, world_size, interleave_size)
    z = [[int(ranks[p]) if p < n else -1 for p in range(longest)] for n in seq_lens]
    text = [[f"rank {int(ranks[p])}, local slot {int(local[p])}" if p < n else "" for p in range(longest)]
            for n in seq_lens]
    fig = go.Figure(go.Heatmap(z=z, text=text, hovertemplate="request %{y}, position %{x}: %{text}<extra></extra>",
                               zmin=-1, zmax=world_size - 1, colorscale=_rank_scale(world_size), xgap=1, ygap=2,
                               colorbar={"title": "rank", "tickvals": list(range(world_size))}))
    fig.update_layout(title=f"DCP split: W = {world_size}, interleave_size = {interleave_size}",
                      xaxis_title="token position", yaxis_title="request", yaxis={"autorange": "reversed",
                                                                                  "dtick": 1},
                      height=140 + 40 * len(seq_lens), margin={"t": 50, "b": 40})
    return fig


def caches_figure(caches: Sequence[RankCache]) -> go.Figure:
    """One panel per rank: each request's local slots, coloured by the global position they hold, the
    physical block id (``block_table``) in the hover."""
    w = len(caches)
    block = caches[0].key.shape[1] if caches[0].key.dim() == 3 else caches[0].key.shape[2]
    slots = max(max(int(n) for n in c.lengths) for c in caches) or 1
    fig = make_subplots(rows=1, cols=w, subplot_titles=[f"rank {c.rank}" for c in caches], shared_yaxes=True)
    top = max(int(p.max()) for c in caches for p in c.positions if p.numel()) if any(
        p.numel() for c in caches for p in c.positions) else 1
    for c in caches:
        z, text = [], []
        for b, pos in enumerate(c.positions):
            row, hover = [], []
            for s in range(slots):
                if s < pos.numel():
                    row.append(int(pos[s]))
                    hover.append(f"global position {int(pos[s])}, block {int(c.block_table[b, s // block])}")
                else:
                    row.append(None)
                    hover.append("")
            z.append(row)
            text.append(hover)
        fig.add_trace(go.Heatmap(z=z, text=text, zmin=0, zmax=top, coloraxis="coloraxis", xgap=1, ygap=2,
                                 hovertemplate="request %{y}, local slot %{x}: %{text}<extra></extra>"),
                      row=1, col=c.rank + 1)
    fig.update_yaxes(autorange="reversed", dtick=1, title_text="request", col=1)
    fig.update_xaxes(title_text="local slot")
    fig.update_layout(title="Per-rank paged caches: the global position in each local slot",
                      coloraxis={"colorscale": "Viridis", "colorbar": {"title": "position"}},
                      height=160 + 40 * len(caches[0].positions), margin={"t": 70, "b": 40})
    return fig


def zigzag_figure(seq_len: int, world_size: int) -> go.Figure:
    """One sequence's positions coloured by rank under the zigzag split (chunks r and 2W-1-r on rank r)."""
    z = [-1] * seq_len
    for r, positions in enumerate(zigzag_positions(seq_len, world_size)):
        for p in positions.tolist():
            z[p] = r
    fig = go.Figure(go.Heatmap(z=[z], zmin=-1, zmax=world_size - 1, colorscale=_rank_scale(world_size), xgap=1,
                               hovertemplate="position %{x}: rank %{z}<extra></extra>",
                               colorbar={"title": "rank", "tickvals": list(range(world_size))}))
    fig.update_layout(title=f"Zigzag split of a {seq_len}-token prefill over {world_size} ranks",
                      xaxis_title="token position", yaxis={"visible": False}, height=200,
                      margin={"t": 50, "b": 40})
    return fig
