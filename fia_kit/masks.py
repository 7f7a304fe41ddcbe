"""Which keys a query row sees: sparse modes 0-4, pre/next tokens, the compressed 2048 mask (spec 6, 7).

Coordinates are local to one batch: query row ``i`` counts from the batch's first valid query row, key ``j`` from its
first key, where the shared prefix (if any) comes first. A position is visible when it lies inside the mode's *band*
and the user's explicit mask (modes 0 and 1) does not mask it. The band is a pair of offsets on ``j - i``; this
module computes it, and the kit never reads the compressed 2048x2048 template, which only encodes the band.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

INT_MAX = 2147483647
MASK_FILL = -1e12  # what the kernel writes over masked scores (spec 3.5, 7)
COMPRESSED_MASK_SIZE = 2048
SPARSE_MODES = {0: "defaultMask", 1: "allMask", 2: "leftUpCausal", 3: "rightDownCausal", 4: "band"}
TREE_MODE = 9  # the tree mask (v2, MLA D=512): no band, visibility from ``tree_visibility`` (spec 6.6, 25.1)


@dataclass(frozen=True)
class Band:
    """Keys ``j`` visible from query row ``i`` satisfy ``lo <= j - i <= hi`` (None: unbounded on that side)."""

    lo: int | None = None
    hi: int | None = None

    def key_range(self, row_start: int, row_stop: int, num_keys: int) -> tuple[int, int]:
        """The smallest column range [start, stop) that holds every visible key of rows [row_start, row_stop)."""
        start = 0 if self.lo is None else max(0, row_start + self.lo)
        stop = num_keys if self.hi is None else min(num_keys, row_stop - 1 + self.hi + 1)
        return start, max(start, stop)

    def tile(self, row_start: int, row_stop: int, col_start: int, col_stop: int,
             device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Boolean (rows, cols) visibility of a tile, or None where the whole tile is inside the band."""
        outside = self.outside_tile(row_start, row_stop, col_start, col_stop, device)
        return None if outside is None else ~outside

    def outside_tile(self, row_start: int, row_stop: int, col_start: int, col_stop: int,
                     device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Boolean (rows, cols), True outside the band, or None where the whole tile is inside it."""
        shift = col_start - row_start  # j - i = (c - a) + shift for tile coordinates (a, c)
        cuts_low = self.lo is not None and col_start - (row_stop - 1) < self.lo
        cuts_high = self.hi is not None and (col_stop - 1) - row_start > self.hi
        if not (cuts_low or cuts_high):
            return None
        ones = torch.ones(row_stop - row_start, col_stop - col_start, dtype=torch.bool, device=device)
        outside = torch.zeros_like(ones)
        if cuts_high:
            outside |= ones.triu(self.hi - shift + 1)
        if cuts_low:
            outside |= ones.tril(self.lo - shift - 1)
        return outside

    def outside_rows(self, rows: torch.Tensor, col_start: int, col_stop: int) -> torch.Tensor | None:
        """Boolean (len(rows), cols), True outside the band, for the given rows (any order) over [col_start, col_stop).

        None where the band cuts none of those positions.
        """
        d = torch.arange(col_start, col_stop, device=rows.device)[None, :] - rows[:, None]
        outside = torch.zeros(d.shape, dtype=torch.bool, device=rows.device)
        if self.hi is not None:
            outside |= d > self.hi
        if self.lo is not None:
            outside |= d < self.lo
        return outside if bool(outside.any()) else None

    def cut_columns(self, row_start: int, row_stop: int, col_start: int, col_stop: int) -> tuple[int, int] | None:
        """The narrowest column range [a, b) of a tile that holds every position outside the band, or None.

        For causal modes that is a strip as wide as the tile is tall, at the diagonal: only it needs masking.
        """
        starts, stops = [], []
        if self.hi is not None and (col_stop - 1) - row_start > self.hi:
            starts.append(max(col_start, row_start + self.hi + 1))
            stops.append(col_stop)
        if self.lo is not None and col_start - (row_stop - 1) < self.lo:
            starts.append(col_start)
            stops.append(min(col_stop, row_stop - 1 + self.lo))
        return (min(starts), max(stops)) if starts else None

    def key_counts(self, row_start: int, row_stop: int, num_keys: int) -> torch.Tensor:
        """(rows,) number of keys inside the band for each row of [row_start, row_stop)."""
        i = torch.arange(row_start, row_stop)
        first = torch.zeros_like(i) if self.lo is None else (i + self.lo).clamp(min=0)
        last = torch.full_like(i, num_keys - 1) if self.hi is None else (i + self.hi).clamp(max=num_keys - 1)
        return (last - first + 1).clamp(min=0)

    def computed_rows(self, num_rows: int, num_keys: int) -> torch.Tensor:
        """Boolean (num_rows,): rows with at least one key inside the band (the others are written as 0)."""
        return self.key_counts(0, num_rows, num_keys) > 0


def sparse_band(sparse_mode: int, pre_tokens: int, next_tokens: int, delta: int, has_mask: bool,
                decode: bool) -> Band:
    """The band of one batch (spec 6.3, 6.5).

    Args:
        sparse_mode: 0-4.
        pre_tokens, next_tokens: as passed to the op.
        delta: the right-down offset P + L_kv - L_q of this batch.
        has_mask: whether atten_mask was given (mode 0 without a mask ignores pre/next).
        decode: S_q == 1 without rope: sparse_mode, pre and next are ignored.
    """
    if decode or sparse_mode in (1, TREE_MODE) or (sparse_mode == 0 and not has_mask):
        return Band()
    if sparse_mode == 0:
        return Band(_bound(-pre_tokens), _bound(next_tokens))
    if sparse_mode == 2:
        return Band(None, 0)
    if sparse_mode == 3:
        return Band(None, delta)
    if sparse_mode == 4:
        return Band(_bound(delta - pre_tokens), _bound(delta + next_tokens))
    raise AssertionError(sparse_mode)


def _bound(offset: int) -> int | None:
    """Offsets at or beyond +/- INT_MAX mean "no limit" (the op's default pre/next)."""
    return None if abs(offset) >= INT_MAX else offset


def tree_visibility(tree: torch.Tensor, q_len: int, kv_len: int, num_keys: int) -> torch.Tensor:
    """Hidden keys (True) of one batch under the tree mask, sparse_mode 9 (spec 6.6, 25.1).

    Keys j < L_kv - L_q (the context) are all visible; key j >= L_kv - L_q is hidden from row i where
    ``tree[i, j - (L_kv - L_q)]`` is 1. Keys from L_kv up to ``num_keys`` are hidden (never read).

    Args:
        tree: (L_q, L_q) bool, this batch's tree mask (1 = hidden).
    Returns:
        (L_q, num_keys) bool, True = hidden.
    """
    context = kv_len - q_len
    hidden = torch.ones(q_len, num_keys, dtype=torch.bool, device=tree.device)
    hidden[:, :context] = False
    hidden[:, context:kv_len] = tree.to(torch.bool)
    return hidden


@cache
def _template_cpu() -> torch.Tensor:
    return torch.triu(torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool), diagonal=1)


def compressed_causal_mask(dtype: torch.dtype = torch.bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 2048x2048 template modes 2-4 require: 1 strictly above the diagonal (spec 6.4).

    It is ``torch.triu(torch.ones(2048, 2048), diagonal=1)``; the docs' "lower-triangular" wording names the kept part.
    """
    return _template_cpu().to(device=device, dtype=dtype)


def is_compressed_causal_mask(mask: torch.Tensor) -> bool:
    """Whether ``mask`` (2048x2048 after dropping leading 1-dims) holds exactly the template's values."""
    plane = mask.reshape(mask.shape[-2], mask.shape[-1])
    return bool(torch.equal(plane.to(device="cpu", dtype=torch.bool), _template_cpu()))
