"""FIA -> SDPA / flex_attention: the CUDA call that computes what an FIA call computes, to check FIA semantics on a
GPU box (or on the CPU, as the tests do).

    src = fia_kit.port.to_flex(plan)       # or to_sdpa(plan); anything fia_kit.plan takes
    out, lse = src.run()                   # runs torch's function; both in FIA's layouts (lse None for SDPA)
    src.function, src.args, src.kwargs     # the call itself, to run elsewhere
    src.to_fia_out(out)                    # a source output in FIA's output layout

Which keys a row sees is read from the plan's resolved geometry (lengths, per-batch band offsets, the user mask as
FIA reads it); the score bias is the plan's pse_shift. Calls with no such equivalent raise FIAArgumentError saying
why: paged caches, a shared prefix, quantisation, MLA rope, learnable sinks, left padding, and (SDPA) rows that
see no key or per-batch query lengths.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import FIAArgumentError
from ..layouts import from_canonical
from ..lse import no_key_lse
from ..planning import Plan
from ..visibility import Visibility

_FAR = 2**40


@dataclass(frozen=True)
class SourceCall:
    """A torch call equivalent to one FIA plan.

    Attributes:
        api: the function's qualified name.
        function: the function itself.
        args, kwargs: its arguments.
        layout: FIA's output layout part, for ``to_fia_out``.
    """

    api: str
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    layout: str
    lse_packed: bool = False
    no_key_lse: float = float("inf")  # FIA's LSE for a row without keys on the plan's path (fia_kit.lse, spec 7)
    notes: tuple[str, ...] = field(default=())

    def to_fia_out(self, out: torch.Tensor) -> torch.Tensor:
        """The source's (B, N, S, Dv) output in FIA's output layout."""
        return from_canonical(out, self.layout)

    def to_fia_lse(self, lse: torch.Tensor) -> torch.Tensor:
        """flex's (B, H, L) natural-log LSE as FIA's (B, N, S, 1) or (T, N, 1); rows without keys -inf -> FIA's
        sentinel for the plan's path (+inf prefill, -3.40282e38 decode; spec 7, 25.1)."""
        lse = lse.masked_fill(torch.isneginf(lse), self.no_key_lse)
        return lse[0].transpose(0, 1).unsqueeze(-1) if self.lse_packed else lse.unsqueeze(-1)

    def run(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run it; (attention_out, softmax_lse or None) in FIA's layouts."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = self.function(*self.args, **self.kwargs)
        if isinstance(result, tuple):
            out, aux = result
            return self.to_fia_out(out), self.to_fia_lse(getattr(aux, "lse", aux))
        return self.to_fia_out(result), None


def _plan(target: Any) -> Plan:
    from ..planning import plan

    return target if isinstance(target, Plan) else plan(target)


def _refuse(p: Plan, api: str) -> None:
    checks = (
        ("block_table", p.paged, "a paged cache: gather each batch's blocks into dense K/V first (the torch call "
                                 "takes dense K/V)"),
        ("key_shared_prefix", p.prefix_len > 0, "a shared prefix: concatenate it before each batch's keys first"),
        ("quantisation", p.quant is not None, "int8/int4 inputs or outputs: torch's attention takes float tensors"),
        ("query_rope", p.query_rope is not None, "MLA rope: concatenate rope dims to Q and K first"),
        ("learnable_sink", p.learnable_sink is not None, "torch's SDPA and flex_attention have no sink logit"),
        ("query_padding_size/kv_padding_size", any(b.mask_origin != (0, 0) for b in p.batches),
         "left padding: slice the valid rows first"),
    )
    for name, bad, why in checks:
        if bad:
            raise FIAArgumentError(name, f"no {api} call computes this: {why}", "given")


def _uniform_rows_hidden(p: Plan) -> bool:
    """Whether a row the band keeps is hidden entirely by the user mask (FIA averages V there with inner_precise
    0/1, spec 7: no torch call does that)."""
    if p.atten_mask is None or p.inner_precise >= 2:
        return False
    vis = Visibility(p)
    for b in range(len(p.batches)):
        band, dense = vis.in_band(b), vis.dense(b)
        if bool((band.any(-1) & ~dense.any(-1)).any()):
            return True
    return False


def to_sdpa(target: Any) -> SourceCall:
    """``torch.nn.functional.scaled_dot_product_attention`` computing ``target``'s FIA call, where one exists.

    Needs a dense, unpacked call whose every query row is valid (L_q = S_q) and sees at least one key (SDPA writes
    NaN where FIA writes 0); visibility goes to a boolean attn_mask (True = keep), pse_shift to a float one.
    """
    p = _plan(target)
    _refuse(p, "SDPA")
    if p.layout.packed:
        raise FIAArgumentError("input_layout", f"no SDPA call computes {p.layout.name}: SDPA has no per-sequence "
                               "lengths; use to_flex (a document mask)", p.layout.name)
    s_q, s_kv = p.query.shape[2], p.key.shape[2]
    keep = _dense_keep(p, s_q, s_kv)
    if p.decode:
        keep = keep[:, :1]
    rows = keep.any(-1)
    if any(b.q_len != s_q for b in p.batches) or not bool(rows.all()):
        raise FIAArgumentError("actual_seq_lengths / sparse_mode / atten_mask", "no SDPA call computes this: some "
                               "query rows see no key (past L_q, outside the band, or fully masked); FIA writes 0 "
                               "there, SDPA NaN. Use to_flex", "rows without keys")
    if _uniform_rows_hidden(p):
        raise FIAArgumentError("atten_mask + inner_precise", "a row hidden entirely by the mask is the mean of V "
                               "under inner_precise 0/1 (spec 7): no SDPA call does that", p.inner_precise)
    kwargs: dict[str, Any] = {"scale": p.scale, "enable_gqa": p.num_heads != p.num_kv_heads}
    attn = keep.unsqueeze(1)
    if p.pse is not None:
        pse = p.pse[:, :, :s_q, :s_kv].to(p.query.dtype)
        attn = pse.masked_fill(~attn, float("-inf"))
    if p.pse is not None or not bool(keep.all()):
        kwargs["attn_mask"] = attn
    return SourceCall("torch.nn.functional.scaled_dot_product_attention",
                      torch.nn.functional.scaled_dot_product_attention, (p.query, p.key, p.value), kwargs,
                      p.layout.out)


def to_flex(target: Any) -> SourceCall:
    """``flex_attention`` (eager, or compile it yourself) computing ``target``'s FIA call, where one exists.

    Lengths, per-batch bands and the user mask become one ``mask_mod`` (for packed layouts a document mask over the
    concatenated tokens), pse_shift a ``score_mod``; rows that see no key are 0 in both. The LSE comes back as
    FIA's (rows without keys: +inf).
    """
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    p = _plan(target)
    _refuse(p, "flex_attention")
    if _uniform_rows_hidden(p):
        raise FIAArgumentError("atten_mask + inner_precise", "a row hidden entirely by the mask is the mean of V "
                               "under inner_precise 0/1 (spec 7): flex gives 0; pass inner_precise=2 to compare",
                               p.inner_precise)
    device = p.query.device
    n_b = len(p.batches)
    q_len = torch.tensor([b.q_len for b in p.batches], device=device)
    kv_len = torch.tensor([b.kv_len for b in p.batches], device=device)
    lo = torch.tensor([-_FAR if b.band.lo is None else b.band.lo for b in p.batches], device=device)
    hi = torch.tensor([_FAR if b.band.hi is None else b.band.hi for b in p.batches], device=device)
    s_q, s_kv = p.query.shape[2], p.key.shape[2]
    if p.layout.packed:
        doc_q = torch.repeat_interleave(torch.arange(n_b, device=device), q_len)
        doc_kv = torch.repeat_interleave(torch.arange(n_b, device=device), kv_len)
        q_start = torch.tensor([b.q_start for b in p.batches], device=device)
        kv_start = torch.tensor([b.kv_start for b in p.batches], device=device)
        doc_q = torch.cat([doc_q, torch.full((s_q - len(doc_q),), -1, device=device)])
        doc_kv = torch.cat([doc_kv, torch.full((s_kv - len(doc_kv),), -2, device=device)])

        def where(b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> tuple[Any, Any, Any, Any]:
            d = doc_q[q].clamp(min=0)
            return d, q - q_start[d], kv - kv_start[d], doc_q[q] == doc_kv[kv]
    else:
        def where(b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> tuple[Any, Any, Any, Any]:
            return b, q, kv, q >= 0

    hidden = _hidden_lookup(p)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        d, i, j = where(b, q, kv)[:3]
        same = where(b, q, kv)[3]
        inside = (i < q_len[d]) & (j < kv_len[d]) & (j - i >= lo[d]) & (j - i <= hi[d]) & same
        return inside if hidden is None else inside & ~hidden(d, i, j)

    kwargs: dict[str, Any] = {"scale": p.scale, "enable_gqa": p.num_heads != p.num_kv_heads,
                              "return_aux": AuxRequest(lse=True)}
    batch = 1 if p.layout.packed else p.query.shape[0]
    kwargs["block_mask"] = create_block_mask(mask_mod, batch, None, s_q, s_kv, device=str(device))
    if p.pse is not None:
        pse = p.pse.to(p.query.dtype)

        def score_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor,
                      kv: torch.Tensor) -> torch.Tensor:
            return score + pse[b if pse.shape[0] > 1 else 0, h, q if not p.decode else 0, kv]

        kwargs["score_mod"] = score_mod
    return SourceCall("torch.nn.attention.flex_attention.flex_attention", flex_attention,
                      (p.query, p.key, p.value), kwargs, p.layout.out, lse_packed=p.layout.packed,
                      no_key_lse=no_key_lse(p))


def _hidden_lookup(p: Plan) -> Callable[..., torch.Tensor] | None:
    """hidden(batch, i, j) from the plan's user mask (FIA reads it element-wise in modes 0/1 and decode)."""
    mask = p.atten_mask
    if mask is None:
        return None
    if p.decode:
        mask = mask.unsqueeze(1)
    rows, cols = mask.shape[1], mask.shape[2]
    broadcast = mask.shape[0] == 1

    def hidden(d: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        ii = torch.zeros_like(i) if p.decode else i.clamp(0, rows - 1)
        return mask[torch.zeros_like(d) if broadcast else d, ii, j.clamp(0, cols - 1)]

    return hidden


def _dense_keep(p: Plan, s_q: int, s_kv: int) -> torch.Tensor:
    """(B, S_q, S_kv) bool: Visibility.dense of each batch, False past its lengths."""
    vis = Visibility(p)
    keep = torch.zeros(len(p.batches), s_q, s_kv, dtype=torch.bool, device=p.query.device)
    for b in range(len(p.batches)):
        plane = vis.dense(b)
        keep[b, :plane.shape[0], :plane.shape[1]] = plane
    return keep
