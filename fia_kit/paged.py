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


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Whole blocks of a paged cache, in order, as one (N_kv, len(block_ids) * block_size, D) tensor.

    Args:
        cache: (num_blocks, block_size, N_kv*D), (num_blocks, N_kv, block_size, D) or NZ
            (num_blocks, N_kv, D/c, block_size, c).
        block_ids: (n,) int, the cache blocks to read (a slice of a block_table row).
        num_kv_heads: N_kv (used to split H for rank-3 caches).
    Returns:
        A copy in the cache's dtype: each block is read once (``index_select``) and laid out head-major.
    """
    block_size, head_dim = cache_block_size(cache), cache_head_dim(cache, num_kv_heads)
    used = block_ids.shape[0]
    blocks = cache.index_select(0, block_ids.to(device=cache.device, dtype=torch.long))
    if cache.dim() == 3:
        tokens = blocks.view(used, block_size, num_kv_heads, head_dim).permute(2, 0, 1, 3)
    elif cache.dim() == 4:
        tokens = blocks.permute(1, 0, 2, 3)
    else:
        tokens = blocks.permute(1, 0, 3, 2, 4)  # (N, blocks, bs, D/c, c)
    return tokens.reshape(num_kv_heads, used * block_size, head_dim)  # explicit D: there may be no blocks


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
    return gather_blocks(cache, block_ids[:used], num_kv_heads)[:, :length]
