"""Which rank holds which token: the interleaved DCP split, per-rank paged caches, the zigzag split of ring prefill.

    local_lengths([5, 1, 8], world_size=2)            # tensor([[3, 1, 4], [2, 0, 4]]): (W, B) tokens per rank
    owner(torch.arange(8), world_size=2)              # rank of each global position
    caches = shard_paged(keys, values, 2, block_size=16)   # one RankCache per rank: cache, block table, lengths
    zigzag_chunks(16, world_size=2)                   # rank r holds chunks r and 2W-1-r of a causal prefill

The DCP split is vLLM's / vllm-ascend's: the KV cache is dealt out in runs of ``interleave_size`` tokens, run j to
rank j mod W (vllm-ascend ``vllm_ascend/attention/context_parallel/common_cp.py:11-29``,
``get_dcp_local_seq_lens``, at 182b75ea; vllm-ascend's returns (B, W), this returns (W, B)). A request shorter than
W x interleave_size tokens leaves some ranks without any of its keys: those ranks' FIA calls see L_kv = 0 for it,
and the LSE they write for it is the route's no-key sentinel (docs/context_parallel.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..builders import to_paged
from ..errors import FIAArgumentError

__all__ = ["local_lengths", "owner", "local_index", "positions_on", "RankCache", "shard_paged", "zigzag_chunks",
           "zigzag_positions"]


def _check_split(world_size: int, interleave_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise FIAArgumentError("world_size", "must be an int >= 1", world_size)
    if isinstance(interleave_size, bool) or not isinstance(interleave_size, int) or interleave_size < 1:
        raise FIAArgumentError("interleave_size", "must be an int >= 1", interleave_size)


def local_lengths(seq_lens: Sequence[int] | torch.Tensor, world_size: int, interleave_size: int = 1) -> torch.Tensor:
    """Each rank's number of tokens of each request under the interleaved split.

    Args:
        seq_lens: (B,) tokens per request (ints or an integer tensor), each >= 0.
        world_size: W, the DCP group's size. interleave_size: tokens per run dealt to one rank.
    Returns:
        (W, B) int64: entry [r, b] is how many of request b's tokens rank r holds; columns sum to seq_lens.
    """
    _check_split(world_size, interleave_size)
    lens = torch.as_tensor(seq_lens)
    if lens.dim() != 1 or lens.is_floating_point() or lens.dtype == torch.bool or bool((lens < 0).any()):
        raise FIAArgumentError("seq_lens", "must be a 1-D sequence of integers >= 0", seq_lens)
    lens = lens.to(torch.int64)
    full_rounds = lens // (interleave_size * world_size)  # runs every rank got
    rest = lens - full_rounds * interleave_size * world_size
    ranks = torch.arange(world_size, dtype=torch.int64)[:, None]
    return full_rounds[None, :] * interleave_size + (rest[None, :] - ranks * interleave_size).clamp(0, interleave_size)


def owner(positions: torch.Tensor, world_size: int, interleave_size: int = 1) -> torch.Tensor:
    """The rank holding each global token position (same shape as ``positions``)."""
    _check_split(world_size, interleave_size)
    return (positions // interleave_size) % world_size


def local_index(positions: torch.Tensor, world_size: int, interleave_size: int = 1) -> torch.Tensor:
    """Each global position's index in its owner's local sequence (same shape as ``positions``)."""
    _check_split(world_size, interleave_size)
    return positions // (interleave_size * world_size) * interleave_size + positions % interleave_size


def positions_on(rank: int, seq_len: int, world_size: int, interleave_size: int = 1) -> torch.Tensor:
    """(L_r,) int64: the global positions of one request's tokens that ``rank`` holds, in local order."""
    every = torch.arange(seq_len)
    return every[owner(every, world_size, interleave_size) == rank]


@dataclass(frozen=True)
class RankCache:
    """One rank's share of a paged KV cache.

    Attributes:
        rank: the rank. key, value: paged caches (num_blocks, block_size, N_kv*D) (``cache_rank`` 3, vllm-ascend's
            GQA view) or (num_blocks, N_kv, block_size, D) (4, its MLA view). block_table: (B, max_blocks) int32.
        lengths: (B,) int64, this rank's tokens of each request. positions: B tensors, their global positions.
    """

    rank: int
    key: torch.Tensor
    value: torch.Tensor
    block_table: torch.Tensor
    lengths: torch.Tensor
    positions: tuple[torch.Tensor, ...]


def shard_paged(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], world_size: int, block_size: int,
                interleave_size: int = 1, cache_rank: int = 3,
                generator: torch.Generator | None = None) -> list[RankCache]:
    """Deal each request's keys and values to the ranks (interleaved) and page each rank's share.

    Args:
        keys, values: B tensors (N_kv, L_b, D) and (N_kv, L_b, Dv): the whole cache of each request.
        world_size, interleave_size: the split (``local_lengths``). block_size: tokens per block (FIA: a multiple
            of 16). cache_rank: 3 or 4 (``RankCache``). generator: shuffles physical block ids.
    Returns:
        W RankCache; a rank without any token of a request gets length 0 and a table row of unused entries.
    """
    _check_split(world_size, interleave_size)
    if len(keys) != len(values) or not keys:
        raise FIAArgumentError("keys + values", "need the same number (>= 1) of requests", (len(keys), len(values)))
    out = []
    for rank in range(world_size):
        positions = tuple(positions_on(rank, k.shape[1], world_size, interleave_size) for k in keys)
        local_k = [k[:, p] for k, p in zip(keys, positions, strict=True)]
        local_v = [v[:, p] for v, p in zip(values, positions, strict=True)]
        key, table = to_paged(local_k, block_size, cache_rank, extra_blocks=1, shuffle=False)
        value, _ = to_paged(local_v, block_size, cache_rank, shuffle=False, num_blocks=key.shape[0])
        if generator is not None:  # physical block ids at random, as a real allocator leaves them
            perm = torch.randperm(key.shape[0], generator=generator)
            key, value = torch.empty_like(key).index_copy_(0, perm, key), torch.empty_like(value).index_copy_(
                0, perm, value)
            table = perm[table.long()].to(torch.int32)
        if table.shape[1] == 0:  # no token of any request here: one unused column keeps the table non-empty
            table = torch.zeros(len(keys), 1, dtype=torch.int32)
        lengths = torch.tensor([p.numel() for p in positions], dtype=torch.int64)
        out.append(RankCache(rank, key, value, table, lengths, positions))
    return out


def zigzag_chunks(seq_len: int, world_size: int) -> list[tuple[range, range]]:
    """Ring / PCP prefill's zigzag split: the sequence in 2W equal chunks, rank r holds chunks r and 2W-1-r.

    Pairing an early chunk with a late one gives every rank the same causal work. Returns, per rank, the two
    global position ranges (``seq_len`` must be a multiple of 2W).
    """
    _check_split(world_size, 1)
    if seq_len <= 0 or seq_len % (2 * world_size):
        raise FIAArgumentError("seq_len", f"must be a positive multiple of 2 x world_size = {2 * world_size} for the "
                               "zigzag split", seq_len)
    c = seq_len // (2 * world_size)
    return [(range(r * c, (r + 1) * c), range((2 * world_size - 1 - r) * c, (2 * world_size - r) * c))
            for r in range(world_size)]


def zigzag_positions(seq_len: int, world_size: int) -> list[torch.Tensor]:
    """Per rank, (2 seq_len / 2W,) int64 global positions of its zigzag share, in local order."""
    return [torch.tensor([*a, *b], dtype=torch.int64) for a, b in zigzag_chunks(seq_len, world_size)]
