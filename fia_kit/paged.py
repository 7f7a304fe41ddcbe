"""Paged KV caches read through block_table (spec 11). The only place that knows the three cache ranks.

| rank | name   | shape                                       | token t of a sequence, kv head h, dim d            |
|------|--------|---------------------------------------------|----------------------------------------------------|
| 3    | BnBsH  | (num_blocks, block_size, N_kv*D)            | cache[bt[t // bs], t % bs, h*D + d]                 |
| 4    | BnNBsD | (num_blocks, N_kv, block_size, D)           | cache[bt[t // bs], h, t % bs, d]                    |
| 5    | NZ     | (num_blocks, N_kv, D/c, block_size, c)      | cache[bt[t // bs], h, d // c, t % bs, d % c]        |

For NZ, c is 16 for float16/bfloat16 and 32 for int8 (32 bytes); the kit reads c from the tensor.
"""

from __future__ import annotations

import torch

CACHE_LAYOUTS = {3: "BnBsH", 4: "BnNBsD", 5: "NZ"}


def cache_block_size(cache: torch.Tensor) -> int:
    """The block_size axis of a cache."""
    return cache.shape[1] if cache.dim() == 3 else cache.shape[2] if cache.dim() == 4 else cache.shape[3]


def cache_head_dim(cache: torch.Tensor, num_kv_heads: int) -> int:
    """D of a cache: H / N_kv (rank 3), size(3) (rank 4), size(2) * size(4) (rank 5), as spec 4.3's value_d."""
    if cache.dim() == 3:
        return cache.shape[2] // num_kv_heads
    if cache.dim() == 4:
        return cache.shape[3]
    return cache.shape[2] * cache.shape[4]


def cache_num_heads(cache: torch.Tensor) -> int | None:
    """N_kv where the cache carries it as an axis (ranks 4, 5), else None."""
    return None if cache.dim() == 3 else cache.shape[1]


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor, num_kv_heads: int,
                  staging: torch.Tensor | None = None) -> torch.Tensor:
    """Whole blocks of a paged cache, in order, block-major: (len(block_ids), N_kv, block_size, D).

    Args:
        cache: (num_blocks, block_size, N_kv*D), (num_blocks, N_kv, block_size, D) or NZ
            (num_blocks, N_kv, D/c, block_size, c).
        block_ids: (n,) int, the cache blocks to read (a slice of a block_table row).
        num_kv_heads: N_kv (used to split H for rank-3 caches).
        staging: optional buffer (at least n, *cache.shape[1:]) in the cache's dtype and device to read into,
            reused from call to call (a fresh large buffer per read costs more than the read).
    Returns:
        Each block read once (one ``index_select`` copy, in the cache's dtype); for ranks 3 and 4 a view of that
        copy (rank 3: strided over heads), for NZ a second copy in (block_size, D) order.
    """
    block_size, head_dim = cache_block_size(cache), cache_head_dim(cache, num_kv_heads)
    used = block_ids.shape[0]
    ids = block_ids.to(device=cache.device, dtype=torch.long)
    blocks = cache.index_select(0, ids) if staging is None else torch.index_select(cache, 0, ids, out=staging[:used])
    if cache.dim() == 3:
        return blocks.view(used, block_size, num_kv_heads, head_dim).transpose(1, 2)
    if cache.dim() == 4:
        return blocks
    return blocks.transpose(2, 3).reshape(used, num_kv_heads, block_size, head_dim)  # (n, N, bs, D/c, c) -> D


def block_views(cache: torch.Tensor, block_ids: torch.Tensor, num_kv_heads: int,
                heads: slice = slice(None)) -> tuple[torch.Tensor, ...] | None:
    """Whole blocks of a paged cache, in order, as views of the cache (nothing copied): (N', block_size, D) each,
    for kv heads ``heads``.

    Rank 4 gives each block as stored; rank 3 a view strided over heads (rows of D contiguous). NZ splits D,
    so its blocks are not (block_size, D) matrices: None (read it with ``read_blocks`` or ``gather_blocks``).
    """
    if cache.dim() == 5:
        return None
    return tuple(_block(cache, i, num_kv_heads)[heads] for i in block_ids.tolist())


def read_blocks(cache: torch.Tensor, block_ids: torch.Tensor, num_kv_heads: int, out: torch.Tensor,
                heads: slice = slice(None)) -> torch.Tensor:
    """Copy whole blocks of a paged cache, in order, kv heads ``heads``, into ``out`` (n, N', block_size, D),
    converting to out's dtype on the way: one read of each block and one write, any of the three ranks.

    ``out`` may be strided (e.g. the first D columns of a wider buffer). Returns ``out``.
    """
    for j, i in enumerate(block_ids.tolist()):
        if cache.dim() == 5:  # (N, D/c, bs, c) -> (N, bs, D/c, c), written as (N, bs, D)
            chunks, c = cache.shape[2], cache.shape[4]
            out[j].unflatten(-1, (chunks, c)).copy_(cache[i, heads].transpose(1, 2))
        else:
            out[j].copy_(_block(cache, i, num_kv_heads)[heads])
    return out


def _block(cache: torch.Tensor, i: int, num_kv_heads: int) -> torch.Tensor:
    """Block i of a rank-3 or rank-4 cache as a (N_kv, block_size, D) view."""
    if cache.dim() == 4:
        return cache[i]
    return cache[i].view(cache.shape[1], num_kv_heads, cache_head_dim(cache, num_kv_heads)).transpose(0, 1)


def head_major(blocks: torch.Tensor) -> torch.Tensor:
    """(n, N_kv, block_size, D) blocks -> (N_kv, n * block_size, D): the tokens of each head in order (a copy)."""
    n, heads, block_size, dim = blocks.shape
    return blocks.transpose(0, 1).reshape(heads, n * block_size, dim)


def gather_sequence(cache: torch.Tensor, block_ids: torch.Tensor, length: int, num_kv_heads: int) -> torch.Tensor:
    """The first ``length`` tokens of one sequence from a paged cache.

    Args:
        cache: as ``gather_blocks``.
        block_ids: (max_blocks,) int, this sequence's row of block_table; only the first
            ceil(length / block_size) entries are read.
        length: tokens to read.
        num_kv_heads: N_kv (used to split H for rank-3 caches).
    Returns:
        (N_kv, length, D), a copy in the cache's dtype.
    """
    used = -(-length // cache_block_size(cache))
    return head_major(gather_blocks(cache, block_ids[:used], num_kv_heads))[:, :length]
