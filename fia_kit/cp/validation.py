"""Check a merged context-parallel result against single-device float64 attention over the whole cache.

    golden = golden_attention(q, k, v, visible, scale)          # float64, torch SDPA, no FIA code involved
    report = compare("dcp decode, rank 0", merged, golden, local_lse, atol=1e-3, rtol=1e-3)
    report.worst, report.nan_rows, report.sentinels              # error in tolerance units, NaN rows, LSE values

Per row (a token and head of the merged output): the largest |actual - golden| / (atol + rtol |golden|) over D,
"units of the tolerance" (at most 1 agrees; NaN counts as infinitely far). ``sentinels`` counts the values the
rank's own FIA call wrote into its LSE: finite, about -1e12 (every key hidden by atten_mask), the no-key values of
``fia_kit.lse`` (+inf, -3.4e38, -3.40282e38), -inf, NaN (docs/context_parallel.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..lse import FIA_DECODE_NO_KEY_LSE, IFA_NO_KEY_LSE

__all__ = ["golden_attention", "row_errors", "sentinel_counts", "Report", "compare", "table"]

SENTINELS = ("finite", "~-1e12", "+inf", "-3.4e38", "-3.40282e38", "-inf", "nan")
MASKED_BELOW = -1e11  # a row whose every key atten_mask hides: -1e12 + ln(count) (spec 7 item 3)


def golden_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Softmax attention in float64 with torch SDPA: the single-device truth for one request.

    Args:
        query: (L_q, H, D). key: (L_k, N_kv, D). value: (L_k, N_kv, Dv); H a multiple of N_kv (query head h reads
            KV head h // (H / N_kv), spec 10). visible: (L_q, L_k) bool, True = the query row sees the key.
    Returns:
        (L_q, H, Dv) float64; a row that sees no key is 0.
    """
    group = query.shape[1] // key.shape[1]
    q = query.to(torch.float64).transpose(0, 1)
    k = key.to(torch.float64).repeat_interleave(group, dim=1).transpose(0, 1)
    v = value.to(torch.float64).repeat_interleave(group, dim=1).transpose(0, 1)
    seen = visible.any(dim=-1)
    mask = visible | ~seen[:, None]  # SDPA gives NaN on a row without keys: compute it on all keys, zero it below
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1).masked_fill(~seen[:, None, None], 0.0)


def row_errors(actual: torch.Tensor, golden: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """(...,) the worst error of each row (last axis reduced) in units of the tolerance; NaN rows are inf."""
    a, g = actual.detach().to(torch.float64), golden.detach().to(torch.float64)
    units = (a - g).abs() / (atol + rtol * g.abs())
    units = torch.where(torch.isnan(units), torch.full_like(units, float("inf")), units)
    return units.amax(dim=-1)


def sentinel_counts(lse: torch.Tensor) -> dict[str, int]:
    """How many LSE values are finite, ~-1e12 (a row atten_mask hides entirely), +inf (the prompt / split-fuse / MLA
    no-key value), -3.4e38 (float32(-3.4e38), the FIA decode kernel's), -3.40282e38 (float32's lowest, the legacy
    IFA kernel's), -inf or NaN (``fia_kit.lse``)."""
    x = lse.detach().to(torch.float32)
    fia_decode, lowest = x == FIA_DECODE_NO_KEY_LSE, x == IFA_NO_KEY_LSE
    masked = torch.isfinite(x) & ~lowest & ~fia_decode & (x < MASKED_BELOW)
    plain = torch.isfinite(x) & ~lowest & ~fia_decode & ~masked
    return {"finite": int(plain.sum()), "~-1e12": int(masked.sum()), "+inf": int((x == float("inf")).sum()),
            "-3.4e38": int(fia_decode.sum()), "-3.40282e38": int(lowest.sum()),
            "-inf": int((x == float("-inf")).sum()), "nan": int(x.isnan().sum())}


@dataclass(frozen=True)
class Report:
    """One rank's merged result against the golden.

    Attributes:
        name: what ran. rank: which rank. rows: rows compared (tokens x heads). worst: the largest row error in
        tolerance units (inf with NaN). bad_rows: rows beyond 1 unit (NaN included). nan_rows: rows with a NaN.
        sentinels: ``sentinel_counts`` of the rank's own FIA LSE. bad_tokens: token indices with a bad row.
    """

    name: str
    rank: int
    rows: int
    worst: float
    bad_rows: int
    nan_rows: int
    sentinels: dict[str, int]
    bad_tokens: tuple[int, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.bad_rows == 0

    def row(self) -> dict[str, str]:
        """The report as one row of strings (``table``), the same on every machine: the worst row error says only
        whether it is within the tolerance ("<= 1"), beyond it ("> 1") or NaN; ``worst`` has the number."""
        worst = "NaN" if self.nan_rows else ("<= 1" if self.worst <= 1 else "> 1")
        return {"case": self.name, "rank": str(self.rank), "rows": str(self.rows), "worst (tol units)": worst,
                "bad rows": str(self.bad_rows), "NaN rows": str(self.nan_rows),
                "own LSE": ", ".join(f"{k} {v}" for k, v in self.sentinels.items() if v)}


def compare(name: str, rank: int, actual: torch.Tensor, golden: torch.Tensor, local_lse: torch.Tensor,
            atol: float, rtol: float) -> Report:
    """A ``Report`` of ``actual`` (T, H, D) against ``golden`` (T, H, D), with the rank's LSE sentinels."""
    errors = row_errors(actual, golden, atol, rtol)  # (T, H)
    nan = torch.isnan(actual.to(torch.float64)).any(dim=-1)
    bad = errors > 1
    bad_tokens = tuple(int(t) for t in torch.nonzero(bad.any(dim=-1)).flatten())
    return Report(name, rank, int(errors.numel()), float(errors.max()) if errors.numel() else 0.0,
                  int(bad.sum()), int(nan.sum()), sentinel_counts(local_lse), bad_tokens)


def table(reports: Sequence[Report]) -> str:
    """Reports as an aligned text table (one row each)."""
    from ..capture import format_table

    return format_table([r.row() for r in reports])
