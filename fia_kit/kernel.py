"""The reference computation of a validated ``Plan`` (spec 3, 7, 8, 13).

Per batch b and kv head h, with the G query heads of h stacked as one matrix (no repeated K/V):
scores = scale * Q K^T (+ pse); positions outside the sparse-mode band get -inf and positions the user mask hides
get -1e12, as the kernel writes; softmax in the compute dtype (float32, or float64 for golden checks), with the
learnable sink in the denominator; O = P V.

One tile loop (``_attend_rows``) computes everything, on the inputs' device: query rows in tiles; each tile reads
only the key columns its band can reach, chunk by chunk (``BatchKeys``: a paged cache is read through block_table
a few blocks at a time, never gathered whole); the tile's score rows are kept whole, so its softmax is the one-pass
softmax (no online rescaling moves the numerics). The kv heads go in groups whose score block stays in cache
(``SCORE_BYTES`` per thread), each group over all tiles, so its keys and values stay in cache too; each key and
value block is read once per row tile and group. Outputs (``attend_batch``, ``run_plan``) and probabilities for
figures (``pooled_probabilities``: only the heads shown, pooled as they are computed) come from it;
``batch_row_status`` needs no attention (it reads the plan's ``fia_kit.visibility.Visibility``, as the loop does
for the user mask).

Where speed chose among float32 (float64) evaluations of the same formulas, and what it changes:
- scale * Q K^T is the matmul's alpha (``baddbmm``) for dense keys, and paged blocks are multiplied as K q^T:
  the products round like any float32 matmul of another blocking, a few ulp of the score apart.
- the softmax works in base 2: the matmul's alpha is scale * log2(e) (pse is added times log2(e), masked keys get
  -1e12 * log2(e)), and exp(s - m) is exp2 of those scores minus their max: twice as fast as torch's exp here and
  without its 10-fold slowdown on subnormal or zero results; a numerator moves by at most about |s - m| * 1e-7
  relative, the LSE is converted back to natural log (``_exponentials``).
- bfloat16/float16 inputs are converted to the compute dtype once per batch (dense) or block by block right
  before each block's product (paged); scores are never rounded to them (spec 3.6).
- P·V in the values' bfloat16/float16 (``uses_half_pv``), only when asked (``half_precision_pv``,
  ``FIA_KIT_HALF_PV``; default off, so the numbers do not depend on the machine): "on", or "auto" where the CPU
  multiplies that dtype in hardware (AMX or AVX-512 BF16/FP16, ``fia_kit.cpu_features``; elsewhere torch's half
  matmul is ~60x slower than float32). P is rounded to that dtype, as the kernel does, and each value chunk's
  product rounded to it once. Otherwise P stays float32 (spec 3.6 gives the measured error of both).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch

from . import cpu_features, paged, quant
from .layouts import from_canonical
from .lse import no_key_lse
from .masks import MASK_FILL
from .planning import BatchPlan, Plan

TILE_ROWS = 128  # query rows of a tile, at most
TILE_BYTES = 64 * 2**20  # cap on the score rows of one kv head's query heads in a tile (fewer rows past it)
SCORE_BYTES = 2**21  # per torch thread: kv heads of a tile are computed together up to this many bytes of scores
CHUNK_KEYS = 1024  # keys of a paged cache read at once (rounded to whole blocks)
LOG2_E = 1.0 / math.log(2.0)  # the loop's scores are s * LOG2_E, exponentiated with exp2 (``_exponentials``)
LN_2 = math.log(2.0)
HALF_PV_ENV = "FIA_KIT_HALF_PV"  # "off" (0), "auto", "on" (1): the half-precision P·V (``half_precision_pv``)
HALF_PV_DEFAULT = "off"  # float32 P on every machine unless asked: the same numbers everywhere (spec 3.6)
_HALF_PV_WORDS = {"0": "off", "off": "off", "auto": "auto", "1": "on", "on": "on"}

_compute_dtype: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("fia_compute_dtype",
                                                                                   default=None)
_half_pv: contextvars.ContextVar[str | None] = contextvars.ContextVar("fia_half_pv", default=None)


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


@contextlib.contextmanager
def half_precision_pv(mode: str) -> Iterator[None]:
    """Inside the block, P·V of bfloat16/float16 values is multiplied in that dtype: "on" (always), "auto" (where
    the CPU multiplies it in hardware, else float32 P), or "off" (float32 P). Outside any block the environment
    variable ``FIA_KIT_HALF_PV`` (off / 0, auto, on / 1) decides, else ``HALF_PV_DEFAULT`` ("off"): the same
    numbers on every machine unless asked (``uses_half_pv``)."""
    if mode not in ("off", "auto", "on"):
        raise ValueError(f"half_precision_pv takes 'off', 'auto' or 'on', got {mode!r}")
    token = _half_pv.set(mode)
    try:
        yield
    finally:
        _half_pv.reset(token)


def uses_half_pv(problem: Plan, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype P·V is multiplied in when it is not the compute dtype: the values' bfloat16/float16, or None.

    Only for float32 compute on bfloat16/float16 values without quantisation, when asked (``half_precision_pv``:
    "on"; "auto" only where the CPU multiplies that dtype in hardware, ``fia_kit.cpu_features``: AMX or AVX-512
    BF16/FP16; an unknown ``FIA_KIT_HALF_PV`` value counts as the default, "off"). P is then rounded to that dtype (as the kernel does), each value
    chunk's product accumulates in float32 inside the matmul and is rounded to that dtype once, and the chunks'
    products are summed in float32 (spec 3.6 names the choice and its measured error).
    """
    half = problem.value.dtype
    if dtype != torch.float32 or half not in (torch.bfloat16, torch.float16) or problem.quant is not None:
        return None
    if problem.prefix_value is not None and problem.prefix_value.dtype != half:
        return None
    mode = _half_pv.get() or _HALF_PV_WORDS.get(os.environ.get(HALF_PV_ENV, "").strip().lower(), HALF_PV_DEFAULT)
    if mode == "auto":
        capable = problem.value.device.type == "cpu" and cpu_features.multiplies_in_hardware(half)
        return half if capable else None
    return half if mode == "on" else None


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

    ``progress(rows)``, if given, is called as the one tile loop goes with the query rows it finished since the
    last call (kv-head groups count as their share of a tile's rows); over the call they add up to sum(L_q)
    (e.g. to feed a progress bar).
    """
    dtype = resolve_compute_dtype(problem)
    q4 = problem.query
    device = q4.device
    rows_shape = (q4.shape[0], q4.shape[2])
    out4 = torch.empty(*rows_shape[:1], problem.num_heads, rows_shape[1], problem.value_dim, dtype=dtype,
                       device=device)
    lse_dtype = torch.float64 if q4.dtype == torch.float64 else torch.float32
    lse4 = torch.full((rows_shape[0], problem.num_heads, rows_shape[1]), float("inf"), dtype=lse_dtype,
                      device=device)
    status = torch.full(rows_shape, int(RowStatus.PADDING), dtype=torch.int8, device=device)
    staging: dict[str, torch.Tensor] = {}
    for b, plan in enumerate(problem.batches):
        if plan.q_len == 0:
            continue
        rows = slice(plan.q_start, plan.q_start + plan.q_len)
        _, lse_b, status_b = attend_batch(problem, b, plan, dtype, staging, out=out4[plan.q_index, :, rows],
                                          progress=progress)
        if plan.kv_len + problem.prefix_len == 0:
            lse_b = lse_b.fill_(no_key_lse(problem))  # the sentinel of this path (spec 7, 25.1)
        lse4[plan.q_index, :, rows] = lse_b.to(lse_dtype)
        status[plan.q_index, rows] = status_b
    padding = status == RowStatus.PADDING
    if bool(padding.any()):
        out4.masked_fill_(padding.view(rows_shape[0], 1, rows_shape[1], 1), 0.0)
    output_quant = problem.quant.output if problem.quant is not None else None
    out4 = quant.quantize_output(out4, output_quant) if output_quant is not None else out4.to(problem.out_dtype)
    out = from_canonical(out4, problem.layout.out)
    if problem.layout.packed:
        lse = lse4[0].transpose(0, 1).unsqueeze(-1).contiguous()
    else:
        lse = lse4.unsqueeze(-1)
    return ReferenceResult(out, lse, status)


def attend_batch(problem: Plan, b: int, plan: BatchPlan | None = None, dtype: torch.dtype | None = None,
                 staging: dict[str, torch.Tensor] | None = None, out: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: output (N_q, L_q, Dv), LSE (N_q, L_q) and status (L_q,), in ``dtype`` (default: resolved).

    ``staging``: buffers paged blocks are read into, shared between the batches of one call (``BatchKeys``);
    ``out``: (N_q, L_q, Dv) buffer in ``dtype`` the output is written into (a view of the call's output);
    ``progress(rows)``: rows finished, as the loop goes (``run_plan``).
    """
    dtype = resolve_compute_dtype(problem) if dtype is None else dtype
    tiles = _attend_rows(problem, b, dtype, range(problem.num_kv_heads), _row_tiles(problem, b, dtype),
                         staging=staging, out=out, progress=progress)
    return tiles.out, tiles.lse, tiles.status


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
    """Keys (or values) of one batch (prefix first) that the loop uses: keys [lo, hi), for some kv heads N'.

    ``rows`` is head-major (N', hi - lo, D [+ 64 rope] or Dv) holding exactly those keys, or block-major
    (n_blocks, N', block_size, D') holding keys [start, start + n_blocks * block_size) of a paged cache as read,
    of which [lo, hi) are used (so the cache is not copied again into head-major order), or those blocks as a tuple
    of n_blocks (N', block_size, D') views of the cache itself (nothing copied). ``into``: with a tuple of views
    in another float dtype, one (N', block_size, D') buffer in the compute dtype that each block is converted into
    just before its product (``block``): a block at a time stays in cache between the two.
    """

    start: int
    rows: torch.Tensor | tuple[torch.Tensor, ...]
    lo: int
    hi: int
    into: torch.Tensor | None = None

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
            return KeyChunk(self.start, self.rows, lo, hi, self.into)
        return KeyChunk.dense(lo, self.rows[:, lo - self.start:hi - self.start])

    def heads(self, span: slice) -> KeyChunk:
        """The chunk for kv heads ``span`` only (of a head-major chunk holding every kv head)."""
        return KeyChunk(self.start, self.rows[span], self.lo, self.hi)

    def block(self, j: int) -> torch.Tensor:
        """Block j of a block-major chunk, (N', block_size, D') in the compute dtype (valid until the next call)."""
        return self.rows[j] if self.into is None else self.into.copy_(self.rows[j])

    def block_parts(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Of a block-major chunk: (a, e, rows) per block holding used keys: keys [a, e) and their (N', e - a, D')
        (each valid until the next is drawn)."""
        size = self.rows[0].shape[-2]
        for j in range(len(self.rows)):
            k0 = self.start + j * size
            a, e = max(k0, self.lo), min(k0 + size, self.hi)
            if a < e:
                rows = self.block(j)
                yield a, e, rows if (a, e) == (k0, k0 + size) else rows[:, a - k0:e - k0]


class BatchKeys:
    """The keys and values one batch sees, [shared prefix | own keys], in the compute dtype, handed out in chunks.

    Dense keys are one chunk (the prefix concatenated in front): views of the inputs when no conversion is needed,
    else one converted (dequantised) copy per batch. A paged cache is read ``CHUNK_KEYS`` keys (whole blocks) at
    a time through the batch's block_table row, for the kv heads asked for: a float cache already in the compute
    dtype in place, as views of its blocks (``fia_kit.paged.block_views``: the products read the cache, nothing is
    copied), other float caches (bfloat16/float16) as the same views, each block converted into one reused
    block-sized buffer right before its product, so it is still in cache when multiplied (``KeyChunk.block``);
    NZ caches and keys with key_rope are converted chunk by chunk (``fia_kit.paged.read_blocks``). Each block is
    read once per row tile and kv-head group, and the sequence is never gathered whole (a shared prefix is then its
    own chunk). int8/int4 K/V are dequantised per chunk (spec 16.3); v1 full quant keeps them as integers
    (spec 16.2). ``serves``: the kv heads ever asked for (default all); dense float keys of the others are never
    converted. ``value_dtype`` (``uses_half_pv``): float values already in that dtype are handed out as stored.
    """

    def __init__(self, problem: Plan, plan: BatchPlan, dtype: torch.dtype,
                 staging: dict[str, torch.Tensor] | None = None, serves: slice = slice(None),
                 value_dtype: torch.dtype | None = None) -> None:
        self.problem, self.plan, self.dtype = problem, plan, dtype
        self.value_dtype = dtype if value_dtype is None else value_dtype
        self.serves = slice(*serves.indices(problem.num_kv_heads)[:2])
        self.staging = {} if staging is None else staging  # reused buffers, by name (``_buffer``)
        self.key_dq, self.value_dq = (problem.quant.key, problem.quant.value) if problem.quant is not None \
            else (None, None)
        self.block_ids = problem.block_table[plan.kv_index] if problem.paged else None
        self.prefix_len = problem.prefix_len if problem.prefix_key is not None else 0
        self.num_keys = self.prefix_len + plan.kv_len
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        if self.prefix_len:
            p = self.prefix_len
            keys.append(self._served_floats(problem.prefix_key[0, :, :p], self.key_dq, plan.kv_start))
            values.append(self._served_floats(problem.prefix_value[0, :, :p], self.value_dq, plan.kv_start,
                                              self.value_dtype))
        if not problem.paged:
            span = slice(plan.kv_start, plan.kv_start + plan.kv_len)
            key = self._served_floats(problem.key[plan.kv_index, :, span], self.key_dq, plan.kv_start)
            if problem.key_rope is not None:
                key = torch.cat([key, problem.key_rope[plan.kv_index, self.serves, span].to(dtype)], dim=-1)
            keys.append(key)
            values.append(self._served_floats(problem.value[plan.kv_index, :, span], self.value_dq, plan.kv_start,
                                              self.value_dtype))
        # the dense part: one chunk of keys [0, P) (paged) or [0, P + L_kv) (dense), the kv heads served
        self._dense = [] if not keys else [
            (KeyChunk.dense(0, torch.cat(keys, 1) if len(keys) > 1 else keys[0]),
             KeyChunk.dense(0, torch.cat(values, 1) if len(values) > 1 else values[0]))]

    def keys(self, start: int, stop: int, heads: slice) -> Iterator[KeyChunk]:
        """Key chunks covering keys [start, stop) exactly, in order, for kv heads ``heads``."""
        return self._chunks(start, stop, 0, heads)

    def values(self, start: int, stop: int, heads: slice) -> Iterator[KeyChunk]:
        """Value chunks covering keys [start, stop) exactly, in order, for kv heads ``heads``."""
        return self._chunks(start, stop, 1, heads)

    def _chunks(self, start: int, stop: int, which: int, heads: slice) -> Iterator[KeyChunk]:
        start_head = self.serves.start
        served = slice(heads.start - start_head, heads.stop - start_head)
        pieces = (pair[which].heads(served) for pair in self._dense)
        if self.problem.paged:
            pieces = itertools.chain(pieces, self._paged(start, stop, which, heads))
        for chunk in pieces:
            clipped = chunk.clip(start, stop)
            if clipped is not None:
                yield clipped

    def _paged(self, start: int, stop: int, which: int, heads: slice) -> Iterator[KeyChunk]:
        """Own keys (which=0) or values (1) of the blocks holding keys [start, stop), CHUNK_KEYS at a time.

        Float caches stay block-major (``KeyChunk``: views of the cache when no conversion is needed); a block
        that L_kv cuts, and quantised caches (their scales are per token), are made head-major and cut at L_kv, so
        no key beyond L_kv is ever multiplied.
        """
        plan, bs = self.plan, self.problem.block_size
        first, last = max(0, start - self.prefix_len), min(plan.kv_len, stop - self.prefix_len)
        step, dq = max(1, CHUNK_KEYS // bs), (self.key_dq, self.value_dq)[which]
        full_blocks = plan.kv_len // bs
        for i0 in range(first // bs, -(-last // bs), step):
            i1 = min(i0 + step, -(-last // bs))
            ends = [i1] if dq is not None or i1 <= full_blocks or i1 - 1 == i0 else [i1 - 1, i1]
            for j0, j1 in zip([i0, *ends[:-1]], ends, strict=True):
                yield self._read(which, j0, j1, dq is None and j1 <= full_blocks, heads)

    def _read(self, which: int, i0: int, i1: int, blocked: bool, heads: slice) -> KeyChunk:
        """Blocks [i0, i1) of this batch's block_table row, kv heads ``heads``: keys (which=0, with key_rope) or
        values (1)."""
        problem, plan, bs = self.problem, self.plan, self.problem.block_size
        ids, first = self.block_ids[i0:i1], self.prefix_len + i0 * bs
        count = min(plan.kv_len, i1 * bs) - i0 * bs
        caches = [problem.value] if which else [problem.key] + ([problem.key_rope] if problem.key_rope is not None
                                                                 else [])
        n_kv = problem.num_kv_heads
        if blocked:
            views = paged.block_views(caches[0], ids, n_kv, heads) if len(caches) == 1 else None
            if views is not None and caches[0].dtype == (self.value_dtype if which else self.dtype):  # in place
                return KeyChunk(first, views, first, first + count)
            if views is not None:  # converted a block at a time, right before its product (``KeyChunk.block``)
                into = self._buffer(f"block{which}", views[0].shape, self.dtype)
                return KeyChunk(first, views, first, first + count, into)
            dims = [paged.cache_head_dim(cache, n_kv) for cache in caches]
            n_heads = len(range(n_kv)[heads])
            blocks = self._buffer(f"blocks{which}", (i1 - i0, n_heads, bs, sum(dims)), self.dtype)
            for cache, d0, d in zip(caches, [0, *itertools.accumulate(dims)], dims, strict=False):
                paged.read_blocks(cache, ids, n_kv, blocks[..., d0:d0 + d], heads)
            return KeyChunk(first, blocks, first, first + count)
        parts = [paged.gather_blocks(cache, ids, n_kv, self._buffer(f"gather{2 * which + k}",
                                                                   (i1 - i0, *cache.shape[1:]), cache.dtype))
                 for k, cache in enumerate(caches)]
        parts = [paged.head_major(part)[:, :count] for part in parts]
        parts[0] = self._floats(parts[0], (self.key_dq, self.value_dq)[which], plan.kv_start + i0 * bs,
                                self.block_ids[i0:])
        rows = torch.cat([part.to(self.dtype) for part in parts], dim=-1) if len(parts) > 1 else parts[0]
        return KeyChunk.dense(first, rows[heads])

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous (shape) tensor in the buffer ``name``, reused from chunk to chunk and batch to batch."""
        size = math.prod(shape)
        buffer = self.staging.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self.staging[name] = torch.empty(max(size, 0 if buffer is None else buffer.numel()),
                                                      dtype=dtype, device=self.problem.query.device)
        return buffer[:size].view(shape)

    def _served_floats(self, rows: torch.Tensor, dq: quant.KVDequant | None, start: int,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """``_floats`` of the served kv heads of (N_kv, n, D) rows: sliced before converting, unless dequantised
        (the scales cover every head); ``dtype``: of the unquantised rows (default: the compute dtype)."""
        if dq is None:
            return rows[self.serves].to(self.dtype if dtype is None else dtype)
        return self._floats(rows, dq, start)[self.serves]

    def _floats(self, rows: torch.Tensor, dq: quant.KVDequant | None, start: int,
                block_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(N_kv, n, D) rows in the compute dtype; ``start``/``block_ids``: where they lie, for per-token scales."""
        if dq is None:
            return rows.to(self.dtype)
        ids = self.block_ids if block_ids is None else block_ids
        return quant.dequantize_kv(rows, dq, self.plan.kv_index, start, ids, self.dtype)


# ---------------------------------------------------------------------------------------------------- scores

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


@dataclass(frozen=True)
class TileMasks:
    """What hides keys of a tile of rows over keys [c0, c1): ``hidden`` (rows, c1 - c0) bool, True where
    atten_mask hides a key (None without a user mask), and the strip of columns the band cuts (None: none)."""

    hidden: torch.Tensor | None
    outside: OutsideStrip | None

    @staticmethod
    def of(problem: Plan, b: int, r0: int, r1: int, c0: int, c1: int, row_index: torch.Tensor | None) -> TileMasks:
        """The masks of batch b's rows [r0, r1), or of the sorted batch-local rows ``row_index`` (r0 = the first,
        r1 = the last + 1), over keys [c0, c1). For causal modes the strip is the diagonal block."""
        device, band = problem.query.device, problem.batches[b].band
        hidden = problem.visibility.hidden_tile(b, r0, r1, c0, c1)
        if hidden is not None:
            hidden = (hidden if row_index is None else hidden[row_index - r0]).to(device)
        if row_index is not None:
            outside = band.outside_rows(row_index, c0, c1)
            return TileMasks(hidden, None if outside is None else OutsideStrip(0, outside))
        cut = band.cut_columns(r0, r1, c0, c1)
        strip = None if cut is None else OutsideStrip(cut[0] - c0, band.outside_tile(r0, r1, cut[0], cut[1], device))
        return TileMasks(hidden, strip)

    def apply(self, scores: torch.Tensor) -> None:
        """Write MASK_FILL (in the loop's base-2 units, times log2(e)) where atten_mask hides a key, then -inf
        outside the band, into scores (..., rows, cols)."""
        if self.hidden is not None:
            scores.masked_fill_(self.hidden, MASK_FILL * LOG2_E)
        if self.outside is not None:
            strip = self.outside
            scores[..., strip.start:strip.start + strip.mask.shape[1]].masked_fill_(strip.mask, float("-inf"))

    def any_visible(self) -> torch.Tensor | None:
        """(rows,) bool: some key of the tile is neither hidden nor outside the band; None without a user mask."""
        if self.hidden is None:
            return None
        if self.outside is None:  # no copy: a row sees a key unless its smallest hidden flag is 1 (uint8 reduction)
            return self.hidden.view(torch.uint8).amin(-1) == 0
        visible, strip = ~self.hidden, self.outside
        visible[:, strip.start:strip.start + strip.mask.shape[1]] &= ~strip.mask
        return visible.any(-1)


def _tile_scores(problem: Plan, b: int, q: torch.Tensor, chunks: Iterable[KeyChunk], c0: int, c1: int,
                 heads: slice, r0: int, row_index: torch.Tensor | None, buffer: torch.Tensor) -> torch.Tensor:
    """(N', G, rows, c1 - c0) (scale * q K^T (+ pse)) * log2(e) of a tile's rows over keys [c0, c1), unmasked.

    q: (N', G, rows, D) the tile's queries of N' kv heads; chunks: their keys, covering [c0, c1) in order; heads:
    the query heads (a slice of N_q) q holds; rows are batch-local [r0, r0 + rows), or ``row_index``.
    The scale multiplies the float32 (float64) products as they are copied into place, as in spec 3.5, and so does
    log2(e): the loop works in base-2 units (``_exponentials``), s * log2(e). The scores are written into
    ``buffer`` (flat, at least N' * G * rows * (c1 - c0) elements, reused from tile to tile: a fresh megabyte-sized
    tensor per tile costs its page faults every time).
    """
    n_kv, group, rows, _ = q.shape
    q2 = q.reshape(n_kv, group * rows, -1)
    scale = _score_scale(problem) * LOG2_E
    scores = buffer[:n_kv * group * rows * (c1 - c0)].view(n_kv, group * rows, c1 - c0)
    for chunk in chunks:
        if not chunk.blocked and (chunk.lo, chunk.hi) == (c0, c1):  # one product over the whole tile
            scores.baddbmm_(q2, chunk.rows.transpose(1, 2), beta=0, alpha=scale)
            break
        target = scores[..., chunk.lo - c0:chunk.hi - c0]
        if chunk.blocked:
            _block_scores(q2, chunk, scale, target)
        else:
            torch.mul(torch.bmm(q2, chunk.rows.transpose(1, 2)), scale, out=target)
    scores = scores.view(n_kv, group, rows, c1 - c0)
    if problem.pse is not None:
        r1 = r0 + rows if row_index is None else int(row_index[-1]) + 1
        pse = pse_tile(problem, b, r0, r1, c0, c1)[heads]
        scores.add_((pse if row_index is None else pse[:, row_index - r0]).to(device=q.device, dtype=q.dtype).view(
            n_kv, group, rows, c1 - c0), alpha=LOG2_E)
    return scores


def _block_scores(q2: torch.Tensor, chunk: KeyChunk, scale: float, target: torch.Tensor) -> None:
    """target (N', R, hi - lo) = scale * q2 (N', R, D) times the block-major chunk's keys [lo, hi) transposed.

    One product per block, keys times queries (K_blk q^T: the block is the large operand, which reads it at the
    memory's pace when R is small, as in decode), into a block-major buffer, then scaled into place.
    """
    blocks, qt = chunk.rows, q2.transpose(1, 2)
    n, size = len(blocks), blocks[0].shape[-2]
    if isinstance(blocks, torch.Tensor):
        per_block = torch.matmul(blocks, qt.unsqueeze(0))  # (n, N', bs, R)
    else:
        per_block = q2.new_empty(n, q2.shape[0], size, q2.shape[1])
        for j in range(n):
            torch.bmm(chunk.block(j), qt, out=per_block[j])
    keys = per_block.permute(1, 3, 0, 2)  # (N', R, n, bs)
    if (chunk.lo, chunk.hi) == (chunk.start, chunk.start + n * size):
        torch.mul(keys, scale, out=target.unflatten(-1, (n, size)))
    else:
        torch.mul(keys.flatten(2)[..., chunk.lo - chunk.start:chunk.hi - chunk.start], scale, out=target)


def _row_status(band_counts: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """(rows,) int8 RowStatus from the band key counts and, with a user mask, whether any key is visible."""
    status = torch.full_like(band_counts, int(RowStatus.COMPUTED), dtype=torch.int8)
    if visible is not None:
        status[~visible] = RowStatus.FULLY_MASKED
    status[band_counts == 0] = RowStatus.OUT_OF_BAND
    return status


# ---------------------------------------------------------------------------------------------------- softmax

def _exponentials(scores: torch.Tensor, row_max: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """The one-pass softmax's numerators, in place, in base 2: scores (..., keys) holding t = s * log2(e) ->
    exp2(t - m) = exp(s - s_max), m the row max of t (0 where it is not finite: a row of -inf gives 0s). Writes m
    and the row sums sum_j exp2(t_j - m) into row_max and total (..., 1). The sink is not in m (spec 13).

    Base 2 because torch's exp2 is about twice as fast as its exp here and, unlike exp, does not slow down 10-fold
    where the result is subnormal or 0 (masked keys at -1e12, peaked rows); log2(e) rides on the matmul's alpha, so
    it costs no pass. Numerically: the scores carry one more rounding of a constant factor, so a numerator is within
    about |s - s_max| * 1e-7 (relative) of exp(s - s_max): 1e-7 for the probabilities that matter, masked keys
    exactly 0, a NaN stays NaN.
    """
    torch.amax(scores, -1, keepdim=True, out=row_max)
    row_max.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    scores.sub_(row_max).exp2_()
    torch.sum(scores, -1, keepdim=True, out=total)
    return scores


def _weighted_values(probs: torch.Tensor, values: Iterable[KeyChunk], c0: int, out: torch.Tensor,
                     half: torch.dtype | None = None) -> None:
    """out (N', R, Dv) = probs (N', R, keys over [c0, ...)) times the value rows, chunk by chunk and, for a
    block-major chunk, block by block (no copy of P or V).

    ``half`` (``uses_half_pv``): P is rounded to it once and each part is multiplied in it (float32 accumulation
    inside the matmul, the part's product rounded to ``half``), the parts summed into out in float32.
    """
    first = True
    p = probs if half is None else probs.to(half)
    for chunk in values:
        parts = chunk.block_parts() if chunk.blocked else [(chunk.lo, chunk.hi, chunk.rows)]
        for a, e, rows in parts:
            if half is not None:
                product = torch.bmm(p[..., a - c0:e - c0], rows.to(half))
                if first:
                    out.copy_(product)
                else:
                    out.add_(product)
            elif first:
                torch.bmm(p[..., a - c0:e - c0], rows, out=out)
            else:
                out.baddbmm_(p[..., a - c0:e - c0], rows)
            first = False


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


def _row_tiles(problem: Plan, b: int, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Contiguous row tiles [r0, r1) covering batch b's L_q rows, sized so the score rows of one kv head's G query
    heads stay under TILE_BYTES (TILE_ROWS rows, fewer for long key ranges, 16 at least)."""
    plan = problem.batches[b]
    num_keys = (problem.prefix_len if problem.prefix_key is not None else 0) + plan.kv_len
    per_row = max(1, problem.group_size * num_keys * torch.finfo(dtype).bits // 8)
    step = max(16, min(TILE_ROWS, TILE_BYTES // per_row))
    return [(r0, min(plan.q_len, r0 + step)) for r0 in range(0, plan.q_len, step)]


def _head_groups(n_kv: int, head_bytes: int) -> list[slice]:
    """kv heads [0, n_kv) in consecutive groups whose score blocks (head_bytes each) fill SCORE_BYTES per torch
    thread (one head at least): a block small enough to stay in the threads' caches through the softmax's passes,
    large enough that each thread gets a share of every pass."""
    step = max(1, min(n_kv, SCORE_BYTES * torch.get_num_threads() // max(1, head_bytes)))
    return [slice(h0, min(n_kv, h0 + step)) for h0 in range(0, n_kv, step)]


def _head_span(kv_heads: Iterable[int]) -> slice:
    heads = sorted(set(kv_heads))
    if not heads or heads != list(range(heads[0], heads[-1] + 1)):
        raise ValueError(f"kv heads must be a non-empty contiguous range, got {heads}")
    return slice(heads[0], heads[-1] + 1)


@dataclass(frozen=True)
class _Tile:
    """One row tile of the loop: its rows (``where``: a slice, or ``index``, a sorted tensor of batch-local rows;
    r0 = the first), the keys its band reaches [c0, c1) and its masks."""

    where: slice | torch.Tensor
    index: torch.Tensor | None
    r0: int
    rows: int
    c0: int
    c1: int
    masks: TileMasks


def _attend_rows(problem: Plan, b: int, dtype: torch.dtype, kv_heads: Iterable[int],
                 tiles: Iterable[tuple[int, int] | torch.Tensor],
                 observe: Callable[[slice, slice | torch.Tensor, int, torch.Tensor], None] | None = None,
                 values: bool = True, staging: dict[str, torch.Tensor] | None = None,
                 out: torch.Tensor | None = None, progress: Callable[[int], None] | None = None) -> RowTiles:
    """THE tile loop: attention of batch b for the query heads of ``kv_heads`` over the given row tiles.

    Each row tile, rows [r0, r1) or a sorted tensor of rows, reaches keys [c0, c1) of its band; its masks
    (``TileMasks``) and row status are found once. Then, kv-head group by kv-head group (``_head_groups``: score
    blocks of about SCORE_BYTES, which stay in cache through the softmax's passes, while the group's keys and
    values stay in cache from tile to tile), tile by tile: the masked scores of the whole rows, read chunk by
    chunk (``BatchKeys``: views for dense K/V, a few blocks at a time for a paged cache);
    ``observe(heads, rows, c0, scores (N'', rows, c1 - c0))`` (the masked scores in base 2, s * log2(e); heads: a
    slice of the loop's N' query heads; rows:
    the slice or the tensor) may read them; then the exponentials of the whole rows (the one-pass softmax: no
    rescaling) and P V, reading the value chunks once. The LSE, the sink and the division by the row sums follow
    once for the batch. ``values=False`` skips P V (only LSE, status and the softmax's offset and total are
    wanted). Rows the op writes as 0 (out of band; fully masked with inner_precise 2/3, "row invalid
    correction", spec 7) get out 0, lse +inf and total 0. ``out``: (N', L_q, Dv) buffer to write the output into
    (any contents; default: a new one). ``progress(rows)``: after each tile of each group, the rows finished since
    the last report, a group counting n / N_kv' of a tile's rows.
    """
    plan = problem.batches[b]
    span = _head_span(kv_heads)
    group = problem.group_size
    q_heads = slice(span.start * group, span.stop * group)
    n_kv, n_q = span.stop - span.start, (span.stop - span.start) * group
    device, q_len, dv = problem.query.device, plan.q_len, problem.value_dim if values else 0
    out = torch.empty(n_q, q_len, dv, dtype=dtype, device=device) if out is None else out
    status = torch.full((q_len,), int(RowStatus.OUT_OF_BAND), dtype=torch.int8, device=device)
    offsets = torch.zeros((n_q, q_len), dtype=dtype, device=device)
    totals = torch.zeros((n_q, q_len), dtype=dtype, device=device)
    half = uses_half_pv(problem, dtype) if values else None
    keys = BatchKeys(problem, plan, dtype, staging, span, half)
    found = []
    for tile in tiles:
        index = tile.to(device) if isinstance(tile, torch.Tensor) else None
        r0, r1 = (int(tile[0]), int(tile[-1]) + 1) if index is not None else tile
        c0, c1 = plan.band.key_range(r0, r1, keys.num_keys)
        if c1 <= c0:
            continue
        where = index if index is not None else slice(r0, r1)
        found.append(_Tile(where, index, r0, r1 - r0 if index is None else len(index), c0, c1,
                           TileMasks.of(problem, b, r0, r1, c0, c1, index)))
        counts = plan.band.key_counts(r0, r1, keys.num_keys).to(device)
        status[where] = _row_status(counts if index is None else counts[index - r0], found[-1].masks.any_visible())
    qg = batch_queries(problem, plan, dtype, q_heads).view(n_kv, group, q_len, -1) if found else None
    head_rows, reported = 0, 0  # progress: tile rows times kv heads done, and rows reported
    full = problem.quant.full if problem.quant is not None else None
    widest = max((t.rows * (t.c1 - t.c0) for t in found), default=0)
    groups = _head_groups(n_kv, group * widest * torch.finfo(dtype).bits // 8)
    most = max((g.stop - g.start for g in groups), default=0) * group
    work = torch.empty(most * widest, dtype=dtype, device=device)  # every tile's scores, in turn
    weighted = torch.empty(most * max((t.rows for t in found), default=0) * dv, dtype=dtype, device=device)
    for kv in groups:
        heads, n = slice(span.start + kv.start, span.start + kv.stop), kv.stop - kv.start
        q_group = slice(kv.start * group, kv.stop * group)
        for t in found:
            cols = t.c1 - t.c0
            scores = _tile_scores(problem, b, qg[kv][:, :, t.where], keys.keys(t.c0, t.c1, heads), t.c0, t.c1,
                                  slice(heads.start * group, heads.stop * group), t.r0, t.index, work)
            t.masks.apply(scores)
            if observe is not None:
                observe(q_group, t.where, t.c0, scores.view(-1, t.rows, cols))
            row_max = scores.new_empty(n, group, t.rows, 1)
            total = torch.empty_like(row_max)
            probs = _exponentials(scores, row_max, total)
            offsets[q_group, t.where] = row_max.view(-1, t.rows) * LN_2  # the row max in natural units
            totals[q_group, t.where] = total.view(-1, t.rows)
            if values:
                pv = probs if full is None else quant.quantize_probs(probs, full)  # P_i8 (spec 16.2)
                pv_out = weighted[:n * group * t.rows * dv].view(n, group * t.rows, dv)
                _weighted_values(pv.view(n, group * t.rows, cols), keys.values(t.c0, t.c1, heads), t.c0, pv_out,
                                 half)
                out[q_group, t.where] = pv_out.view(-1, t.rows, dv)
            if progress is not None:
                head_rows += t.rows * n
                if head_rows // n_kv > reported:
                    progress(head_rows // n_kv - reported)
                    reported = head_rows // n_kv
    return _finish_rows(problem, RowTiles(out, offsets, status, offsets, totals), q_heads, values)


def _finish_rows(problem: Plan, tiles: RowTiles, q_heads: slice, values: bool) -> RowTiles:
    """From the row max m (``offset``) and the row sums of exp(s - m) (``total``) of every row: LSE = m + ln(sum)
    (without the sink, [inferred], spec 8), the sink's exp(sink - m) added to the sums (spec 13), out divided
    by them (times dequant_scale2 with v1 full quant, spec 16.2), and the rows the op writes as 0 (out of band;
    fully masked with inner_precise 2/3, spec 7) set to out 0, lse +inf, total 0."""
    offsets, totals, out = tiles.offset, tiles.total, tiles.out
    lse = offsets + torch.log(totals)
    if problem.learnable_sink is not None:
        sink = problem.learnable_sink[q_heads].to(device=offsets.device, dtype=offsets.dtype)
        totals += torch.exp(sink.view(-1, 1) - offsets)
    invalid = tiles.status == RowStatus.OUT_OF_BAND
    if problem.inner_precise & 2:
        invalid = invalid | (tiles.status == RowStatus.FULLY_MASKED)  # "row invalid correction" (spec 7)
    if values:
        full = problem.quant.full if problem.quant is not None else None
        if full is not None:
            out.mul_(full.dequant_scale2)
        out.div_(torch.where(totals > 0, totals, torch.ones_like(totals)).unsqueeze(-1))
    if bool(invalid.any()):
        out.masked_fill_(invalid.view(1, -1, 1), 0.0)
        lse.masked_fill_(invalid, float("inf"))
        totals.masked_fill_(invalid, 0.0)
    return RowTiles(out, lse, tiles.status, offsets, totals)


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
        visible = TileMasks.of(problem, b, r0, r1, c0, c1, None).any_visible()
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
        _row_tiles(problem, b, dtype)
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

    def observe(heads: slice, rows: slice | torch.Tensor, c0: int, scores: torch.Tensor) -> None:
        first, cols = c0 // cs, scores.shape[-1]
        blocks = -(-(c0 + cols) // cs) - first
        if cs > 1:
            before, after = c0 - first * cs, (first + blocks) * cs - c0 - cols
            if before or after:  # whole blocks already: no copy
                scores = torch.nn.functional.pad(scores, (before, after), value=float("-inf"))
            scores = scores.view(scores.shape[0], scores.shape[1], blocks, cs).amax(-1)
        if isinstance(rows, slice):
            target = col_max[heads, rows, first:first + blocks]
            torch.maximum(target, scores, out=target)
        else:
            slots = rows // rs if sampled else rows
            col_max[heads, slots, first:first + blocks] = torch.maximum(col_max[heads, slots, first:first + blocks],
                                                                        scores)

    found = _attend_rows(problem, b, dtype, [kv], tiles, observe, values=False)
    offset, total = (found.offset[:, ::rs], found.total[:, ::rs]) if sampled else (found.offset, found.total)
    denominator = torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    probs = torch.exp2(col_max - offset.unsqueeze(-1) * LOG2_E).div_(denominator)  # col_max: base-2 scores
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
