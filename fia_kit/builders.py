"""Builders: from sequences, heads and lengths to the op's exact tensors (layouts, lengths, masks, paged caches).

Each helper stands alone; ``fia_kit.case.Case`` combines them. Masks follow FIA's convention: True = masked out.

    >>> from fia_kit import builders
    >>> builders.cumulative([3, 0, 5])
    [3, 3, 8]
    >>> builders.causal_mask(2, 4, align="right-down").int().tolist()
    [[0, 0, 0, 1], [0, 0, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import FIAArgumentError
from .layouts import convert_layout, from_canonical, to_canonical
from .lengths import cumulative
from .masks import compressed_causal_mask
from .paged import gather_sequence
from .quant import INT8_RANGE, quantize_kv, saturate_round

__all__ = [
    "alibi_pse", "antiquant_kv", "band_mask", "causal_mask", "compressed_causal_mask", "convert_layout",
    "cumulative", "custom_mask", "from_paged", "length_tensor", "nz_block", "pack_sequences", "padding_mask",
    "per_batch", "pse_tensor", "rope_parts", "shared_prefix", "sink_tensor", "to_paged", "tree_mask",
    "unpack_sequences",
]

ANTIQUANT_MODES = {"tensor": 0, "channel": 0, "token": 1, "head": 2, "token_head": 3}  # separated form, spec 16.3


def per_batch(cumulative_lengths: Sequence[int]) -> list[int]:
    """Cumulative lengths -> per-batch lengths: [3, 3, 8] -> [3, 0, 5]."""
    values = [int(v) for v in cumulative_lengths]
    return [b - a for a, b in zip([0, *values[:-1]], values, strict=True)]


def length_tensor(values: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(values),) int64 tensor on ``device``: how TorchAir's graph-mode ops take actual lengths (spec 1.4)."""
    return torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)


def pack_sequences(sequences: Sequence[torch.Tensor], part: str = "TND") -> tuple[torch.Tensor, list[int]]:
    """Pack ragged per-batch sequences into TND or NTD with their cumulative lengths.

    Args:
        sequences: B tensors of shape (N, L_b, D) (same N and D).
        part: "TND" -> (T, N, D) or "NTD" -> (N, T, D), T = sum L_b.
    Returns:
        (packed tensor, cumulative lengths).
    """
    if part not in ("TND", "NTD"):
        raise FIAArgumentError("part", "must be TND or NTD", part)
    joined = torch.cat(list(sequences), dim=1).unsqueeze(0)  # (1, N, T, D)
    return from_canonical(joined, part), cumulative(s.shape[1] for s in sequences)


def unpack_sequences(packed: torch.Tensor, cumulative_lengths: Sequence[int], part: str = "TND") -> list[torch.Tensor]:
    """Inverse of ``pack_sequences``: B tensors (N, L_b, D) from a TND/NTD tensor and cumulative lengths."""
    canonical = to_canonical(packed, part, 0)[0]
    starts = [0, *cumulative_lengths[:-1]]
    return [canonical[:, s:e] for s, e in zip(starts, cumulative_lengths, strict=True)]


def causal_mask(s_q: int, s_kv: int, align: str = "right-down") -> torch.Tensor:
    """(s_q, s_kv) bool causal mask, True = masked. "left-up": j <= i visible (sparse_mode 2's geometry);
    "right-down": j <= i + s_kv - s_q visible (sparse_mode 3's, the last query sees the last key)."""
    return band_mask(s_q, s_kv, pre_tokens=2147483647, next_tokens=0, align=align)


def band_mask(s_q: int, s_kv: int, pre_tokens: int, next_tokens: int, align: str = "right-down") -> torch.Tensor:
    """(s_q, s_kv) bool band mask: visible iff -pre <= j - i - offset <= next, offset 0 (left-up) or s_kv - s_q
    (right-down, sparse_mode 4's geometry). True = masked."""
    if align not in ("left-up", "right-down"):
        raise FIAArgumentError("align", "must be 'left-up' or 'right-down'", align)
    offset = s_kv - s_q if align == "right-down" else 0
    above, below = offset + next_tokens + 1, offset - pre_tokens - 1  # masked: j - i >= above or j - i <= below
    ones = torch.ones(s_q, s_kv, dtype=torch.bool)  # bool passes only (no int64 j - i grid)
    parts = [ones.triu(above)] if above < s_kv else []
    parts += [ones.tril(below)] if below > -s_q else []
    if not parts:
        return torch.zeros(s_q, s_kv, dtype=torch.bool)
    return parts[0] if len(parts) == 1 else parts[0] | parts[1]


def padding_mask(q_lens: Sequence[int], kv_lens: Sequence[int], s_q: int, s_kv: int) -> torch.Tensor:
    """(B, 1, s_q, s_kv) bool mask hiding keys beyond each batch's kv length (and all keys of padded query rows)."""
    rows = torch.arange(s_q).view(1, 1, s_q, 1)
    cols = torch.arange(s_kv).view(1, 1, 1, s_kv)
    q = torch.tensor(list(q_lens)).view(-1, 1, 1, 1)
    kv = torch.tensor(list(kv_lens)).view(-1, 1, 1, 1)
    return (rows >= q) | (cols >= kv)


def custom_mask(mask_mod: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], s_q: int, s_kv: int) -> torch.Tensor:
    """(s_q, s_kv) bool mask from ``mask_mod(i, j) -> visible`` (flex_attention's convention), turned into FIA's
    True = masked."""
    i = torch.arange(s_q).view(-1, 1)
    j = torch.arange(s_kv).view(1, -1)
    return ~mask_mod(i, j).expand(s_q, s_kv).to(torch.bool)


def nz_block(dtype: torch.dtype) -> int:
    """c of an NZ cache (num_blocks, N_kv, D/c, block_size, c): 32 bytes of ``dtype`` (16 for fp16/bf16, 32 int8)."""
    return 32 // torch.empty(0, dtype=dtype).element_size()


def to_paged(sequences: Sequence[torch.Tensor], block_size: int, cache_rank: int = 4, extra_blocks: int = 0,
             shuffle: bool = True, generator: torch.Generator | None = None,
             num_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Write per-batch K (or V) into a paged cache with a (shuffled) block table (spec 11).

    Args:
        sequences: B tensors (N_kv, L_b, D).
        block_size: tokens per block.
        cache_rank: 3 (num_blocks, bs, N_kv*D), 4 (num_blocks, N_kv, bs, D) or 5 NZ (num_blocks, N_kv, D/c, bs, c).
        extra_blocks: spare blocks (filled with garbage) to make the cache larger than needed.
        shuffle: place blocks at random physical ids, as a real allocator does.
        num_blocks: the cache's block count (None: the blocks needed + extra_blocks); fewer than needed raises.
    Returns:
        (cache, block_table): block_table is (B, max_b ceil(L_b / bs)) int32; unused entries are 0.
    """
    if cache_rank not in (3, 4, 5):
        raise FIAArgumentError("cache_rank", "must be 3 (BnBsH), 4 (BnNBsD) or 5 (NZ) (spec 11)", cache_rank)
    if block_size <= 0:
        raise FIAArgumentError("block_size", "must be > 0", block_size)
    n, d = sequences[0].shape[0], sequences[0].shape[-1]
    counts = [-(-s.shape[1] // block_size) for s in sequences]
    total = sum(counts) + extra_blocks if num_blocks is None else num_blocks
    if total < sum(counts):
        raise FIAArgumentError("num_blocks", f"lengths {[s.shape[1] for s in sequences]} need {sum(counts)} blocks "
                               f"of {block_size} tokens", total)
    order = torch.randperm(total, generator=generator) if shuffle else torch.arange(total)
    garbage = 1000.0 if sequences[0].is_floating_point() else INT8_RANGE[1]  # int8 K/V: 127
    blocks = torch.full((total, n, block_size, d), garbage, dtype=sequences[0].dtype)  # garbage where unused
    table = torch.zeros(len(sequences), max(counts, default=0), dtype=torch.int32)
    next_id = 0
    for b, seq in enumerate(sequences):
        for k in range(counts[b]):
            chunk = seq[:, k * block_size:(k + 1) * block_size]
            block_id = int(order[next_id])
            blocks[block_id, :, :chunk.shape[1]] = chunk
            table[b, k] = block_id
            next_id += 1
    return _cache_from_blocks(blocks, cache_rank), table


def _cache_from_blocks(blocks: torch.Tensor, cache_rank: int) -> torch.Tensor:
    """(num_blocks, N, bs, D) -> the cache of ``cache_rank``."""
    nb, n, bs, d = blocks.shape
    if cache_rank == 4:
        return blocks.contiguous()
    if cache_rank == 3:
        return blocks.permute(0, 2, 1, 3).reshape(nb, bs, n * d)
    c = nz_block(blocks.dtype)
    if d % c:
        raise FIAArgumentError("head_dim", f"an NZ cache needs D divisible by {c} for {blocks.dtype}", d)
    return blocks.view(nb, n, bs, d // c, c).permute(0, 1, 3, 2, 4).contiguous()


def from_paged(cache: torch.Tensor, block_table: torch.Tensor, lengths: Sequence[int],
               num_kv_heads: int) -> list[torch.Tensor]:
    """Read each sequence back from a paged cache: B tensors (N_kv, L_b, D) (uses ``fia_kit.paged``)."""
    return [gather_sequence(cache, block_table[b], int(n), num_kv_heads) for b, n in enumerate(lengths)]


def shared_prefix(num_kv_heads: int, prefix_len: int, head_dim: int, value_dim: int, part: str = "BNSD",
                  dtype: torch.dtype = torch.float32,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """v1's key_shared_prefix / value_shared_prefix: canonical (1, N_kv, P, D) and (1, N_kv, P, Dv) laid out as
    the unpacked ``part`` (BSH (1, P, N_kv*D), BSND (1, P, N_kv, D), BNSD (1, N_kv, P, D))."""
    k = torch.randn(1, num_kv_heads, prefix_len, head_dim, generator=generator).to(dtype)
    v = torch.randn(1, num_kv_heads, prefix_len, value_dim, generator=generator).to(dtype)
    return from_canonical(k, part), from_canonical(v, part)


def pse_tensor(batch: int, heads: int, s_q: int, s_kv: int, dtype: torch.dtype = torch.float32,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """pse_shift: (batch, heads, s_q, s_kv) random additive bias (batch may be 1 to broadcast; s_kv includes any
    shared prefix, S_kv + P)."""
    return torch.randn(batch, heads, s_q, s_kv, generator=generator).to(dtype)


def sink_tensor(heads: int, dtype: torch.dtype = torch.bfloat16,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """learnable_sink (v2, TND): (heads,) one logit per query head, bf16 on the NPU (spec 13)."""
    return torch.randn(heads, generator=generator).to(dtype)


def rope_parts(batch: int, heads: int, kv_heads: int, s_q: int, s_kv: int, rope_dim: int = 64,
               dtype: torch.dtype = torch.float32,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA query_rope (batch, heads, s_q, rope_dim) and key_rope (batch, kv_heads, s_kv, rope_dim), canonical BNSD
    (lay them out with ``fia_kit.layouts.from_canonical`` or ``pack_sequences`` like query and key)."""
    q = torch.randn(batch, heads, s_q, rope_dim, generator=generator).to(dtype)
    k = torch.randn(batch, kv_heads, s_kv, rope_dim, generator=generator).to(dtype)
    return q, k


def alibi_pse(q_lens: Sequence[int], kv_lens: Sequence[int], heads: int, s_q: int, s_kv: int, prefix_len: int = 0,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """pse_shift as ALiBi distances: (B, heads, s_q, s_kv) with ``-slope_n * |j - (i + delta_b)|`` (spec 9).

    delta_b = P + L_kv[b] - L_q[b] puts distance 0 on each batch's right-down diagonal (query i's own position);
    slope_n = 2^(-8 (n + 1) / heads), the ALiBi paper's geometric slopes: head 0 looks farthest back. Columns count
    the shared prefix first (s_kv includes it), as pse_shift's do.
    """
    slopes = torch.tensor([2.0 ** (-8.0 * (n + 1) / heads) for n in range(heads)], dtype=torch.float64)
    delta = torch.tensor([prefix_len + kv - q for q, kv in zip(q_lens, kv_lens, strict=True)], dtype=torch.float64)
    i = torch.arange(s_q, dtype=torch.float64).view(1, 1, -1, 1)
    j = torch.arange(s_kv, dtype=torch.float64).view(1, 1, 1, -1)
    distance = (j - i - delta.view(-1, 1, 1, 1)).abs()
    return (-slopes.view(1, -1, 1, 1) * distance).to(dtype)


def tree_mask(q_lens: Sequence[int], s_q: int, packed: bool = False) -> torch.Tensor:
    """A speculative-decoding tree mask for sparse_mode 9 (spec 6.6, 25.1): 1 (True) = hidden.

    Each batch's L_q draft tokens form a binary tree in heap order (token t's parent is (t - 1) // 2); token i sees
    token j when j is i or one of its ancestors. Returns (B, s_q, s_q) bool (rows and columns >= L_q hidden), or for
    packed layouts (TND) the per-batch L_q x L_q masks flattened and concatenated: (sum L_q^2,).
    """
    planes = []
    for n in q_lens:
        seen = torch.eye(n, dtype=torch.bool)
        for t in range(1, n):
            seen[t] |= seen[(t - 1) // 2]  # a token sees what its parent sees (parents come first)
        planes.append(~seen)
    if packed:
        return torch.cat([p.reshape(-1) for p in planes]) if planes else torch.zeros(0, dtype=torch.bool)
    out = torch.ones(len(planes), s_q, s_q, dtype=torch.bool)
    for b, p in enumerate(planes):
        out[b, :p.shape[0], :p.shape[0]] = p
    return out


def antiquant_kv(kv: torch.Tensor, lengths: Sequence[int], granularity: str, scale_dtype: torch.dtype,
                 kv_axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """int8 K or V for antiquant's separated form (spec 16.3), from canonical (B, N_kv, S, D) float K or V.

    Scales are ``quant.quantize_kv``'s (symmetric, ``scale * ints`` reconstructs within half a step), computed from
    each batch's first ``lengths[b]`` tokens only: positions beyond them hold garbage (1000) that would swamp a
    per-channel scale; there the ints are 127, garbage again. A scale the op reads in ``scale_dtype`` is rounded
    to it first, and the ints are taken against the rounded value.

    Args:
        granularity: "tensor", "channel", "token", "head" or "token_head" (``quant.GRANULARITIES``).
        scale_dtype: the dtype of per-tensor / per-channel / per-head scales (the query's); per-token ones are
            float32, as the op requires.
        kv_axis: the key axis per-token scales must cover (S_kv, or the paged capacity); default S.
    Returns:
        (ints (B, N_kv, S, D) int8, scale in the op's shape for the granularity, the antiquant mode 0-3).
    """
    mode = ANTIQUANT_MODES[granularity]
    positions = torch.arange(kv.shape[2]).view(1, 1, -1, 1)
    padding = positions >= torch.tensor([int(n) for n in lengths]).view(-1, 1, 1, 1)
    valid = kv.masked_fill(padding, 0.0)
    ints, scale, _ = quantize_kv(valid, granularity)
    if mode in (1, 3):
        wanted = kv.shape[2] if kv_axis is None else kv_axis
        scale = torch.nn.functional.pad(scale, (0, wanted - scale.shape[-1]), value=1.0)
    else:  # the op reads this scale in scale_dtype: quantise against that rounded value
        scale = scale.to(scale_dtype)
        view = {"tensor": (1, 1, 1, 1), "channel": scale.shape, "head": (1, -1, 1, 1)}[granularity]
        ints = saturate_round(valid.to(torch.float32) / scale.to(torch.float32).view(view), INT8_RANGE)
    return ints.to(torch.int8).masked_fill_(padding.expand_as(ints), INT8_RANGE[1]), scale, mode
