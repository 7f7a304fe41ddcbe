"""The reference computation of a validated ``Plan`` (spec 3, 7, 8, 13).

Per batch b and kv head h, with the G query heads of h stacked as one matrix (no repeated K/V):
scores = scale * Q K^T (+ pse); positions outside the sparse-mode band get -inf and positions the user mask hides
get -1e12, as the kernel writes; softmax in the compute dtype (float32, or float64 for golden checks), with the
learnable sink in the denominator; O = P V. Query rows are processed in tiles, and each tile multiplies only the
key columns its band can reach, so causal and band modes skip the keys they cannot see.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

import torch

from . import paged, quant
from .layouts import from_canonical
from .lse import no_key_lse
from .masks import MASK_FILL
from .planning import BatchPlan, Plan

TILE_ROWS = 128
TILE_BYTES = 64 * 2**20  # cap on one tile's score matrix

_compute_dtype: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("fia_compute_dtype",
                                                                                   default=None)


@contextlib.contextmanager
def compute_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Compute in ``dtype`` (torch.float32 as the op, or torch.float64 for golden checks) inside the block.

    Without it the reference computes in float32, or in float64 when the inputs are float64.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {dtype}")
    token = _compute_dtype.set(dtype)
    try:
        yield
    finally:
        _compute_dtype.reset(token)


class RowStatus(IntEnum):
    """What the op does with each query row of the canonical query (spec 5.4, 7)."""

    PADDING = 0  # not a valid query row (beyond L_q, or beyond the last cumulative length): written as 0
    COMPUTED = 1  # has at least one visible key
    OUT_OF_BAND = 2  # no key inside the sparse-mode band, or no keys at all: not computed, written as 0
    FULLY_MASKED = 3  # keys in the band, all hidden by atten_mask: uniform mean (inner_precise 0/1) or 0 (2/3)


@dataclass(frozen=True)
class ReferenceResult:
    """The reference's outputs plus what it knows about each row.

    Attributes:
        attention_out: in the output layout, the op's dtype.
        softmax_lse: (B, N_q, S_q, 1) or (T, N_q, 1) float32 (float64 for float64 inputs), natural log; +inf on
            rows that are not COMPUTED (except FULLY_MASKED with inner_precise 0/1: -1e12 + ln(count), [inferred]),
            but -3.40282e38 (float32 lowest) for a batch without keys on the IFA path (``fia_kit.lse``);
            always filled, even when the call did not ask for it.
        row_status: (B, S_q) or (1, T) int8 ``RowStatus`` per canonical query row.
    """

    attention_out: torch.Tensor
    softmax_lse: torch.Tensor
    row_status: torch.Tensor


def resolve_compute_dtype(problem: Plan) -> torch.dtype:
    chosen = _compute_dtype.get()
    if chosen is not None:
        return chosen
    return torch.float64 if problem.query.dtype == torch.float64 else torch.float32


def run_plan(problem: Plan) -> ReferenceResult:
    """Compute attention_out, the full LSE and the row status of a validated problem."""
    dtype = resolve_compute_dtype(problem)
    q4 = problem.query
    device = q4.device
    rows_shape = (q4.shape[0], q4.shape[2])
    out4 = torch.zeros(*rows_shape[:1], problem.num_heads, rows_shape[1], problem.value_dim, dtype=dtype,
                       device=device)
    lse_dtype = torch.float64 if q4.dtype == torch.float64 else torch.float32
    lse4 = torch.full((rows_shape[0], problem.num_heads, rows_shape[1]), float("inf"), dtype=lse_dtype,
                      device=device)
    status = torch.full(rows_shape, int(RowStatus.PADDING), dtype=torch.int8, device=device)
    for b, plan in enumerate(problem.batches):
        if plan.q_len == 0:
            continue
        rows = slice(plan.q_start, plan.q_start + plan.q_len)
        out_b, lse_b, status_b = attend_batch(problem, b, plan, dtype)
        if plan.kv_len + problem.prefix_len == 0:
            lse_b = lse_b.fill_(no_key_lse(problem))  # the sentinel of this path (spec 7, 25.1)
        out4[plan.q_index, :, rows] = out_b
        lse4[plan.q_index, :, rows] = lse_b.to(lse_dtype)
        status[plan.q_index, rows] = status_b
    output_quant = problem.quant.output if problem.quant is not None else None
    out4 = quant.quantize_output(out4, output_quant) if output_quant is not None else out4.to(problem.out_dtype)
    out = from_canonical(out4, problem.layout.out)
    if problem.layout.packed:
        lse = lse4[0].transpose(0, 1).unsqueeze(-1).contiguous()
    else:
        lse = lse4.unsqueeze(-1)
    return ReferenceResult(out, lse, status)


def batch_queries(problem: Plan, plan: BatchPlan, dtype: torch.dtype) -> torch.Tensor:
    """(N_q, L_q, D [+ 64 rope]) query rows of one batch, in ``dtype``."""
    rows = slice(plan.q_start, plan.q_start + plan.q_len)
    q = problem.query[plan.q_index, :, rows].to(dtype)
    if problem.quant is not None and problem.quant.query_scale is not None:
        q = quant.dequantize_query(q, problem.quant.query_scale, plan.q_index, plan.q_start, dtype)
    if problem.query_rope is not None:
        q = torch.cat([q, problem.query_rope[plan.q_index, :, rows].to(dtype)], dim=-1)
    return q


def batch_keys_values(problem: Plan, plan: BatchPlan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (N_kv, P + L_kv, D [+ 64 rope]) and values (N_kv, P + L_kv, Dv) of one batch, prefix first.

    int8/int4 K/V (and an int8 prefix) are dequantised here (spec 16.3); v1 full quant keeps them as integers
    (spec 16.2).
    """
    key_dq, value_dq = (problem.quant.key, problem.quant.value) if problem.quant is not None else (None, None)
    block_ids = problem.block_table[plan.kv_index] if problem.paged else None

    def floats(rows: torch.Tensor, dq: quant.KVDequant | None) -> torch.Tensor:
        return rows.to(dtype) if dq is None else \
            quant.dequantize_kv(rows, dq, plan.kv_index, plan.kv_start, block_ids, dtype)

    key = floats(_kv_rows(problem, problem.key, plan), key_dq)
    value = floats(_kv_rows(problem, problem.value, plan), value_dq)
    if problem.key_rope is not None:
        key = torch.cat([key, _kv_rows(problem, problem.key_rope, plan).to(dtype)], dim=-1)
    if problem.prefix_key is not None and problem.prefix_len:
        p = problem.prefix_len
        key = torch.cat([floats(problem.prefix_key[0, :, :p], key_dq), key], dim=1)
        value = torch.cat([floats(problem.prefix_value[0, :, :p], value_dq), value], dim=1)
    return key, value


def _kv_rows(problem: Plan, tensor: torch.Tensor, plan: BatchPlan) -> torch.Tensor:
    if problem.paged:
        return paged.gather_sequence(tensor, problem.block_table[plan.kv_index], plan.kv_len, problem.num_kv_heads)
    return tensor[plan.kv_index, :, plan.kv_start:plan.kv_start + plan.kv_len]


def pse_tile(problem: Plan, b: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """(N_q, rows, cols) pse_shift for batch-local rows [r0, r1) and keys [c0, c1), shifted by left padding."""
    row0, col0 = problem.batches[b].mask_origin
    return problem.pse[b if problem.pse.shape[0] > 1 else 0, :, r0 + row0:r1 + row0, c0 + col0:c1 + col0]


def _score_scale(problem: Plan) -> float:
    """scale, times dequant_scale1 for v1 full quant, whose Q K^T is the int8 product (spec 16.2)."""
    full = problem.quant.full if problem.quant is not None else None
    return problem.scale * (full.dequant_scale1 if full is not None else 1.0)


def attend_batch(problem: Plan, b: int, plan: BatchPlan,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: output (N_q, L_q, Dv), LSE (N_q, L_q) and status (L_q,)."""
    q = batch_queries(problem, plan, dtype)
    key, value = batch_keys_values(problem, plan, dtype)
    n_kv, group = problem.num_kv_heads, problem.group_size
    num_keys, q_len, device = key.shape[1], plan.q_len, q.device
    out = torch.zeros(problem.num_heads, q_len, problem.value_dim, dtype=dtype, device=device)
    lse = torch.full((problem.num_heads, q_len), float("inf"), dtype=dtype, device=device)
    status = torch.full((q_len,), int(RowStatus.OUT_OF_BAND), dtype=torch.int8, device=device)
    qg = q.view(n_kv, group, q_len, q.shape[-1])
    sink = problem.learnable_sink.to(device=device, dtype=dtype).view(n_kv, group, 1, 1) \
        if problem.learnable_sink is not None else None
    full = problem.quant.full if problem.quant is not None else None
    step = _tile_rows(problem.num_heads, num_keys, dtype)
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        c0, c1 = plan.band.key_range(r0, r1, num_keys)
        if c1 <= c0:
            continue
        rows = r1 - r0
        scores, hidden, outside = _masked_scores(problem, b, qg, key, (r0, r1, c0, c1), dtype)
        tile_status = _tile_status(plan.band.key_counts(r0, r1, num_keys).to(device), hidden, outside)
        out_t, lse_t = _softmax_values(scores, value[:, c0:c1], sink, full)
        fully_masked = tile_status == RowStatus.FULLY_MASKED
        invalid = tile_status == RowStatus.OUT_OF_BAND
        if problem.inner_precise & 2:
            invalid = invalid | fully_masked  # "row invalid correction" zeroes fully masked rows (spec 7)
        out_t = out_t.reshape(problem.num_heads, rows, -1).masked_fill_(invalid.view(1, rows, 1), 0.0)
        lse_t = lse_t.reshape(problem.num_heads, rows).masked_fill_(invalid.view(1, rows), float("inf"))
        out[:, r0:r1] = out_t
        lse[:, r0:r1] = lse_t
        status[r0:r1] = tile_status
    return out, lse, status


@dataclass(frozen=True)
class OutsideStrip:
    """The out-of-band positions of a tile: ``mask`` (rows, width) covers tile columns [start, start + width)."""

    start: int
    mask: torch.Tensor


def _masked_scores(problem: Plan, b: int, qg: torch.Tensor, key: torch.Tensor,
                   tile: tuple[int, int, int, int], dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor | None, OutsideStrip | None]:
    """Scaled scores (+ pse) of rows [r0, r1) over keys [c0, c1), masked as the kernel masks them.

    qg: (N_kv, G, L_q, D) queries; key: (N_kv, P + L_kv, D). Returns the scores (N_kv, G, rows, cols), with
    MASK_FILL where atten_mask hides a key and -inf outside the band, the (rows, cols) hidden tile, and the strip
    of columns the band cuts (only that strip is masked: for causal modes it is the diagonal block).
    """
    r0, r1, c0, c1 = tile
    n_kv, group, rows, device = qg.shape[0], qg.shape[1], r1 - r0, qg.device
    scores = torch.bmm(qg[:, :, r0:r1].reshape(n_kv, group * rows, -1), key[:, c0:c1].transpose(1, 2))
    scores = scores.view(n_kv, group, rows, c1 - c0).mul_(_score_scale(problem))
    if problem.pse is not None:
        scores += pse_tile(problem, b, r0, r1, c0, c1).to(dtype).view(n_kv, group, rows, c1 - c0)
    hidden = problem.visibility.hidden_tile(b, r0, r1, c0, c1)
    if hidden is not None:
        hidden = hidden.to(device)
        scores.masked_fill_(hidden, MASK_FILL)
    band = problem.batches[b].band
    cut = band.cut_columns(r0, r1, c0, c1)
    if cut is None:
        return scores, hidden, None
    strip = OutsideStrip(cut[0] - c0, band.outside_tile(r0, r1, cut[0], cut[1], device))
    scores[..., strip.start:strip.start + strip.mask.shape[1]].masked_fill_(strip.mask, float("-inf"))
    return scores, hidden, strip


def _tile_status(band_counts: torch.Tensor, hidden: torch.Tensor | None,
                 outside: OutsideStrip | None) -> torch.Tensor:
    """(rows,) int8 RowStatus of a tile from its band key counts, its user-mask tile and its out-of-band strip."""
    status = torch.full_like(band_counts, int(RowStatus.COMPUTED), dtype=torch.int8)
    if hidden is not None:
        visible = ~hidden
        if outside is not None:
            visible[:, outside.start:outside.start + outside.mask.shape[1]] &= ~outside.mask
        status[~visible.any(-1)] = RowStatus.FULLY_MASKED
    status[band_counts == 0] = RowStatus.OUT_OF_BAND
    return status


def _softmax_values(scores: torch.Tensor, value: torch.Tensor, sink: torch.Tensor | None,
                    full: quant.FullQuant | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scores) @ value per kv head, with an optional sink logit in the denominator.

    scores: (N_kv, G, rows, keys), overwritten with the unnormalised probabilities; value: (N_kv, keys, Dv);
    sink: (N_kv, G, 1, 1) or None. The row max excludes the sink, as in the kernel (spec 13).
    Returns (N_kv, G, rows, Dv) and the LSE (N_kv, G, rows), which excludes the sink ([inferred], spec 8).
    With v1 full quant, P V uses the int8-quantised probabilities times dequant_scale2 (spec 16.2).
    """
    n_kv, group, rows, keys = scores.shape
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    probs = scores.sub_(row_max).exp_()
    total = probs.sum(-1, keepdim=True)
    lse = (row_max + torch.log(total)).squeeze(-1)
    if sink is not None:
        total = total + torch.exp(sink - row_max)
    pv = probs if full is None else quant.quantize_probs(probs, full)
    weighted = torch.bmm(pv.view(n_kv, group * rows, keys), value).view(n_kv, group, rows, -1)
    if full is not None:
        weighted.mul_(full.dequant_scale2)
    return weighted.div_(torch.where(total > 0, total, torch.ones_like(total))), lse


def _tile_rows(num_heads: int, num_keys: int, dtype: torch.dtype) -> int:
    per_row = max(1, num_heads * num_keys * torch.finfo(dtype).bits // 8)
    return max(16, min(TILE_ROWS, TILE_BYTES // per_row))


def batch_probabilities(problem: Plan, b: int, heads: list[int] | None = None) -> torch.Tensor:
    """(len(heads), L_q, P + L_kv) softmax probabilities of batch b for the given query heads (default: all).

    p[n, i, j] = exp(s[i, j] - lse[n, i]) / (1 + exp(sink[n] - lse[n, i])), with the masked scores s and the LSE of
    ``attend_batch`` (the sink term only with learnable_sink). Rows the op writes as zero (not computed, or fully
    masked with inner_precise 2/3) are all zero; fully masked rows with inner_precise 0/1 are uniform (spec 7).
    """
    dtype = resolve_compute_dtype(problem)
    plan = problem.batches[b]
    heads = list(range(problem.num_heads)) if heads is None else list(heads)
    q = batch_queries(problem, plan, dtype)
    key, _ = batch_keys_values(problem, plan, dtype)
    n_kv, group, q_len, num_keys = problem.num_kv_heads, problem.group_size, plan.q_len, key.shape[1]
    probs = torch.zeros(len(heads), q_len, num_keys, dtype=dtype)
    if q_len == 0 or num_keys == 0:
        return probs
    qg = q.view(n_kv, group, q_len, q.shape[-1])
    sink = problem.learnable_sink.to(dtype).view(n_kv, group, 1, 1) if problem.learnable_sink is not None else None
    step = _tile_rows(problem.num_heads, num_keys, dtype)
    for r0 in range(0, q_len, step):
        r1, rows = min(q_len, r0 + step), min(q_len, r0 + step) - r0
        scores, hidden, outside = _masked_scores(problem, b, qg, key, (r0, r1, 0, num_keys), dtype)
        status = _tile_status(plan.band.key_counts(r0, r1, num_keys), hidden, outside)
        _, lse = _softmax_values(scores.clone(), torch.zeros(n_kv, num_keys, 1, dtype=dtype), sink)
        tile = torch.exp(scores - lse.unsqueeze(-1))
        if sink is not None:
            tile = tile / (1 + torch.exp(sink - lse.unsqueeze(-1)))
        invalid = status == RowStatus.OUT_OF_BAND
        if problem.inner_precise & 2:
            invalid = invalid | (status == RowStatus.FULLY_MASKED)
        tile = tile.reshape(problem.num_heads, rows, num_keys).masked_fill_(invalid.view(1, rows, 1), 0.0)
        probs[:, r0:r1] = tile[heads]
    return probs
