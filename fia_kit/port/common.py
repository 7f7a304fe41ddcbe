"""What every translator shares: binding a source call, the FIA call it becomes, and the conventions that flip.

A translator reads a source call's own arguments (``bind``) and returns a ``Translation``: the FIA tensors and
keywords (canonical v1 names), one note per convention that changed, and how FIA's outputs map back. The caller's
tensors are passed through untouched (no dtype cast, views only); tensors the translator derives take the dtype FIA
requires for that query (``pse_dtype``, ``sink_dtype``; masks bool, block tables int32).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import FIAArgumentError
from ..lse import no_key_rows
from ..masks import INT_MAX, compressed_causal_mask
from ..planning import OP_FLOAT_DTYPES, plan
from ..rules.routes import sink_dtype as route_sink_dtype

Converter = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Translation:
    """A source call as FIA sees it.

    Attributes:
        form: "v1", or "v2" where a v2-only argument (learnable_sink) is needed.
        query, key, value: the FIA positional tensors (views of the caller's, never cast).
        keywords: FIA keywords by canonical (v1) name.
        notes: one line per convention that changed: "<source> -> <FIA>: before -> after".
        out_to_source: FIA attention_out -> the source's output layout.
        lse_to_source: FIA softmax_lse -> the source's LSE (layout, shape, log base); None where it has none.
        derived: canonical names of tensors the translator made, with the dtype FIA needs for them.
    """

    form: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    keywords: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    out_to_source: Converter = lambda out: out  # noqa: E731
    lse_to_source: Converter | None = None
    derived: dict[str, torch.dtype] = field(default_factory=dict)


def no_key_as(lse: torch.Tensor, value: float) -> torch.Tensor:
    """FIA's LSE with its no-key sentinels (+inf on the prefill path, -3.40282e38 on decode; spec 7, 25.1) replaced
    by the source's ``value`` for a row that sees no key."""
    return lse.masked_fill(no_key_rows(lse), value)


def bind(signature: Callable[..., Any], api: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The source call's arguments by the source's own names, defaults filled in. Raises FIAArgumentError for a
    keyword the source API does not have, or a missing required argument."""
    sig = inspect.signature(signature)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as err:
        raise FIAArgumentError(api, f"the arguments do not match the source API's signature {sig}: {err}",
                               sorted(kwargs)) from err
    bound.apply_defaults()
    return dict(bound.arguments)


def tensor(arguments: Mapping[str, Any], name: str, rank: int | tuple[int, ...]) -> torch.Tensor:
    """``arguments[name]`` checked to be a floating tensor of the given rank(s)."""
    value = arguments[name]
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(value, torch.Tensor) or value.dim() not in ranks or not value.is_floating_point():
        raise FIAArgumentError(name, f"must be a floating tensor of rank {' or '.join(map(str, ranks))}", value)
    return value


def untranslatable(feature: str, needs: str, value: Any) -> FIAArgumentError:
    """The error for a source feature FIA cannot express, named in the source API's words."""
    return FIAArgumentError(feature, f"has no FIA counterpart: {needs}", value)


def default_scale(given: float | None, head_dim: int, source: str, notes: list[str]) -> float:
    """The source's scale (default 1/sqrt(D)) made explicit: FIA's default is 1.0 (spec 18.5)."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, (int, float)) or not math.isfinite(given):
            raise FIAArgumentError(source, "must be a finite float or None", given)
        notes.append(f"{source}: {given:g} -> scale={float(given):g} (passed explicitly: FIA's default is 1.0)")
        return float(given)
    scale = head_dim ** -0.5
    notes.append(f"{source}: None (1/sqrt({head_dim})) -> scale={scale:.6g} (FIA's default is 1.0, spec 18.5)")
    return scale


def pse_dtype(query: torch.Tensor) -> torch.dtype:
    """pse_shift's dtype for this query: the query's own (float16 with float16, bfloat16 with bfloat16; spec 9)."""
    return query.dtype


def sink_dtype(query: torch.Tensor, keywords: Mapping[str, Any]) -> torch.dtype:
    """learnable_sink's dtype on the host route of the call ``keywords`` (with "key" and "value") makes: the query's
    on the split-fuse route, bfloat16 on the FIA route (spec 13; docs/rules.md SF-SINK-001, FIA-SINK-001); the
    kit's float32/float64 queries keep their own."""
    if query.dtype not in OP_FLOAT_DTYPES:
        return query.dtype
    rest = {k: v for k, v in keywords.items() if k not in ("key", "value")}
    return route_sink_dtype(plan("v1", query, keywords["key"], keywords["value"], **rest).route, query.dtype)


def window_band(left: int, right: int, causal: bool, source: str, notes: list[str]) -> dict[str, Any]:
    """FIA keywords for a bottom-right aligned causal flag and/or window (flash-attn / FlashInfer).

    A source window keeps i + delta - left <= j <= i + delta + right (delta = L_kv - L_q, -1 unbounded); FIA's
    sparse_mode 4 keeps delta - pre_tokens <= j - i <= delta + next_tokens (spec 6.3), so pre = left,
    next = right; causal alone is sparse_mode 3 (bottom-right, spec 6.3), never 2 (top-left).
    """
    if causal:
        right = 0
    if left < 0 and right < 0:
        return {}
    if left < 0 and right == 0:
        notes.append(f"{source}: causal (bottom-right) -> sparse_mode=3 with the compressed 2048 mask "
                     "(sparse_mode 2 is top-left)")
        return {"sparse_mode": 3, "atten_mask": compressed_causal_mask()}
    pre = left if left >= 0 else INT_MAX
    nxt = right if right >= 0 else INT_MAX
    notes.append(f"{source}: window (left={left}, right={right}) -> sparse_mode=4, pre_tokens={pre}, "
                 f"next_tokens={nxt} (a window of W keys including the diagonal is pre_tokens=W-1)")
    return {"sparse_mode": 4, "pre_tokens": pre, "next_tokens": nxt, "atten_mask": compressed_causal_mask()}


def lengths_from_cumulative(name: str, cu: Any, total: int) -> list[int]:
    """FIA's cumulative lengths from a CUDA ``cu_seqlens`` / ``indptr``: drop the leading 0 (spec 5.2)."""
    values = [int(x) for x in (cu.tolist() if isinstance(cu, torch.Tensor) else cu)]
    if len(values) < 2 or values[0] != 0 or any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise FIAArgumentError(name, "must be non-decreasing, start at 0 and have batch_size + 1 entries", cu)
    if values[-1] != total:
        raise FIAArgumentError(name, f"must end at the packed tensor's length {total}", cu)
    return values[1:]


def per_batch(cumulative: list[int]) -> list[int]:
    """Per-batch lengths from cumulative ones."""
    return [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]


def block_table_from_pages(indptr: Any, indices: torch.Tensor, last_page_len: Any, page_size: int,
                           ) -> tuple[torch.Tensor, list[int]]:
    """FIA's padded (B, max_pages) int32 block_table and per-batch kv lengths from FlashInfer's CSR page table.

    Row b holds ``indices[indptr[b]:indptr[b+1]]`` then zeros (never read: past the batch's length, spec 11);
    its length is (pages - 1) * page_size + last_page_len[b].
    """
    ptr = [int(x) for x in (indptr.tolist() if isinstance(indptr, torch.Tensor) else indptr)]
    last = [int(x) for x in (last_page_len.tolist() if isinstance(last_page_len, torch.Tensor) else last_page_len)]
    if len(ptr) != len(last) + 1 or ptr[0] != 0:
        raise FIAArgumentError("paged_kv_indptr + paged_kv_last_page_len", "need batch_size + 1 and batch_size "
                               "entries, the indptr starting at 0", (len(ptr), len(last)))
    counts = [b - a for a, b in zip(ptr, ptr[1:], strict=False)]
    table = torch.zeros(len(counts), max(max(counts, default=0), 1), dtype=torch.int32, device=indices.device)
    lengths = []
    for b, (start, count) in enumerate(zip(ptr, counts, strict=False)):
        if count and not 0 < last[b] <= page_size:
            raise FIAArgumentError("paged_kv_last_page_len", f"entry {b} must lie in [1, page_size={page_size}]",
                                   last[b])
        table[b, :count] = indices[start:start + count].to(torch.int32)
        lengths.append((count - 1) * page_size + last[b] if count else 0)
    return table, lengths


def mask_keywords(keep: torch.Tensor | None, bias: torch.Tensor | None, query: torch.Tensor, num_heads: int,
                  source: str, pse_allowed: bool, notes: list[str], derived: dict[str, torch.dtype],
                  bias_source: str | None = None, q_lens: list[int] | None = None) -> dict[str, Any]:
    """FIA keywords for a (B|1, H|1, L, S) keep mask (True = keep) and/or additive bias, top-left coordinates.

    A head-independent mask becomes a sparse mode where it is one (2: j <= i; 3: j <= i + S - L; 4: a band), else
    an explicit atten_mask with FIA's polarity (True = hidden); rows it hides fully get inner_precise 2, so they
    come out 0 as in flex (spec 7). A per-head mask and any bias go to pse_shift (finfo.min where hidden), where
    FIA allows a pse (spec 9); -inf entries of a head-independent bias go to the mask. ``q_lens``: each batch's
    valid rows, where the planes are padded (packed layouts).
    """
    keywords: dict[str, Any] = {}
    bias_source = bias_source or source
    if bias is not None:
        hidden = torch.isneginf(bias)
        if hidden.any():
            if hidden.shape[1] == 1 or bool((hidden == hidden[:, :1]).all()):
                hidden = hidden[:, :1]
                keep = ~hidden if keep is None else keep & ~hidden
                bias = bias.masked_fill(torch.isneginf(bias), 0.0)
                notes.append(f"{bias_source}: -inf entries -> hidden in atten_mask (True = hidden)")
        if torch.isneginf(bias).any():  # a per-head -inf: FIA's pse takes finite values
            fill = torch.finfo(pse_dtype(query)).min
            bias = bias.masked_fill(torch.isneginf(bias), fill)
            notes.append(f"{bias_source}: per-head -inf entries -> {fill:.4g} in pse_shift (FIA's atten_mask has no "
                         "head axis, spec 6.1)")
        if not bool((bias == 0).all()):
            keywords["pse_shift"] = bias
    if keep is not None and keep.shape[1] > 1 and not bool((keep == keep[:, :1]).all()):
        fill = torch.finfo(pse_dtype(query)).min
        additive = torch.zeros(keep.shape, dtype=torch.float64, device=keep.device).masked_fill(~keep, fill)
        keywords["pse_shift"] = additive if "pse_shift" not in keywords else keywords["pse_shift"] + additive
        notes.append(f"{source}: a per-head mask -> pse_shift with {fill:.4g} where hidden (FIA's atten_mask has "
                     "no head axis, spec 6.1)")
        keep = None
    if "pse_shift" in keywords:
        if not pse_allowed:
            raise untranslatable(source, "a per-head mask or an additive bias needs FIA's pse_shift, which is not "
                                 "allowed here (packed TND layouts, learnable_sink, MLA; spec 9)", "pse needed")
        pse = keywords["pse_shift"]
        b, _, l_q, l_kv = pse.shape
        keywords["pse_shift"] = pse.to(pse_dtype(query)).expand(b, num_heads, l_q, l_kv).contiguous()
        derived["pse_shift"] = pse_dtype(query)
        notes.append(f"{bias_source}: additive -> pse_shift {tuple(keywords['pse_shift'].shape)} "
                     f"{str(pse_dtype(query)).removeprefix('torch.')}, added after the scale (spec 3.4, 9)")
    if keep is not None:
        keywords.update(_visibility(keep[:, 0], source, notes, q_lens))
    return keywords


def _visibility(keep: torch.Tensor, source: str, notes: list[str], q_lens: list[int] | None = None,
                ) -> dict[str, Any]:
    """(B|1, L, S) keep mask -> a sparse mode, or an explicit FIA mask."""
    _, l_q, l_kv = keep.shape
    if bool(keep.all()):
        notes.append(f"{source}: keeps every key -> no atten_mask")
        return {}
    band = _band_of(keep)
    if band is not None:
        lo, hi = band
        delta = l_kv - l_q
        if lo is None and hi == 0:
            notes.append(f"{source}: top-left causal -> sparse_mode=2 (j <= i; sparse_mode 3 is bottom-right)")
            return {"sparse_mode": 2, "atten_mask": compressed_causal_mask()}
        if lo is None and hi == delta:
            notes.append(f"{source}: bottom-right causal -> sparse_mode=3")
            return {"sparse_mode": 3, "atten_mask": compressed_causal_mask()}
        pre = INT_MAX if lo is None else delta - lo
        nxt = INT_MAX if hi is None else hi - delta
        if pre > -l_q and nxt > -l_kv and pre + nxt >= 0:
            notes.append(f"{source}: a band {lo} <= j - i <= {hi} -> sparse_mode=4, pre_tokens={pre}, "
                         f"next_tokens={nxt}")
            return {"sparse_mode": 4, "pre_tokens": pre, "next_tokens": nxt, "atten_mask": compressed_causal_mask()}
    keywords: dict[str, Any] = {"atten_mask": (~keep).unsqueeze(1)}
    notes.append(f"{source}: True = keep -> atten_mask {tuple(keep.shape[:1]) + (1,) + tuple(keep.shape[1:])} "
                 "bool with True = hidden (inverted)")
    seen = keep.any(dim=-1)
    if q_lens is not None:
        seen = seen | (torch.arange(l_q, device=keep.device)[None, :] >= torch.tensor(q_lens, device=keep.device)[:, None])
    if not bool(seen.all()):
        keywords["inner_precise"] = 2
        notes.append(f"{source}: rows hidden entirely -> inner_precise=2, so FIA writes 0 there (with 0 it "
                     "would average V; spec 7)")
    return keywords


def _band_of(keep: torch.Tensor) -> tuple[int | None, int | None] | None:
    """(lo, hi) when ``keep`` (B|1, L, S) equals lo <= j - i <= hi in every batch (None: unbounded), else None."""
    _, l_q, l_kv = keep.shape
    if not bool((keep == keep[:1]).all()):
        return None
    d = torch.arange(l_kv)[None, :] - torch.arange(l_q)[:, None]
    plane = keep[0].cpu()
    if not plane.any():
        return None
    lo, hi = int(d[plane].min()), int(d[plane].max())
    if not torch.equal(plane, (d >= lo) & (d <= hi)):
        return None
    return (None if lo <= -(l_q - 1) else lo), (None if hi >= l_kv - 1 else hi)
