"""The visibility rule of a plan in one object: which keys each query row sees, and which rows are computed.

    vis = Visibility(plan)
    vis.dense(b)                  # (L_q, P + L_kv) bool: row i of batch b sees key j (prefix keys first)
    vis.computed_rows(b)          # (L_q,) bool: rows with at least one visible key
    flex_attention(q, k, v, block_mask=create_block_mask(vis.mask_mod, B, H, Q_LEN, KV_LEN))

Coordinates are local to one batch (``masks`` module docstring): query row ``i`` from the batch's first valid row,
key ``j`` from its first key, the shared prefix first. Key ``j`` is visible from row ``i`` when it lies inside the
batch's sparse-mode ``Band`` (``masks.sparse_band``) and the user's ``atten_mask`` (read element-wise in modes 0/1
and decode, at the batch's left-padding origin) does not hide it. The per-batch user mask is one ``hidden_tile``
lookup, so a mask of another kind (a per-batch tree mask) fits there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .planning import Plan

_UNBOUNDED = 2**62  # a band offset that never cuts (stands for None in tensors)


@dataclass(frozen=True)
class Visibility:
    """The visibility rule of one validated plan."""

    plan: Plan

    def num_rows(self, b: int) -> int:
        """L_q of batch b."""
        return self.plan.batches[b].q_len

    def num_keys(self, b: int) -> int:
        """P + L_kv of batch b: the keys its rows may see, prefix keys first."""
        return self.plan.prefix_len + self.plan.batches[b].kv_len

    def hidden_tile(self, b: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor | None:
        """(rows, cols) bool, True = hidden by atten_mask, for batch-local rows [r0, r1) and keys [c0, c1).

        None when the plan has no element-wise user mask (modes 2-4 take the compressed template: band only).
        """
        mask = self.plan.atten_mask
        if mask is None:
            return None
        plane = mask[b if mask.shape[0] > 1 else 0]
        row0, col0 = self.plan.batches[b].mask_origin  # left padding: physical coordinates (spec 15)
        r0, r1, c0, c1 = r0 + row0, r1 + row0, c0 + col0, c1 + col0
        if self.plan.decode:
            return plane[c0:c1].unsqueeze(0).expand(r1 - r0, c1 - c0)
        return plane[r0:r1, c0:c1]

    def in_band(self, b: int) -> torch.Tensor:
        """(L_q, P + L_kv) bool: inside batch b's sparse-mode band (the user mask not applied)."""
        return self.in_band_rows(b, 0, self.num_rows(b))

    def dense(self, b: int) -> torch.Tensor:
        """(L_q, P + L_kv) bool of batch b: True where row i sees key j (band and user mask)."""
        return self.dense_rows(b, 0, self.num_rows(b))

    def in_band_rows(self, b: int, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, P + L_kv) bool: ``in_band(b)`` for batch-local rows [r0, r1) only (a row tile)."""
        keys, device = self.num_keys(b), self.plan.query.device
        outside = self.plan.batches[b].band.outside_tile(r0, r1, 0, keys, device)
        return torch.ones(r1 - r0, keys, dtype=torch.bool, device=device) if outside is None else ~outside

    def dense_rows(self, b: int, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, P + L_kv) bool: ``dense(b)`` for batch-local rows [r0, r1) only (a row tile)."""
        visible = self.in_band_rows(b, r0, r1)
        hidden = self.hidden_tile(b, r0, r1, 0, self.num_keys(b))
        return visible if hidden is None else visible & ~hidden.to(visible.device)

    def maps(self) -> list[torch.Tensor]:
        """``dense(b)`` for every batch (shapes differ per batch)."""
        return [self.dense(b) for b in range(len(self.plan.batches))]

    def band_rows(self, b: int) -> torch.Tensor:
        """(L_q,) bool: rows with at least one key inside the band (the others are OUT_OF_BAND, written as 0)."""
        return self.plan.batches[b].band.computed_rows(self.num_rows(b), self.num_keys(b))

    def computed_rows(self, b: int) -> torch.Tensor:
        """(L_q,) bool: rows with at least one visible key (band rows not fully hidden by atten_mask)."""
        return self.dense(b).any(-1) if self.num_keys(b) else torch.zeros(self.num_rows(b), dtype=torch.bool)

    # ---------------------------------------------------------------------------------------- flex-style
    @cached_property
    def _tables(self) -> dict[str, torch.Tensor]:
        """Per-batch tensors ``mask_mod`` indexes: band offsets, lengths, left-padding origins."""
        batches = self.plan.batches
        device = self.plan.query.device

        def column(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)
        return {
            "lo": column([-_UNBOUNDED if p.band.lo is None else p.band.lo for p in batches]),
            "hi": column([_UNBOUNDED if p.band.hi is None else p.band.hi for p in batches]),
            "rows": column([p.q_len for p in batches]),
            "keys": column([self.plan.prefix_len + p.kv_len for p in batches]),
            "row0": column([p.mask_origin[0] for p in batches]),
            "col0": column([p.mask_origin[1] for p in batches]),
        }

    def mask_mod(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """flex_attention's ``mask_mod``: True where batch ``b``'s row ``q_idx`` sees key ``kv_idx`` (any head).

        Indices are batch-local integer tensors (any broadcastable shapes); rows >= L_q and keys >= P + L_kv are
        not visible. Only tensor operations, so it works under flex_attention's vmap and compile.
        """
        t = self._tables
        d = kv_idx - q_idx
        visible = (d >= t["lo"][b]) & (d <= t["hi"][b]) & (q_idx >= 0) & (q_idx < t["rows"][b]) \
            & (kv_idx >= 0) & (kv_idx < t["keys"][b])
        mask = self.plan.atten_mask
        if mask is None:
            return visible
        plane = b * int(mask.shape[0] > 1)
        col = (kv_idx + t["col0"][b]).clamp(0, mask.shape[-1] - 1)
        if self.plan.decode:
            return visible & ~mask[plane, col]
        row = (q_idx + t["row0"][b]).clamp(0, mask.shape[-2] - 1)
        return visible & ~mask[plane, row, col]
