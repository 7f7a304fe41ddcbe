"""Which keys each query row sees, as the source API defines it, and a figure of it next to FIA's.

    keep = fia_kit.port.source_visibility(ported, b=0)     # (L_q, L_kv) bool, True = the row sees the key
    fig = fia_kit.port.visibility_pair(ported, b=0)        # source | FIA side by side; cells that differ marked

The source side is read from the source call's own arguments with the source's rules (SDPA/flex: the masks as
given; flash-attn/FlashInfer: ``contracts``), the FIA side from the translated plan's ``Visibility``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import contracts
from .ported import Ported
from .torch_apis import FLEX, SDPA, _block_mask_keep


def source_visibility(ported: Ported, b: int = 0) -> torch.Tensor:
    """(L_q, L_kv) bool of batch (or request) b under the source API's rules, head 0."""
    a, api = ported.arguments, ported.api
    if api in (SDPA, FLEX):
        q, k = a["query"], a["key"]
        l_q, l_kv = q.shape[2], k.shape[2]
        if api == SDPA:
            return _sdpa_keep(a, b, l_q, l_kv)
        keep = _block_mask_keep(a["block_mask"], q.shape[0], q.shape[1], l_q, l_kv)
        plane = torch.ones(l_q, l_kv, dtype=torch.bool) if keep is None else keep[min(b, keep.shape[0] - 1), 0]
        return plane.cpu()
    lengths = _lengths(ported, b)
    if api.startswith("flash_attn."):
        left, right = (int(x) for x in a["window_size"])
        keep = contracts.bottom_right_keep(*lengths, a["causal"], left, right)
        return torch.ones(*lengths, dtype=torch.bool) if keep is None else keep[0]
    decode = api.endswith("DecodeWithPagedKVCacheWrapper")
    custom = a.get("custom_mask")
    if custom is not None and api.endswith("Wrapper"):
        offset = sum(x * y for x, y in (_lengths(ported, i) for i in range(b)))
        custom = custom.reshape(-1)[offset:offset + lengths[0] * lengths[1]]
    return contracts.flashinfer_keep(*lengths, a.get("causal", False), a["window_left"], custom, decode)[0]


def _sdpa_keep(a: dict[str, Any], b: int, l_q: int, l_kv: int) -> torch.Tensor:
    if a["is_causal"]:
        return torch.ones(l_q, l_kv, dtype=torch.bool).tril()
    mask = a["attn_mask"]
    if mask is None:
        return torch.ones(l_q, l_kv, dtype=torch.bool)
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).expand(-1, -1, l_q, l_kv)
    plane = full[min(b, full.shape[0] - 1), 0]
    return (plane if plane.dtype == torch.bool else ~torch.isneginf(plane)).cpu()


def _lengths(ported: Ported, b: int) -> tuple[int, int]:
    """(L_q, L_kv) of batch b as the FIA plan resolved them (the translation's lengths, checked by its tests)."""
    p = ported.plan().batches[b]
    return p.q_len, p.kv_len


def visibility_pair(ported: Ported, b: int = 0, fia: Any = None, title: str | None = None) -> Any:
    """A plotly figure: the source's visibility of batch b (left) and FIA's (right), cells that differ outlined.

    Args:
        ported: the translation.
        b: the batch (request) to draw.
        fia: another FIA call or plan to draw on the right instead of the translation (a naive translation).
        title: the figure title (default: the API and how many cells differ).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..planning import plan as make_plan

    source = source_visibility(ported, b)
    the_plan = ported.plan() if fia is None else make_plan(fia) if not hasattr(fia, "visibility") else fia
    target = the_plan.visibility.dense(b).cpu()
    rows, cols = min(source.shape[0], target.shape[0]), min(source.shape[1], target.shape[1])
    source, target = source[:rows, :cols], target[:rows, :cols]
    differ = source != target
    fia_name = f"FIA sparse_mode {the_plan.sparse_mode}" + (" + atten_mask" if the_plan.atten_mask is not None
                                                             else "")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"source: {ported.api.split('.')[-1]}", fia_name),
                        horizontal_spacing=0.08)
    scale = [[0, "#e9ecef"], [1, "#1f77b4"]]
    for col, plane in ((1, source), (2, target)):
        fig.add_trace(go.Heatmap(z=plane.int().numpy(), zmin=0, zmax=1, colorscale=scale, showscale=False,
                                 hovertemplate="row %{y}<br>key %{x}<br>sees: %{z}<extra></extra>"), 1, col)
    ys, xs = torch.nonzero(differ, as_tuple=True)
    fig.add_trace(go.Scatter(x=xs.tolist(), y=ys.tolist(), mode="markers", name="differs",
                             marker=dict(symbol="x", color="#d62728", size=9)), 1, 2)
    count = int(differ.sum())
    fig.update_yaxes(autorange="reversed", title_text="query row i")
    fig.update_xaxes(title_text="key j")
    fig.update_layout(title=title or f"{ported.api}: which keys each row sees (batch {b}); {count} cells differ",
                      height=380, showlegend=count > 0, plot_bgcolor="white")
    return fig
