"""The reference computation of a validated ``Plan`` (spec 3, 7, 8, 13).

Per batch b and kv head h, with the G query heads of h stacked as one matrix (no repeated K/V):
scores = scale * Q K^T (+ pse); positions outside the sparse-mode band get -inf and positions the user mask hides
get -1e12, as the kernel writes; softmax in the compute dtype (float32, or float64 for golden checks), with the
learnable sink in the denominator; O = P V.

One tile loop (``_attend_rows``) computes everything, on the inputs' device: query rows in tiles; each tile reads
only the key columns its band can reach, chunk by chunk (``BatchKeys``: a paged cache is read through block_table
a few blocks at a time, never gathered whole); the tile's score rows are kept whole, so its softmax is the one-pass
softmax (no online rescaling moves the numerics) and each key and value block is read once per row tile. Outputs
(``attend_batch``, ``run_plan``) and probabilities for figures (``pooled_probabilities``: only the heads shown,
pooled as they are computed) come from it; ``batch_row_status`` needs no attention (it reads the plan's
``fia_kit.visibility.Visibility``, as the loop does for the user mask).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
CHUNK_KEYS = 1024  # keys of a paged cache read at once (rounded to whole blocks)

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


def run_plan(problem: Plan, progress: Callable[[int], None] | None = None) -> ReferenceResult:
    """Compute attention_out, the full LSE and the row status of a validated problem.

    ``progress(rows)``, if given, is called after each row tile of the one tile loop with the number of query rows
    it finished; over the call they add up to sum(L_q) (e.g. to feed a progress bar).
    """
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
    staging: dict[int, torch.Tensor] = {}
    for b, plan in enumerate(problem.batches):
        if plan.q_len == 0:
            continue
        rows = slice(plan.q_start, plan.q_start + plan.q_len)
        out_b, lse_b, status_b = attend_batch(problem, b, plan, dtype, staging, progress)
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


def attend_batch(problem: Plan, b: int, plan: BatchPlan | None = None, dtype: torch.dtype | None = None,
                 staging: dict[int, torch.Tensor] | None = None, progress: Callable[[int], None] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: output (N_q, L_q, Dv), LSE (N_q, L_q) and status (L_q,), in ``dtype`` (default: resolved).

    ``staging``: buffers paged blocks are read into, shared between the batches of one call (``BatchKeys``).
    ``progress(rows)``: called after each row tile with its number of rows.
    """
    dtype = resolve_compute_dtype(problem) if dtype is None else dtype
    tiles: Iterable[tuple[int, int]] = _row_tiles(problem, b, dtype)
    if progress is not None:
        tiles = _reported(tiles, progress)
    found = _attend_rows(problem, b, dtype, range(problem.num_kv_heads), tiles, staging=staging)
    return found.out, found.lse, found.status


def _reported(tiles: Iterable[tuple[int, int]], progress: Callable[[int], None]) -> Iterator[tuple[int, int]]:
    """The row tiles, calling ``progress(r1 - r0)`` once the loop has finished each (it asks for the next)."""
    for r0, r1 in tiles:
        yield r0, r1
        progress(r1 - r0)


# ---------------------------------------------------------------------------------------------------- inputs

def batch_queries(problem: Plan, plan: BatchPlan, dtype: torch.dtype, heads: slice = slice(None)) -> torch.Tensor:
    """(N_q', L_q, D [+ 64 rope]) query rows of one batch for the query heads ``heads`` (default: all), in ``dtype``."""
    rows = slice(plan.q_start, plan.q_start + plan.q_len)
    q = problem.query[plan.q_index, heads, rows].to(dtype)
    if problem.quant is not None and problem.quant.query_scale is not None:
        q = quant.dequantize_query(q, problem.quant.query_scale[:, heads], plan.q_index, plan.q_start, dtype)
    if problem.query_rope is not None:
        q = torch.cat([q, problem.query_rope[plan.q_index, heads, rows].to(dtype)], dim=-1)
    return q


@dataclass(frozen=True)
class KeyChunk:
    """Keys (or values) of one batch (prefix first) that the loop uses: keys [lo, hi).

    ``rows`` is head-major (N_kv, hi - lo, D [+ 64 rope] or Dv) holding exactly those keys, or block-major
    (n_blocks, N_kv, block_size, D') holding keys [start, start + n_blocks * block_size) of a paged cache as read,
    of which [lo, hi) are used (so the cache is not copied again into head-major order), or those blocks as a tuple
    of n_blocks (N_kv, block_size, D') views of the cache itself (nothing copied).
    """

    start: int
    rows: torch.Tensor | tuple[torch.Tensor, ...]
    lo: int
    hi: int

    @staticmethod
    def dense(start: int, rows: torch.Tensor) -> KeyChunk:
        return KeyChunk(start, rows, start, start + rows.shape[1])

    @property
    def blocked(self) -> bool:
        return isinstance(self.rows, tuple) or self.rows.dim() == 4

    def clip(self, start: int, stop: int) -> KeyChunk | None:
        """The same chunk restricted to keys [start, stop), or None if it holds none of them."""
        lo, hi = max(self.lo, start), min(self.hi, stop)
        if hi <= lo:
            return None
        if (lo, hi) == (self.lo, self.hi):
            return self
        if self.blocked:
            return KeyChunk(self.start, self.rows, lo, hi)
        return KeyChunk.dense(lo, self.rows[:, lo - self.start:hi - self.start])

    def heads(self, span: slice) -> KeyChunk:
        """The chunk for kv heads ``span`` only."""
        if isinstance(self.rows, tuple):
            return KeyChunk(self.start, tuple(block[span] for block in self.rows), self.lo, self.hi)
        rows = self.rows[:, span] if self.blocked else self.rows[span]
        return KeyChunk(self.start, rows, self.lo, self.hi)


class BatchKeys:
    """The keys and values one batch sees, [shared prefix | own keys], in the compute dtype, handed out in chunks.

    Dense keys are one chunk (the prefix concatenated in front): views of the inputs when no conversion is needed,
    else one converted (dequantised) copy per batch. A paged cache is read ``CHUNK_KEYS`` keys (whole blocks) at
    a time through the batch's block_table row: a float cache already in the compute dtype in place, as views of
    its blocks (``fia_kit.paged.block_views``: the products read the cache, nothing is copied), others copied
    (``fia_kit.paged.gather_blocks``); each block is read once per row tile and the sequence is never gathered
    whole (a shared prefix is then its own chunk). int8/int4 K/V are
    dequantised per chunk (spec 16.3); v1 full quant keeps them as integers (spec 16.2). ``heads``: the kv heads
    handed out (default all); dense float keys of the other heads are never converted.
    """

    def __init__(self, problem: Plan, plan: BatchPlan, dtype: torch.dtype,
                 staging: dict[int, torch.Tensor] | None = None, heads: slice = slice(None)) -> None:
        self.problem, self.plan, self.dtype, self.heads = problem, plan, dtype, heads
        self.staging = {} if staging is None else staging  # per cache (by position): a buffer blocks are read into
        self.key_dq, self.value_dq = (problem.quant.key, problem.quant.value) if problem.quant is not None \
            else (None, None)
        self.block_ids = problem.block_table[plan.kv_index] if problem.paged else None
        self.prefix_len = problem.prefix_len if problem.prefix_key is not None else 0
        self.num_keys = self.prefix_len + plan.kv_len
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        if self.prefix_len:
            p = self.prefix_len
            keys.append(self._head_floats(problem.prefix_key[0, :, :p], self.key_dq, plan.kv_start))
            values.append(self._head_floats(problem.prefix_value[0, :, :p], self.value_dq, plan.kv_start))
        if not problem.paged:
            span = slice(plan.kv_start, plan.kv_start + plan.kv_len)
            key = self._head_floats(problem.key[plan.kv_index, :, span], self.key_dq, plan.kv_start)
            if problem.key_rope is not None:
                key = torch.cat([key, problem.key_rope[plan.kv_index, heads, span].to(dtype)], dim=-1)
            keys.append(key)
            values.append(self._head_floats(problem.value[plan.kv_index, :, span], self.value_dq, plan.kv_start))
        # the dense part: one chunk of keys [0, P) (paged) or [0, P + L_kv) (dense)
        self._dense = [] if not keys else [
            (KeyChunk.dense(0, torch.cat(keys, 1) if len(keys) > 1 else keys[0]),
             KeyChunk.dense(0, torch.cat(values, 1) if len(values) > 1 else values[0]))]

    def keys(self, start: int, stop: int) -> Iterator[KeyChunk]:
        """Key chunks covering keys [start, stop) exactly, in order."""
        return self._chunks(start, stop, 0)

    def values(self, start: int, stop: int) -> Iterator[KeyChunk]:
        """Value chunks covering keys [start, stop) exactly, in order."""
        return self._chunks(start, stop, 1)

    def _chunks(self, start: int, stop: int, which: int) -> Iterator[KeyChunk]:
        pieces = (pair[which] for pair in self._dense)
        if self.problem.paged:
            paged_pieces = self._paged(start, stop, which)
            if self.heads != slice(None):
                paged_pieces = (chunk.heads(self.heads) for chunk in paged_pieces)
            pieces = itertools.chain(pieces, paged_pieces)
        for chunk in pieces:
            clipped = chunk.clip(start, stop)
            if clipped is not None:
                yield clipped

    def _paged(self, start: int, stop: int, which: int) -> Iterator[KeyChunk]:
        """Own keys (which=0) or values (1) of the blocks holding keys [start, stop), CHUNK_KEYS at a time.

        Float caches stay block-major (``KeyChunk``: views of the cache when no conversion is needed); a block that L_kv cuts, and quantised caches (their
        scales are per token), are made head-major and cut at L_kv, so no key beyond L_kv is ever multiplied.
        """
        plan, bs = self.plan, self.problem.block_size
        first, last = max(0, start - self.prefix_len), min(plan.kv_len, stop - self.prefix_len)
        step, dq = max(1, CHUNK_KEYS // bs), (self.key_dq, self.value_dq)[which]
        full_blocks = plan.kv_len // bs
        for i0 in range(first // bs, -(-last // bs), step):
            i1 = min(i0 + step, -(-last // bs))
            ends = [i1] if dq is not None or i1 <= full_blocks or i1 - 1 == i0 else [i1 - 1, i1]
            for j0, j1 in zip([i0, *ends[:-1]], ends, strict=True):
                yield self._read(which, j0, j1, blocked=dq is None and j1 <= full_blocks)

    def _read(self, which: int, i0: int, i1: int, blocked: bool) -> KeyChunk:
        """Blocks [i0, i1) of this batch's block_table row: keys (which=0, with key_rope) or values (1)."""
        problem, plan, bs = self.problem, self.plan, self.problem.block_size
        ids, first = self.block_ids[i0:], self.prefix_len + i0 * bs
        count = min(plan.kv_len, i1 * bs) - i0 * bs
        caches = [problem.value] if which else [problem.key] + ([problem.key_rope] if problem.key_rope is not None
                                                                 else [])
        if blocked and len(caches) == 1 and caches[0].dtype == self.dtype:
            views = paged.block_views(caches[0], ids[:i1 - i0], problem.num_kv_heads)
            if views is not None:  # read in place by the products: no copy
                return KeyChunk(first, views, first, first + count)
        parts = [paged.gather_blocks(cache, ids[:i1 - i0], problem.num_kv_heads, self._buffer(2 * which + k, cache))
                 for k, cache in enumerate(caches)]
        if not blocked:
            parts = [paged.head_major(part)[:, :count] for part in parts]
            dq = (self.key_dq, self.value_dq)[which]
            parts[0] = self._floats(parts[0], dq, plan.kv_start + i0 * bs, ids)
        parts = [part.to(self.dtype) for part in parts]
        rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return KeyChunk(first, rows, first, first + count) if blocked else KeyChunk.dense(first, rows)

    def _buffer(self, slot: int, cache: torch.Tensor) -> torch.Tensor:
        """The staging buffer of one cache (slot 0 key, 1 key_rope, 2 value): CHUNK_KEYS worth of blocks."""
        blocks = max(1, CHUNK_KEYS // self.problem.block_size)
        buffer = self.staging.get(slot)
        if buffer is None or buffer.shape[1:] != cache.shape[1:] or buffer.dtype != cache.dtype:
            buffer = self.staging[slot] = cache.new_empty(blocks, *cache.shape[1:])
        return buffer

    def _head_floats(self, rows: torch.Tensor, dq: quant.KVDequant | None, start: int) -> torch.Tensor:
        """``_floats`` of the handed-out heads of (N_kv, n, D) rows: sliced before converting, unless dequantised
        (the scales cover every head)."""
        if dq is None:
            return rows[self.heads].to(self.dtype)
        return self._floats(rows, dq, start)[self.heads]

    def _floats(self, rows: torch.Tensor, dq: quant.KVDequant | None, start: int,
                block_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(N_kv, n, D) rows in the compute dtype; ``start``/``block_ids``: where they lie, for per-token scales."""
        if dq is None:
            return rows.to(self.dtype)
        ids = self.block_ids if block_ids is None else block_ids
        return quant.dequantize_kv(rows, dq, self.plan.kv_index, start, ids, self.dtype)


# ---------------------------------------------------------------------------------------------------- masking

def pse_tile(problem: Plan, b: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """(N_q, rows, cols) pse_shift for batch-local rows [r0, r1) and keys [c0, c1), shifted by left padding."""
    row0, col0 = problem.batches[b].mask_origin
    return problem.pse[b if problem.pse.shape[0] > 1 else 0, :, r0 + row0:r1 + row0, c0 + col0:c1 + col0]


def _score_scale(problem: Plan) -> float:
    """scale, times dequant_scale1 for v1 full quant, whose Q K^T is the int8 product (spec 16.2)."""
    full = problem.quant.full if problem.quant is not None else None
    return problem.scale * (full.dequant_scale1 if full is not None else 1.0)


@dataclass(frozen=True)
class OutsideStrip:
    """The out-of-band positions of a tile: ``mask`` (rows, width) covers tile columns [start, start + width)."""

    start: int
    mask: torch.Tensor


def _masked_scores(problem: Plan, b: int, q: torch.Tensor, chunk: KeyChunk, heads: slice, r0: int,
                   dtype: torch.dtype, out: torch.Tensor | None = None, row_index: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, OutsideStrip | None]:
    """Scaled scores (+ pse) of the tile's rows [r0, r0 + rows) over the chunk's keys [lo, hi), masked as the kernel.

    q: (N_kv', G, rows, D) the tile's queries; chunk: its keys, for the same kv heads; heads: the query heads (a
    slice of N_q) q holds. Returns the scores (N_kv', G, rows, hi - lo), with MASK_FILL where atten_mask hides a
    key and -inf outside the band, the (rows, cols) hidden tile, and the strip of columns the band cuts (only
    that strip is masked: for causal modes it is the diagonal block). ``out``: (N_kv', G, rows, hi - lo) view of
    the tile's score rows to write into. ``row_index``: the tile's rows are these batch-local rows (sorted, any
    spacing; r0 = the first) instead of [r0, r0 + rows).
    """
    n_kv, group, rows, device = q.shape[0], q.shape[1], q.shape[2], q.device
    r1, c0, c1 = (r0 + rows if row_index is None else int(row_index[-1]) + 1), chunk.lo, chunk.hi
    pick = slice(None) if row_index is None else row_index - r0
    q2 = q.reshape(n_kv, group * rows, -1)
    if chunk.blocked:  # (n, N_kv', bs, D): one product per block, then the used columns in key order
        per_block = _block_scores(q2, chunk.rows)  # (n, N_kv', G*rows, bs)
        keys = per_block.permute(1, 2, 0, 3).flatten(2)[..., c0 - chunk.start:c1 - chunk.start]
        scores = keys.reshape(n_kv, group, rows, c1 - c0) if out is None else \
            out.copy_(keys.view(n_kv, group, rows, -1) if keys.is_contiguous() else
                      keys.unflatten(1, (group, rows)))
    else:
        scores = torch.bmm(q2, chunk.rows.transpose(1, 2)).view(n_kv, group, rows, c1 - c0)
        scores = scores if out is None else out.copy_(scores)
    scores = scores.mul_(_score_scale(problem))
    if problem.pse is not None:
        scores += pse_tile(problem, b, r0, r1, c0, c1)[heads][:, pick].to(device=device, dtype=dtype).view(
            n_kv, group, rows, c1 - c0)
    hidden = problem.visibility.hidden_tile(b, r0, r1, c0, c1)
    if hidden is not None:
        hidden = hidden[pick].to(device)
        scores.masked_fill_(hidden, MASK_FILL)
    band = problem.batches[b].band
    if row_index is not None:
        outside = band.outside_rows(row_index, c0, c1)
        if outside is None:
            return scores, hidden, None
        scores.masked_fill_(outside, float("-inf"))
        return scores, hidden, OutsideStrip(0, outside)
    cut = band.cut_columns(r0, r1, c0, c1)
    if cut is None:
        return scores, hidden, None
    strip = OutsideStrip(cut[0] - c0, band.outside_tile(r0, r1, cut[0], cut[1], device))
    scores[..., strip.start:strip.start + strip.mask.shape[1]].masked_fill_(strip.mask, float("-inf"))
    return scores, hidden, strip


def _block_scores(q2: torch.Tensor, blocks: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """q2 (N_kv', R, D) times each block's keys (N_kv', bs, D) transposed: (n_blocks, N_kv', R, bs)."""
    if isinstance(blocks, torch.Tensor):
        return torch.matmul(q2.unsqueeze(0), blocks.transpose(-1, -2))
    out = q2.new_empty(len(blocks), q2.shape[0], q2.shape[1], blocks[0].shape[1])
    for j, block in enumerate(blocks):
        torch.bmm(q2, block.transpose(1, 2), out=out[j])
    return out


def _weighted_values(probs: torch.Tensor, chunk: KeyChunk) -> torch.Tensor:
    """probs (N_kv', R, hi - lo) of the chunk's keys times its values: (N_kv', R, Dv)."""
    if not chunk.blocked:
        return torch.bmm(probs, chunk.rows)
    blocks = chunk.rows
    n, n_kv, bs = len(blocks), blocks[0].shape[0], blocks[0].shape[-2]
    padded = torch.nn.functional.pad(probs, (chunk.lo - chunk.start, chunk.start + n * bs - chunk.hi))
    per_block = padded.view(n_kv, -1, n, bs)
    if isinstance(blocks, torch.Tensor):
        return torch.matmul(per_block.permute(2, 0, 1, 3), blocks).sum(0)
    out = torch.bmm(per_block[:, :, 0], blocks[0])
    for j in range(1, n):
        out.baddbmm_(per_block[:, :, j], blocks[j])
    return out


def _any_visible(hidden: torch.Tensor | None, outside: OutsideStrip | None) -> torch.Tensor | None:
    """(rows,) bool: some key of the tile is neither hidden nor outside the band; None without a user mask."""
    if hidden is None:
        return None
    if outside is None:  # no copy: a row sees a key unless its smallest hidden flag is 1 (uint8: the fast reduction)
        return hidden.view(torch.uint8).amin(-1) == 0
    visible = ~hidden
    visible[:, outside.start:outside.start + outside.mask.shape[1]] &= ~outside.mask
    return visible.any(-1)


def _row_status(band_counts: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """(rows,) int8 RowStatus from the band key counts and, with a user mask, whether any key is visible."""
    status = torch.full_like(band_counts, int(RowStatus.COMPUTED), dtype=torch.int8)
    if visible is not None:
        status[~visible] = RowStatus.FULLY_MASKED
    status[band_counts == 0] = RowStatus.OUT_OF_BAND
    return status


# ---------------------------------------------------------------------------------------------------- the loop

@dataclass
class RowTiles:
    """What the tile loop computed for the query heads it was given (N' of them) and the batch's L_q rows.

    out (N', L_q, Dv) and lse (N', L_q) in the compute dtype (0 and +inf where not computed); status (L_q,) int8
    RowStatus (OUT_OF_BAND for rows of tiles the loop was not asked for).
    """

    out: torch.Tensor
    lse: torch.Tensor
    status: torch.Tensor
    offset: torch.Tensor  # (N', L_q) the row max (0 where it is -inf): P = exp(s - offset) / total
    total: torch.Tensor  # (N', L_q) sum of exp(s - offset), plus exp(sink - offset) with learnable sinks; 0: row is 0


def _softmax_values(scores: torch.Tensor, values: Iterable[KeyChunk], c0: int, sink: torch.Tensor | None,
                    full: quant.FullQuant | None, want_values: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(scores) @ value per kv head, with an optional sink logit in the denominator.

    scores: (N_kv', G, rows, keys) over keys [c0, c0 + keys), overwritten with the unnormalised probabilities;
    values: the value chunks of those keys, (N_kv', n, Dv) each (the tile's kv heads only); sink:
    (N_kv', G, 1, 1) or None. The row max excludes the sink, as in the kernel (spec 13); so does the LSE
    ([inferred], spec 8). With v1 full quant, P V uses the int8-quantised probabilities times dequant_scale2
    (spec 16.2). Returns (out (N_kv', G, rows, Dv) or None, lse, offset, total), the last three (N_kv', G, rows).
    """
    n_kv, group, rows, keys = scores.shape
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    probs = scores.sub_(row_max).exp_()
    total = probs.sum(-1, keepdim=True)
    lse = (row_max + torch.log(total)).squeeze(-1)
    if sink is not None:
        total = total + torch.exp(sink - row_max)
    if not want_values:
        return None, lse, row_max.squeeze(-1), total.squeeze(-1)
    pv = (probs if full is None else quant.quantize_probs(probs, full)).view(n_kv, group * rows, keys)
    weighted = None
    for chunk in values:
        part = _weighted_values(pv[..., chunk.lo - c0:chunk.hi - c0], chunk)
        weighted = part if weighted is None else weighted.add_(part)
    weighted = weighted.view(n_kv, group, rows, -1)
    if full is not None:
        weighted.mul_(full.dequant_scale2)
    out = weighted.div_(torch.where(total > 0, total, torch.ones_like(total)))
    return out, lse, row_max.squeeze(-1), total.squeeze(-1)


def _row_tiles(problem: Plan, b: int, dtype: torch.dtype, heads: int | None = None) -> list[tuple[int, int]]:
    """Contiguous row tiles [r0, r1) covering batch b's L_q rows, sized so one score tile stays under TILE_BYTES."""
    plan = problem.batches[b]
    num_keys = (problem.prefix_len if problem.prefix_key is not None else 0) + plan.kv_len
    per_row = max(1, (heads or problem.num_heads) * num_keys * torch.finfo(dtype).bits // 8)
    step = max(16, min(TILE_ROWS, TILE_BYTES // per_row))
    return [(r0, min(plan.q_len, r0 + step)) for r0 in range(0, plan.q_len, step)]


def _head_span(kv_heads: Iterable[int]) -> slice:
    heads = sorted(set(kv_heads))
    if not heads or heads != list(range(heads[0], heads[-1] + 1)):
        raise ValueError(f"kv heads must be a non-empty contiguous range, got {heads}")
    return slice(heads[0], heads[-1] + 1)


def _attend_rows(problem: Plan, b: int, dtype: torch.dtype, kv_heads: Iterable[int],
                 tiles: Iterable[tuple[int, int] | torch.Tensor],
                 observe: Callable[[slice | torch.Tensor, int, torch.Tensor], None] | None = None,
                 values: bool = True, staging: dict[int, torch.Tensor] | None = None) -> RowTiles:
    """THE tile loop: attention of batch b for the query heads of ``kv_heads`` over the given row tiles.

    For each row tile, rows [r0, r1) or a sorted tensor of rows: the keys its band can reach [c0, c1), read chunk
    by chunk (``BatchKeys``: views for dense K/V, a few blocks at a time for a paged cache), each chunk's masked
    scores (``_masked_scores``) written into the tile's score rows; ``observe(rows, c0, scores (N', rows,
    c1 - c0))`` (rows: the slice or the tensor) may read them; then
    the softmax of the whole rows (so the numerics are those of one pass: no rescaling) and P V, reading the value
    chunks once. ``values=False`` skips P V (only LSE, status and the softmax's offset and total are wanted).
    Rows the op writes as 0 (out of band; fully masked with inner_precise 2/3, "row invalid correction",
    spec 7) get out 0, lse +inf and total 0.
    """
    plan = problem.batches[b]
    span = _head_span(kv_heads)
    all_heads = span == slice(0, problem.num_kv_heads)
    group = problem.group_size
    q_heads = slice(span.start * group, span.stop * group)
    n_kv, n_q = span.stop - span.start, (span.stop - span.start) * group
    device, q_len = problem.query.device, plan.q_len
    out = torch.zeros(n_q, q_len, problem.value_dim if values else 0, dtype=dtype, device=device)
    lse = torch.full((n_q, q_len), float("inf"), dtype=dtype, device=device)
    status = torch.full((q_len,), int(RowStatus.OUT_OF_BAND), dtype=torch.int8, device=device)
    offsets = torch.zeros((n_q, q_len), dtype=dtype, device=device)
    totals = torch.zeros((n_q, q_len), dtype=dtype, device=device)
    if q_len == 0:
        return RowTiles(out, lse, status, offsets, totals)
    q = batch_queries(problem, plan, dtype, q_heads)
    qg = q.view(n_kv, group, q_len, q.shape[-1])
    keys = BatchKeys(problem, plan, dtype, staging, slice(None) if all_heads else span)
    sink = problem.learnable_sink[q_heads].to(device=device, dtype=dtype).view(n_kv, group, 1, 1) \
        if problem.learnable_sink is not None else None
    full = problem.quant.full if problem.quant is not None else None
    for tile in tiles:
        index = tile.to(device) if isinstance(tile, torch.Tensor) else None
        r0, r1 = (int(tile[0]), int(tile[-1]) + 1) if index is not None else tile
        where = index if index is not None else slice(r0, r1)
        c0, c1 = plan.band.key_range(r0, r1, keys.num_keys)
        if c1 <= c0:
            continue
        rows, scores, visible = (r1 - r0 if index is None else len(index)), None, None
        for chunk in keys.keys(c0, c1):
            whole = (chunk.lo, chunk.hi) == (c0, c1)
            if not whole and scores is None:
                scores = torch.empty(n_kv, group, rows, c1 - c0, dtype=dtype, device=device)
            part, hidden, outside = _masked_scores(problem, b, qg[:, :, where], chunk, q_heads, r0, dtype,
                                                   None if whole else scores[..., chunk.lo - c0:chunk.hi - c0],
                                                   index)
            scores = part if whole else scores
            seen = _any_visible(hidden, outside)
            visible = seen if visible is None else visible | seen
        if observe is not None:
            observe(where, c0, scores.view(n_q, rows, c1 - c0))
        counts = plan.band.key_counts(r0, r1, keys.num_keys).to(device)
        tile_status = _row_status(counts if index is None else counts[index - r0], visible)
        out_t, lse_t, offset_t, total_t = _softmax_values(
            scores, keys.values(c0, c1), c0, sink, full, values)
        invalid = tile_status == RowStatus.OUT_OF_BAND
        if problem.inner_precise & 2:
            invalid = invalid | (tile_status == RowStatus.FULLY_MASKED)  # "row invalid correction" (spec 7)
        if out_t is not None:
            out[:, where] = out_t.reshape(n_q, rows, -1).masked_fill_(invalid.view(1, rows, 1), 0.0)
        lse[:, where] = lse_t.reshape(n_q, rows).masked_fill_(invalid.view(1, rows), float("inf"))
        status[where] = tile_status
        offsets[:, where] = offset_t.reshape(n_q, rows)
        totals[:, where] = total_t.reshape(n_q, rows).masked_fill_(invalid.view(1, rows), 0.0)
    return RowTiles(out, lse, status, offsets, totals)


# ---------------------------------------------------------------------------------------------------- figures

def batch_row_status(problem: Plan, b: int) -> torch.Tensor:
    """(L_q,) int8 ``RowStatus`` of batch b's rows, from the band and atten_mask alone (no attention computed).

    The same rule as the tile loop: OUT_OF_BAND without a key in the band, FULLY_MASKED when atten_mask hides
    every key in it, else COMPUTED.
    """
    plan = problem.batches[b]
    device = problem.query.device
    num_keys = (problem.prefix_len if problem.prefix_key is not None else 0) + plan.kv_len
    status = torch.full((plan.q_len,), int(RowStatus.OUT_OF_BAND), dtype=torch.int8, device=device)
    for r0 in range(0, plan.q_len, TILE_ROWS):
        r1 = min(plan.q_len, r0 + TILE_ROWS)
        c0, c1 = plan.band.key_range(r0, r1, num_keys)
        if c1 <= c0:
            continue
        hidden = problem.visibility.hidden_tile(b, r0, r1, c0, c1)
        visible = None
        if hidden is not None:
            cut = plan.band.cut_columns(r0, r1, c0, c1)
            strip = None if cut is None else OutsideStrip(cut[0] - c0,
                                                          plan.band.outside_tile(r0, r1, cut[0], cut[1], device))
            visible = _any_visible(hidden.to(device), strip)
        status[r0:r1] = _row_status(plan.band.key_counts(r0, r1, num_keys).to(device), visible)
    return status


@dataclass(frozen=True)
class PooledProbabilities:
    """Softmax probabilities of one batch for some query heads, max-pooled into blocks (what a figure shows).

    Attributes:
        heads: the query heads, in the order of ``values``.
        values: (len(heads), R, C) float64 on the CPU: cell [k, r, c] is the largest probability of head
            heads[k] over query rows [r * row_block, (r + 1) * row_block) (or row r * row_block alone when
            ``sampled_rows``) and keys [c * col_block, (c + 1) * col_block) (prefix keys first).
        row_block, col_block: block height and width (1: not pooled).
        sampled_rows: rows were sampled (one per block: the first) rather than pooled.
    """

    heads: tuple[int, ...]
    values: torch.Tensor
    row_block: int
    col_block: int
    sampled_rows: bool


def pooled_probabilities(problem: Plan, b: int, heads: Sequence[int] | None = None, max_cells: int | None = 256,
                         sample_rows: bool = False) -> PooledProbabilities:
    """Probabilities of batch b for ``heads`` (default: the query heads of kv head 0), pooled as they are computed.

    One pass of the tile loop per kv head of ``heads`` (the other heads are not computed): each score tile is
    max-reduced into column blocks as it goes, and with the row's max m and denominator, the largest p of a block
    is exp(max s - m) / total, exactly. The full heads x L_q x keys array never exists: memory is G x L_q x C.
    ``max_cells`` bounds R and C (None: no pooling, one cell per row and key). ``sample_rows`` computes only the
    first row of each row block (row_block times less work) instead of pooling all rows.

    p[n, i, j] = exp(s[i, j] - m[n, i]) / (sum_j' exp(s[i, j'] - m[n, i]) + exp(sink[n] - m[n, i])), with the
    masked scores s (the sink term only with learnable_sink). Rows the op writes as zero (not computed, or fully
    masked with inner_precise 2/3) are all zero; fully masked rows with inner_precise 0/1 are uniform (spec 7).
    """
    dtype = resolve_compute_dtype(problem)
    plan = problem.batches[b]
    group = problem.group_size
    heads = tuple(range(group)) if heads is None else tuple(int(n) for n in heads)
    num_keys = (problem.prefix_len if problem.prefix_key is not None else 0) + plan.kv_len
    rs, cs = (1, 1) if max_cells is None else (max(1, math.ceil(plan.q_len / max_cells)),
                                               max(1, math.ceil(num_keys / max_cells)))
    sampled = sample_rows and rs > 1
    n_rows, n_cols = -(-plan.q_len // rs), -(-num_keys // cs)
    values = torch.zeros(len(heads), n_rows, n_cols, dtype=torch.float64)
    if not heads or plan.q_len == 0 or num_keys == 0:
        return PooledProbabilities(heads, values, rs, cs, sampled)
    tiles = _sampled_tiles(plan.q_len, rs, num_keys * group * torch.finfo(dtype).bits // 8) if sampled else \
        _row_tiles(problem, b, dtype, group)
    for kv in sorted({n // group for n in heads}):
        pooled = _pooled_kv_head(problem, b, kv, tiles, rs, cs, sampled, dtype)
        for k, n in enumerate(heads):
            if n // group == kv:
                values[k] = pooled[n - kv * group]
    return PooledProbabilities(heads, values, rs, cs, sampled)


def _sampled_tiles(q_len: int, step: int, row_bytes: int) -> list[torch.Tensor]:
    """Rows 0, step, 2 step, ... < q_len in tiles of sorted row tensors whose score rows stay under TILE_BYTES."""
    rows = torch.arange(0, q_len, step)
    per_tile = max(1, TILE_BYTES // max(1, row_bytes))
    return list(rows.split(per_tile))


def _pooled_kv_head(problem: Plan, b: int, kv: int, tiles: list, rs: int, cs: int, sampled: bool,
                    dtype: torch.dtype) -> torch.Tensor:
    """(G, R, C) float64 CPU block maxima of the probabilities of kv head ``kv``'s G query heads."""
    plan, group = problem.batches[b], problem.group_size
    num_keys = (problem.prefix_len if problem.prefix_key is not None else 0) + plan.kv_len
    n_cols = -(-num_keys // cs)
    kept_rows = -(-plan.q_len // rs) if sampled else plan.q_len  # sampled: only rows 0, rs, 2 rs, ... are kept
    col_max = torch.full((group, kept_rows, n_cols), float("-inf"), dtype=dtype, device=problem.query.device)

    def observe(rows: slice | torch.Tensor, c0: int, scores: torch.Tensor) -> None:
        first, cols = c0 // cs, scores.shape[-1]
        blocks = -(-(c0 + cols) // cs) - first
        if cs > 1:
            before, after = c0 - first * cs, (first + blocks) * cs - c0 - cols
            if before or after:  # whole blocks already: no copy
                scores = torch.nn.functional.pad(scores, (before, after), value=float("-inf"))
            scores = scores.view(group, scores.shape[1], blocks, cs).amax(-1)
        if isinstance(rows, slice):
            target = col_max[:, rows, first:first + blocks]
            torch.maximum(target, scores, out=target)
        else:
            slots = rows // rs if sampled else rows
            col_max[:, slots, first:first + blocks] = torch.maximum(col_max[:, slots, first:first + blocks], scores)

    found = _attend_rows(problem, b, dtype, [kv], tiles, observe, values=False)
    offset, total = (found.offset[:, ::rs], found.total[:, ::rs]) if sampled else (found.offset, found.total)
    denominator = torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    probs = torch.exp(col_max - offset.unsqueeze(-1)).div_(denominator)
    probs.masked_fill_((total == 0).unsqueeze(-1), 0.0)
    if not sampled and rs > 1:
        n_rows = -(-plan.q_len // rs)
        probs = torch.nn.functional.pad(probs, (0, 0, 0, n_rows * rs - plan.q_len)).view(
            group, n_rows, rs, n_cols).amax(2)
    return probs.to(device="cpu", dtype=torch.float64)


def batch_probabilities(problem: Plan, b: int, heads: Sequence[int] | None = None) -> torch.Tensor:
    """(len(heads), L_q, P + L_kv) softmax probabilities of batch b for the given query heads (default: all).

    ``pooled_probabilities`` unpooled (max_cells=None), in the compute dtype on the inputs' device; for small
    problems and tests (figures call ``pooled_probabilities``).
    """
    heads = list(range(problem.num_heads)) if heads is None else list(heads)
    values = pooled_probabilities(problem, b, heads, max_cells=None).values
    return values.to(device=problem.query.device, dtype=resolve_compute_dtype(problem))
