"""fia_kit.cp.layouts and the MTP mask: hand-worked splits, and properties checked by counting tokens one by one."""

from __future__ import annotations

import pytest
import torch

import fia_kit
from fia_kit import cp
from fia_kit.builders import from_paged


def test_local_lengths_hand_worked() -> None:
    assert cp.local_lengths([5, 1, 8], 2).tolist() == [[3, 1, 4], [2, 0, 4]]
    # interleave 2: positions 0-1 rank 0, 2-3 rank 1, 4-5 rank 0, ...
    assert cp.local_lengths([5, 1, 8], 2, interleave_size=2).tolist() == [[3, 1, 4], [2, 0, 4]]
    assert cp.local_lengths([1, 6, 35], 4, interleave_size=2).tolist() == [[1, 2, 10], [0, 2, 9], [0, 2, 8],
                                                                        [0, 0, 8]]
    assert cp.local_lengths(torch.tensor([7]), 3, 1).dtype == torch.int64


@pytest.mark.parametrize(("world_size", "interleave"), [(1, 1), (2, 1), (2, 16), (3, 4), (4, 2), (8, 64)])
def test_local_lengths_count_what_owner_deals(world_size: int, interleave: int) -> None:
    gen = torch.Generator().manual_seed(world_size * 100 + interleave)
    seq_lens = torch.randint(0, 300, (6,), generator=gen)
    got = cp.local_lengths(seq_lens, world_size, interleave)
    for b, n in enumerate(seq_lens.tolist()):
        counted = torch.bincount(cp.owner(torch.arange(n), world_size, interleave), minlength=world_size)
        assert got[:, b].tolist() == counted.tolist()
    # a rank's local indices run 0..L_r - 1 in position order
    n = int(seq_lens.max())
    for rank in range(world_size):
        mine = cp.layouts.positions_on(rank, n, world_size, interleave)
        assert cp.layouts.local_index(mine, world_size, interleave).tolist() == list(range(mine.numel()))


@pytest.mark.parametrize(("args", "parameter"), [(([-1], 2), "seq_lens"), (([1.5], 2), "seq_lens"),
                                                 (([3], 0), "world_size"), (([3], 2, 0), "interleave_size")])
def test_bad_splits_raise(args, parameter) -> None:
    with pytest.raises(fia_kit.FIAArgumentError) as info:
        cp.local_lengths(*args)
    assert info.value.parameter == parameter


def test_shard_paged_reads_back_each_ranks_tokens() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(2, n, 8, generator=gen) for n in (1, 6, 35)]
    values = [torch.randn(2, n, 4, generator=gen) for n in (1, 6, 35)]
    caches = cp.shard_paged(keys, values, 4, block_size=16, interleave_size=2, cache_rank=4,
                            generator=torch.Generator().manual_seed(1))
    for c in caches:
        assert c.lengths.tolist() == cp.local_lengths([1, 6, 35], 4, 2)[c.rank].tolist()
        lengths = c.lengths.tolist()
        for b, (k, v) in enumerate(zip(from_paged(c.key, c.block_table, lengths, 2),
                                       from_paged(c.value, c.block_table, lengths, 2), strict=True)):
            assert torch.equal(k, keys[b][:, c.positions[b]]) and torch.equal(v, values[b][:, c.positions[b]])


def test_zigzag_covers_every_position_once_with_equal_causal_work() -> None:
    for w in (1, 2, 4):
        parts = cp.zigzag_positions(16 * w, w)
        assert sorted(torch.cat(parts).tolist()) == list(range(16 * w))
        work = {int((p + 1).sum()) for p in parts}  # keys a causal row sees, summed over the rank's rows
        assert len(work) == 1
    assert [list(a) + list(b) for a, b in cp.zigzag_chunks(8, 2)] == [[0, 1, 6, 7], [2, 3, 4, 5]]
    with pytest.raises(fia_kit.FIAArgumentError):
        cp.zigzag_chunks(10, 4)


def test_mtp_mask_hand_worked_leak_and_fix() -> None:
    # W 2, interleave 4, history 3, 3 new tokens at positions 3, 4, 5; rank 1 holds positions 4, 5 (local 0, 1)
    leaky = cp.mtp_mask([3], [3], 2, rank=1, interleave_size=4)
    fixed = cp.mtp_mask([3], [3], 2, rank=1, interleave_size=4, fixed=True)
    # position 3 sees no key of rank 1: vllm-ascend leaves the row open (sees 4 and 5: the future), the fix hides it
    assert leaky[0].tolist() == [[False, False], [False, True], [False, False]]
    assert fixed[0].tolist() == [[True, True], [False, True], [False, False]]
    # on rank 0 (positions 0-3) every row has a key: both agree
    assert torch.equal(cp.mtp_mask([3], [3], 2, 0, 4), cp.mtp_mask([3], [3], 2, 0, 4, fixed=True))
