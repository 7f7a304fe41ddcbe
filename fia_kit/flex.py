"""A second, independent FIA: the op computed through ``torch.nn.attention.flex_attention`` (CPU or CUDA).

    out, lse = fia_kit.flex.npu_fused_infer_attention_score(query, key, value, num_heads=8, ...)   # v1
    out, lse = fia_kit.flex.npu_fused_infer_attention_score_v2(query, key, value, num_query_heads=8, ...)
    out, lse = fia_kit.flex.run_plan(fia_kit.plan("v1", query, key, value, ...), mode="eager")

It shares only the ``Plan`` (parsing, validation, resolved lengths and offsets) with the reference, never its
numerics or its visibility code: which keys a row sees is written here from the spec's formulas, as flex
``mask_mod``/``score_mod`` functions, so a wrong band in either implementation shows up as a difference.

How each feature maps onto flex (spec sections in brackets):
- batches are padded to one (B, N, L, D) problem; ``mask_mod`` hides rows past L_q[b], keys past P + L_kv[b] and
  keys outside the sparse-mode band  lo[b] <= j - i <= hi[b]  (6.3, 6.5; right-down offset P + L_kv - L_q);
- the user mask (True = masked, 6.1) replaces the score by -1e12 in ``score_mod`` for inner_precise 0/1, so a row
  it hides fully is the uniform mean over its band, and is hidden in ``mask_mod`` for inner_precise 2/3, so such a
  row is 0 (7);
- pse_shift is added in ``score_mod`` after scaling (3.4, 9); GQA through ``enable_gqa`` (query head n reads kv head
  n // G, 10); MLA rope by concatenating the rope dims to Q and K (12); the shared prefix by putting its keys first
  (14); a paged cache by gathering every block of ``block_table`` (11); left padding by the plan's row/key starts and
  mask origins (15);
- the learnable sink joins the softmax denominator only: O *= exp(lse - logaddexp(lse, sink[n])); the LSE returned
  excludes it (8, 13);
- rows with no key (outside the band, past L_q, no keys at all) are 0 with LSE +inf (7 item 3); a batch without
  keys gets its route's LSE sentinel (``fia_kit.lse.no_key_lse``: -3.40282e38 on "legacy IFA" shaped decode, 22 row 20).

Not supported (``FlexUnsupported``, never a silent fallback): every quantised path (int8/int4 K/V, int8 full
quantisation, int8 output, MLA full quantisation). The tree mask (sparse_mode 9) is read from the caller's raw
mask with spec 25.1's rule and applied like a user mask.

Compilation: ``mode="eager"`` runs flex unfused (materialises the scores; fast enough for small calls),
``mode="compiled"`` runs ``torch.compile(flex_attention)``, compiled once per shape and cached by dynamo:
``dynamic=True`` on CUDA; static shapes on CPU, where torch 2.13's dynamic CPU kernel fails to build once a mask
or score function reads a tensor (user masks, pse: a C++ compile error or "unbacked_bindings"), so the rows and keys
are padded up to a multiple of ``COMPILED_BUCKET`` instead: lengths that change within a bucket (an explorer's
edits, a decode loop) reuse the compiled kernel. ``"auto"`` compiles on CUDA and for large CPU calls. ``with flex_mode("eager"):`` sets the mode for a block. Compiled flex on CPU has no
LSE in torch 2.13, so calls needing it (the LSE output, learnable sinks) run eager there.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.attention.flex_attention as _flex_module
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention

from .call import parse_call
from .layouts import from_canonical
from .lse import no_key_lse
from .planning import Plan, build_plan

__all__ = [
    "FlexUnsupported",
    "flex_mode",
    "current_mode",
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
    "run_plan",
]

Mode = Literal["auto", "eager", "compiled"]
MODES = ("auto", "eager", "compiled")
TREE_MODE = 9
MASK_FILL = -1e12  # what the kernel writes over masked scores (spec 3.5, 7)
UNBOUNDED = 1 << 40  # a band bound no |j - i| reaches
COMPILE_SCORES = 1 << 26  # "auto" compiles a CPU call from this many scores (B * N_q * L_q * keys) on
# Compiled flex pads the rows and the key axis up to a multiple of this: compiled shapes then repeat, and torch
# 2.13's compiled CPU kernel is not handed a ragged last key block, which it gets
# wrong on some CPUs (seen on an AVX2 Zen 2 with head dim 8/16 and 8 keys past a multiple of 16: rows of zeros
# or NaN; eager flex and padded keys are right). Padded keys are hidden by the mask like any key past P + L_kv.
COMPILED_BUCKET = 128

_mode: contextvars.ContextVar[Mode] = contextvars.ContextVar("fia_flex_mode", default="auto")


class FlexUnsupported(NotImplementedError):
    """The call uses a feature the flex backend cannot express ("not supported by the flex backend: ...")."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(f"not supported by the flex backend: {feature}")


@contextlib.contextmanager
def flex_mode(mode: Mode) -> Iterator[None]:
    """Run flex ``"eager"``, ``"compiled"`` or ``"auto"`` (the default) inside the block."""
    token = _mode.set(_check_mode(mode))
    try:
        yield
    finally:
        _mode.reset(token)


def current_mode() -> Mode:
    """The mode ``flex_mode`` sets here ("auto" outside any)."""
    return _mode.get()


def npu_fused_infer_attention_score(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score (v1) computed by flex_attention; keywords as the reference's.

    Returns (attention_out in the output layout and the op's dtype, softmax_lse float32 (B, N_q, S_q, 1) /
    (T, N_q, 1), or an empty (0,) tensor unless softmax_lse_flag). Raises FIAArgumentError for bad arguments,
    FlexUnsupported for features flex cannot express.
    """
    return run_plan(build_plan(parse_call("v1", query, key, value, kwargs)))


def npu_fused_infer_attention_score_v2(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_fused_infer_attention_score_v2 computed by flex_attention; keywords as the reference's."""
    return run_plan(build_plan(parse_call("v2", query, key, value, kwargs)))


def run_plan(plan: Plan, *, mode: Mode | None = None,
             compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention_out, softmax_lse) of a validated plan, as the op returns them.

    Args:
        plan: from ``fia_kit.plan(...)``.
        mode: "eager", "compiled" or "auto" (default: the ``flex_mode`` in force, "auto").
        compute_dtype: dtype flex computes in (default float32, float64 for float64 inputs, as the op's
            high-precision path); e.g. torch.bfloat16 on CUDA to time flex on the inputs' own dtype.
    """
    _decline(plan)
    dtype = compute_dtype or (torch.float64 if plan.query.dtype == torch.float64 else torch.float32)
    chosen = _resolve_mode(mode, plan)
    out4, lse4 = _Padded.of(plan, dtype, COMPILED_BUCKET if chosen == "compiled" else 1).attend(chosen)
    out = from_canonical(out4.to(plan.out_dtype), plan.layout.out)
    if not plan.return_lse:
        return out, torch.empty(0, dtype=torch.float32, device=out.device)
    lse = lse4[0].transpose(0, 1).unsqueeze(-1).contiguous() if plan.layout.packed else lse4.unsqueeze(-1)
    return out, lse


# ------------------------------------------------------------------------------------------------- declines

def _decline(plan: Plan) -> None:
    """FlexUnsupported for what flex cannot express; the plan has already validated everything else."""
    q = plan.quant
    if q is not None:
        for feature, parts in (("int8 full quantisation (spec 16.2)", (q.full,)),
                               ("MLA full quantisation with dequant_scale_query (spec 16.4)", (q.query_scale,)),
                               ("int8/int4 K/V dequantisation (antiquant, spec 16.3)", (q.key, q.value)),
                               ("int8 output quantisation (spec 16.1)", (q.output,))):
            if any(part is not None for part in parts):
                raise FlexUnsupported(feature)
    if not plan.query.is_floating_point() or not plan.key.is_floating_point():
        raise FlexUnsupported(f"integer inputs ({plan.query.dtype} query, {plan.key.dtype} key)")
    if plan.sparse_mode not in (0, 1, 2, 3, 4, TREE_MODE):
        raise FlexUnsupported(f"sparse_mode {plan.sparse_mode}")


def _check_mode(mode: object) -> Mode:
    if mode not in MODES:
        raise ValueError(f"flex mode must be one of {MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _needs_lse(plan: Plan) -> bool:
    return plan.return_lse or plan.learnable_sink is not None


def _resolve_mode(mode: Mode | None, plan: Plan) -> Literal["eager", "compiled"]:
    chosen = _check_mode(mode if mode is not None else _mode.get())
    cpu = plan.query.device.type == "cpu"
    if chosen == "compiled" and cpu and _needs_lse(plan):
        raise FlexUnsupported("compiled flex on CPU with the LSE output or learnable_sink (torch 2.13's CPU "
                              "flex kernel returns no LSE); use mode='eager'")
    if chosen != "auto":
        return chosen
    if not cpu:
        return "compiled"
    rows = max(plan.q_len, default=0) if plan.layout.packed else plan.query.shape[2]
    keys = plan.prefix_len + (max(plan.kv_len, default=0) if plan.layout.packed or plan.paged
                              else plan.key.shape[2])
    big = len(plan.batches) * plan.num_heads * rows * keys >= COMPILE_SCORES
    return "compiled" if big and not _needs_lse(plan) else "eager"


@contextlib.contextmanager
def _direct(eager: bool) -> Iterator[None]:
    """Eager flex runs its higher-order op directly, as its debug switch does, instead of through dynamo's "eager"
    backend, which re-traces every new shape (about a second each); forward only, which is all FIA needs."""
    saved = _flex_module._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    _flex_module._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = eager or saved
    try:
        yield
    finally:
        _flex_module._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = saved


@functools.cache
def _compiled(device_type: str):
    """torch.compile(flex_attention), one per device type; dynamo caches each compiled shape."""
    return torch.compile(flex_attention, dynamic=device_type != "cpu")


# --------------------------------------------------------------------------------------- the padded problem

def _int(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _row_bucket(rows: int, bucket: int) -> int:
    """Rows padded for a compiled shape: a multiple of ``bucket``, or below it the next power of two (a decode
    step's single row stays one row)."""
    return min(_round_up(rows, bucket), 1 << max(0, rows - 1).bit_length())


class _Padded:
    """One flex problem for the whole plan: batches padded to (B, N, L, D), keys prefix first.

    Attributes:
        query: (B, N_q, L, Dq [+64]); key (B, N_kv, K, Dq [+64]); value (B, N_kv, K, Dv), in the compute dtype.
        q_len, n_keys, lo, hi: (B,) int64: valid rows, valid keys (P + L_kv) and the band lo <= j - i <= hi.
        user: (B, L, K) bool, True = hidden by atten_mask, or None. pse: (B|1, N_q, L, K) or None.
    """

    def __init__(self, plan: Plan, query, key, value, q_len, n_keys, lo, hi, user, pse) -> None:
        self.plan, self.query, self.key, self.value = plan, query, key, value
        self.q_len, self.n_keys, self.lo, self.hi, self.user, self.pse = q_len, n_keys, lo, hi, user, pse

    @classmethod
    def of(cls, plan: Plan, dtype: torch.dtype, bucket: int) -> _Padded:
        """Pad ``plan``'s batches into one problem; its rows (``_row_bucket``) and key axis (a multiple) round up
        to ``bucket``."""
        device = plan.query.device
        batches = plan.batches
        packed = plan.layout.packed
        rows = _row_bucket(max((p.q_len for p in batches), default=0) if packed else plan.query.shape[2], bucket)
        q_index = _int([p.q_index for p in batches], device)
        q_start = _int([p.q_start for p in batches], device)
        q_len = _int([p.q_len for p in batches], device)
        query = _gather_rows(plan.query, q_index, q_start, q_len, rows, dtype)
        if plan.query_rope is not None:
            query = torch.cat([query, _gather_rows(plan.query_rope, q_index, q_start, q_len, rows, dtype)], -1)

        own = _int([p.kv_len for p in batches], device)
        if plan.paged:
            key, value = (_paged_keys(plan, cache, dtype) for cache in (plan.key, plan.value))
            if plan.key_rope is not None:
                key = torch.cat([key, _paged_keys(plan, plan.key_rope, dtype)], -1)
        else:
            width = _round_up(int(own.max()) if len(batches) else 0, bucket) if packed else plan.key.shape[2]
            kv_index = _int([p.kv_index for p in batches], device)
            kv_start = _int([p.kv_start for p in batches], device)
            key, value = (_gather_rows(t, kv_index, kv_start, own, width, dtype) for t in (plan.key, plan.value))
            if plan.key_rope is not None:
                key = torch.cat([key, _gather_rows(plan.key_rope, kv_index, kv_start, own, width, dtype)], -1)
        p = plan.prefix_len
        if plan.prefix_key is not None and p:
            b = len(batches)
            key = torch.cat([plan.prefix_key[:, :, :p].to(dtype).expand(b, -1, -1, -1), key], dim=2)
            value = torch.cat([plan.prefix_value[:, :, :p].to(dtype).expand(b, -1, -1, -1), value], dim=2)
        extra_keys = _round_up(key.shape[2], bucket) - key.shape[2]
        if extra_keys:
            key, value = (torch.nn.functional.pad(t, (0, 0, 0, extra_keys)) for t in (key, value))
        n_keys = own + p
        lo, hi = _band(plan, q_len, n_keys)
        width = key.shape[2]
        origin_rows = _int([pb.mask_origin[0] for pb in batches], device)
        origin_cols = _int([pb.mask_origin[1] for pb in batches], device)
        if plan.sparse_mode == TREE_MODE:
            user = _tree_plane(plan, rows, width, device)
        else:
            user = None if plan.atten_mask is None else \
                _local_plane(plan.atten_mask, plan.decode, origin_rows, origin_cols, rows, width)
        pse = None if plan.pse is None else _local_pse(plan.pse, origin_rows, origin_cols, rows, width, dtype)
        return cls(plan, query, key, value, q_len, n_keys, lo, hi, user, pse)

    def attend(self, mode: Literal["eager", "compiled"]) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical (B_q, N_q, S_q, Dv) output and (B_q, N_q, S_q) LSE with the op's sentinels."""
        plan = self.plan
        b, n_q, rows, _ = self.query.shape
        keys = self.key.shape[2]
        want_lse = _needs_lse(plan)
        if rows == 0 or keys == 0 or b == 0:
            out = self.query.new_zeros(b, n_q, rows, self.value.shape[-1])
            lse = self.query.new_full((b, n_q, rows), float("-inf"))
        else:
            block_mask = self._block_mask(mode)
            fn = _compiled(self.query.device.type) if mode == "compiled" else flex_attention
            with torch.no_grad(), _direct(mode == "eager"):
                result = fn(self.query, self.key, self.value, score_mod=self._score_mod(), block_mask=block_mask,
                            scale=plan.scale, enable_gqa=plan.num_heads != plan.num_kv_heads,
                            return_aux=AuxRequest(lse=True) if want_lse else None)
            if want_lse:
                out, lse = result[0], result[1].lse
            else:
                out = result
                lse = self.query.new_zeros(b, n_q, rows)  # not returned: only the output is used
        if plan.learnable_sink is not None:
            sink = plan.learnable_sink.to(lse.dtype).view(1, n_q, 1)
            out = out * torch.exp(lse - torch.logaddexp(lse, sink)).unsqueeze(-1).to(out.dtype)
        lse = self._sentinels(lse)
        return self._scatter(out, lse)

    def _visible(self, b, i, j):
        """Row i of batch b sees key j: a valid row, a valid key, inside the band and, for inner_precise 2/3, not
        hidden by atten_mask. Works on flex's index scalars and on broadcast index tensors alike."""
        seen = (i < self.q_len[b]) & (j < self.n_keys[b]) & (j - i >= self.lo[b]) & (j - i <= self.hi[b])
        if self.user is not None and self.plan.inner_precise & 2:
            seen = seen & ~self.user[b, i, j]
        return seen

    def _extra(self) -> torch.Tensor | None:
        """(B|1, N_q|1, L, K): pse_shift to add after scaling, NaN where atten_mask writes -1e12 (inner_precise
        0/1), or None when there is neither."""
        fill = self.user is not None and not self.plan.inner_precise & 2
        if self.pse is None and not fill:
            return None
        extra = self.pse if self.pse is not None else self.query.new_zeros(1, 1, *self.user.shape[1:])
        if fill:
            extra = extra.masked_fill(self.user.unsqueeze(1), float("nan"))
        return extra

    def _block_mask(self, mode: str) -> BlockMask:
        """The block mask of ``_visible``. Its blocks come from the visibility evaluated once over the whole
        (B, L, K) grid (evaluating a mod under vmap indexes captured tensors slowly). Eager flex reads that grid;
        compiled flex gets the formula itself as its mask_mod, traced into the kernel."""
        b, _, rows, _ = self.query.shape
        keys = self.key.shape[2]
        grid = torch.meshgrid(*(torch.arange(n, device=self.query.device) for n in (b, rows, keys)), indexing="ij")
        dense = self._visible(*grid)

        def read_grid(b, h, i, j):
            return dense[b, i, j]

        blocks = create_block_mask(read_grid, b, None, rows, keys, device=self.query.device)
        if mode == "eager":
            return blocks

        def formula(b, h, i, j):
            return self._visible(b, i, j)
        return BlockMask.from_kv_blocks(blocks.kv_num_blocks, blocks.kv_indices, blocks.full_kv_num_blocks,
                                        blocks.full_kv_indices, BLOCK_SIZE=blocks.BLOCK_SIZE, mask_mod=formula,
                                        seq_lengths=(rows, keys))

    def _score_mod(self):
        """score + pse after scaling, or -1e12 where atten_mask hides the key (inner_precise 0/1); None if neither."""
        extra = self._extra()
        if extra is None:
            return None
        eb, eh = extra.shape[0] > 1, extra.shape[1] > 1

        def score_mod(score, b, h, i, j):
            e = extra[b if eb else 0, h if eh else 0, i, j]
            return torch.where(torch.isnan(e), MASK_FILL, score + e)
        return score_mod

    def _sentinels(self, lse: torch.Tensor) -> torch.Tensor:
        """+inf on rows flex saw no key for (spec 7 item 3); batches without keys get their route's sentinel
        (-3.40282e38 where the kernel writes it, ``fia_kit.lse.no_key_lse``)."""
        lse = torch.where(torch.isneginf(lse), float("inf"), lse)
        sentinel = no_key_lse(self.plan)
        if sentinel != float("inf"):
            empty = (self.n_keys == 0).view(-1, 1, 1)
            lse = torch.where(empty, sentinel, lse)
        return lse

    def _scatter(self, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each batch's valid rows at their canonical position; every other row is 0 (LSE +inf)."""
        plan = self.plan
        q4 = plan.query
        lse_dtype = torch.float64 if q4.dtype == torch.float64 else torch.float32
        out4 = out.new_zeros(q4.shape[0], plan.num_heads, q4.shape[2], out.shape[-1])
        lse4 = torch.full((q4.shape[0], plan.num_heads, q4.shape[2]), float("inf"), dtype=lse_dtype,
                          device=q4.device)
        valid = torch.arange(out.shape[2], device=q4.device).unsqueeze(0) < self.q_len.unsqueeze(1)
        b, i = valid.nonzero(as_tuple=True)
        q_index = _int([p.q_index for p in plan.batches], q4.device)
        q_start = _int([p.q_start for p in plan.batches], q4.device)
        dest_b, dest_i = q_index[b], q_start[b] + i
        out4[dest_b, :, dest_i] = out[b, :, i]
        lse4[dest_b, :, dest_i] = lse[b, :, i].to(lse_dtype)
        return out4, lse4


def _gather_rows(x: torch.Tensor, index: torch.Tensor, start: torch.Tensor, length: torch.Tensor, width: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """(B, N, width, D): row t of batch b is x[index[b], :, start[b] + t] for t < length[b] (else a copy of a
    valid row, which the masks hide). x is canonical (B'|1, N, S, D)."""
    if width == x.shape[2] and index.numel() == x.shape[0] and bool((start == 0).all()) \
            and bool((index == torch.arange(index.numel(), device=index.device)).all()):
        return x.to(dtype)  # right-padded batches already sit at their own rows
    t = torch.arange(width, device=index.device).unsqueeze(0)
    rows = (start.unsqueeze(1) + torch.minimum(t, (length - 1).clamp(min=0).unsqueeze(1))).clamp(max=x.shape[2] - 1)
    picked = x[index.unsqueeze(1), :, rows]  # (B, width, N, D)
    return picked.permute(0, 2, 1, 3).to(dtype)


def _paged_keys(plan: Plan, cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, N_kv, max_blocks * block_size, D): every block of each block_table row, in order (spec 11).

    Token t of batch b is block block_table[b, t // bs] at offset t % bs: cache[blk, t%bs, h*D + d] (rank 3),
    cache[blk, h, t%bs, d] (rank 4) or cache[blk, h, d // c, t%bs, d % c] (rank 5, NZ). Table entries past a
    batch's ceil(L_kv / bs) blocks are not read by the op and may hold anything: they are replaced by block 0,
    whose tokens the mask hides.
    """
    table = plan.block_table.to(device=cache.device, dtype=torch.long)
    bs = plan.block_size
    lengths = _int([p.kv_len for p in plan.batches], cache.device)
    used = torch.arange(table.shape[1], device=cache.device).unsqueeze(0) < (-(-lengths // bs)).unsqueeze(1)
    blocks = cache[torch.where(used, table, 0)]  # (B, max_blocks, ...)
    b, mb = table.shape
    n = plan.num_kv_heads
    if cache.dim() == 3:  # (B, mb, bs, N*D)
        tokens = blocks.view(b, mb, bs, n, -1).permute(0, 3, 1, 2, 4)
    elif cache.dim() == 4:  # (B, mb, N, bs, D)
        tokens = blocks.permute(0, 2, 1, 3, 4)
    else:  # (B, mb, N, D/c, bs, c)
        tokens = blocks.permute(0, 2, 1, 4, 3, 5)
    return tokens.reshape(b, n, mb * bs, -1).to(dtype)


def _band(plan: Plan, q_len: torch.Tensor, n_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per batch: key j is in row i's band when lo <= j - i <= hi (spec 6.3, 6.5).

    decode, mode 1, mode 9 (tree) and mode 0 without a mask: no band. Mode 0 with a mask: -pre <= j - i <= next (left-up). Mode 2:
    j <= i. Mode 3: j <= i + delta. Mode 4: delta - pre <= j - i <= delta + next, with the right-down offset
    delta = P + L_kv - L_q. pre/next at their default 2147483647 reach no key.
    """
    free = torch.full_like(q_len, UNBOUNDED)
    mode, pre, nxt = plan.sparse_mode, plan.pre_tokens, plan.next_tokens
    delta = n_keys - q_len
    if plan.decode or mode in (1, TREE_MODE) or (mode == 0 and plan.atten_mask is None):
        return -free, free
    if mode == 0:
        return torch.full_like(q_len, -pre), torch.full_like(q_len, nxt)
    if mode == 2:
        return -free, torch.zeros_like(q_len)
    if mode == 3:
        return -free, delta
    return delta - pre, delta + nxt


def _local_plane(mask: torch.Tensor, decode: bool, row0: torch.Tensor, col0: torch.Tensor, rows: int,
                 cols: int) -> torch.Tensor:
    """(B, rows, cols) bool: mask[b|0, row0[b] + i, col0[b] + j] (decode masks have no row axis; spec 6.2, 15)."""
    batch = row0.numel()
    mask = mask.to(row0.device)
    r = (row0.unsqueeze(1) + torch.arange(rows, device=row0.device)).clamp(max=max(mask.shape[-2] - 1, 0))
    c = (col0.unsqueeze(1) + torch.arange(cols, device=row0.device)).clamp(max=mask.shape[-1] - 1)
    bsel = torch.arange(batch, device=row0.device) if mask.shape[0] > 1 else torch.zeros(batch, dtype=torch.long,
                                                                                         device=row0.device)
    if decode:
        return mask[bsel.unsqueeze(1), c].unsqueeze(1).expand(batch, rows, cols)
    return mask[bsel.view(-1, 1, 1), r.unsqueeze(2), c.unsqueeze(1)]


def _tree_plane(plan: Plan, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(B, rows, cols) bool, True = hidden, from the caller's raw tree mask (sparse_mode 9, spec 6.6, 25.1).

    Per batch, with context c = L_kv - L_q: keys j < c are visible; key c + t is hidden from row i where
    tree[i, t] is 1. The tree is (B, S_q, S_q) (its top-left L_q x L_q corner), or for packed layouts 1-D, the
    per-batch L_q x L_q masks concatenated.
    """
    raw = plan.call.options["atten_mask"].to(device=device, dtype=torch.bool)
    hidden = torch.zeros(len(plan.batches), rows, cols, dtype=torch.bool, device=device)
    offset = 0
    for b, p in enumerate(plan.batches):
        n, context = p.q_len, p.kv_len - p.q_len
        if plan.layout.packed:
            tree, offset = raw[offset:offset + n * n].view(n, n), offset + n * n
        else:
            tree = raw[b, :n, :n]
        hidden[b, :n, context:context + n] = tree
    return hidden


def _local_pse(pse: torch.Tensor, row0: torch.Tensor, col0: torch.Tensor, rows: int, cols: int,
               dtype: torch.dtype) -> torch.Tensor:
    """(B|1, N_q, rows, cols): pse[b|0, n, row0[b] + i, col0[b] + j] (spec 9, 15)."""
    pse = pse.to(row0.device)
    if not bool((row0 == 0).all() and (col0 == 0).all()):
        r = (row0.unsqueeze(1) + torch.arange(rows, device=row0.device)).clamp(max=pse.shape[2] - 1)
        c = (col0.unsqueeze(1) + torch.arange(cols, device=row0.device)).clamp(max=pse.shape[3] - 1)
        bsel = torch.arange(row0.numel(), device=row0.device) if pse.shape[0] > 1 else \
            torch.zeros(row0.numel(), dtype=torch.long, device=row0.device)
        picked = pse[bsel.view(-1, 1, 1), :, r.unsqueeze(2), c.unsqueeze(1)]  # (B, rows, cols, N)
        return picked.permute(0, 3, 1, 2).to(dtype)
    r, c = min(rows, pse.shape[2]), min(cols, pse.shape[3])
    local = pse[:, :, :r, :c].to(dtype)
    return torch.nn.functional.pad(local, (0, cols - c, 0, rows - r))
