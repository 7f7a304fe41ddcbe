"""input_layout: which axis of each tensor is batch, sequence, head and head-dim (spec 4.1, 4.2).

Everything inside the kit works on one *canonical* 4-D form, ``(B, N, S, D)``. Packed layouts (TND, NTD) become
``(1, N, T, D)``: a single "batch row" whose T axis holds every batch's tokens back to back, located by cumulative
lengths. This module is the only place that knows how each layout lies in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import FIAArgumentError

# Per layout part: its rank and the permutation from the part's axes to canonical (B, N, S, D).
PART_RANK = {"BSH": 3, "BSND": 4, "BNSD": 4, "NBSD": 4, "TND": 3, "NTD": 3, "NSD": 3}
PACKED_PARTS = frozenset({"TND", "NTD"})

# Every input_layout of spec 4.2: name -> (query/key/value part, output part).
INPUT_LAYOUTS: dict[str, tuple[str, str]] = {
    "BSH": ("BSH", "BSH"),
    "BSND": ("BSND", "BSND"),
    "BNSD": ("BNSD", "BNSD"),
    "BNSD_BSND": ("BNSD", "BSND"),
    "BSH_BNSD": ("BSH", "BNSD"),
    "BSND_BNSD": ("BSND", "BNSD"),
    "BSH_NBSD": ("BSH", "NBSD"),
    "BSND_NBSD": ("BSND", "NBSD"),
    "BNSD_NBSD": ("BNSD", "NBSD"),
    "TND": ("TND", "TND"),
    "NTD": ("NTD", "NTD"),
    "TND_NTD": ("TND", "NTD"),
    "NTD_TND": ("NTD", "TND"),
    "NSD": ("NSD", "NSD"),
}


@dataclass(frozen=True)
class Layout:
    """A parsed input_layout: ``query`` is how query/key/value lie, ``out`` how attention_out is written."""

    name: str
    query: str
    out: str

    @property
    def packed(self) -> bool:
        """True for the TND family: lengths are cumulative and the LSE is (T, N, 1)."""
        return self.query in PACKED_PARTS

    @property
    def rank(self) -> int:
        return PART_RANK[self.query]

    @property
    def heads_explicit(self) -> bool:
        """Whether the tensors carry N as an axis (all but BSH), so num_heads must match it."""
        return self.query != "BSH"


def parse_layout(name: object) -> Layout:
    """Parse ``input_layout``; raises FIAArgumentError for names outside spec 4.2."""
    if not isinstance(name, str) or name not in INPUT_LAYOUTS:
        raise FIAArgumentError("input_layout", f"must be one of {', '.join(INPUT_LAYOUTS)} (spec 4.2)", name)
    query, out = INPUT_LAYOUTS[name]
    return Layout(name, query, out)


def to_canonical(x: torch.Tensor, part: str, num_heads: int) -> torch.Tensor:
    """View ``x`` laid out as ``part`` in canonical (B, N, S, D) form ((1, N, T, D) for packed parts).

    Args:
        x: a tensor in layout ``part``, e.g. (B, S, N*D) for BSH or (T, N, D) for TND.
        part: one of PART_RANK's keys.
        num_heads: N, used only to split BSH's H axis (H must be a multiple of it).
    Returns:
        A view (no copy) of shape (B, N, S, D), or (1, N, T, D) for TND/NTD.
    """
    if part == "BSH":
        b, s, h = x.shape
        return x.view(b, s, num_heads, h // num_heads).permute(0, 2, 1, 3)
    if part == "BSND":
        return x.permute(0, 2, 1, 3)
    if part == "BNSD":
        return x
    if part == "NBSD":
        return x.permute(1, 0, 2, 3)
    if part == "TND":
        return x.permute(1, 0, 2).unsqueeze(0)
    if part in ("NTD", "NSD"):
        return x.unsqueeze(0)
    raise AssertionError(part)


def from_canonical(x: torch.Tensor, part: str) -> torch.Tensor:
    """Inverse of ``to_canonical``: a contiguous tensor in layout ``part`` from (B, N, S, D) / (1, N, T, D)."""
    if part == "BSH":
        b, n, s, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, s, n * d)
    if part == "BSND":
        return x.permute(0, 2, 1, 3).contiguous()
    if part == "BNSD":
        return x.contiguous()
    if part == "NBSD":
        return x.permute(1, 0, 2, 3).contiguous()
    if part == "TND":
        return x[0].permute(1, 0, 2).contiguous()
    if part in ("NTD", "NSD"):
        return x[0].contiguous()
    raise AssertionError(part)


def convert_layout(x: torch.Tensor, source: str, target: str, num_heads: int) -> torch.Tensor:
    """Re-lay a tensor from one layout part to another, e.g. BSH -> BNSD.

    Packed and unpacked parts do not mix here (that needs lengths: see ``fia_kit.builders``), except that a
    single-batch BNSD/BSND/BSH tensor converts to TND/NTD and back.
    """
    return from_canonical(to_canonical(x, source, num_heads), target)
