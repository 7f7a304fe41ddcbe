"""The visibility figure's map is pooled row tile by row tile: same blocks as pooling the whole map, bounded memory.

The dense maps here come from the spec 6.3 band rule written cell by cell (not from the kit), then pooled with
``figures.pool``; the large case is checked against the causal rule block by block and its peak memory is measured
with ``fia_kit.profiling.peak_memory`` (no timing).
"""

from __future__ import annotations

import math

import pytest
import torch
from isolation import in_child

from fia_kit import figures as F
from fia_kit.masks import compressed_causal_mask
from fia_kit.profiling import peak_memory
from fia_kit.reference import explain

INT_MAX = 2147483647


def hand_map(mode, q_len, kv_len, s_q, s_kv, prefix=0, pre=INT_MAX, nxt=INT_MAX, mask=None) -> torch.Tensor:
    """(S_q, P + S_kv) codes of one batch by spec 6.3: 3 visible, 2 hidden by atten_mask, 1 outside the band, 0 pad."""
    delta = prefix + kv_len - q_len
    out = torch.zeros(s_q, prefix + s_kv, dtype=torch.int64)
    for i in range(q_len):
        for j in range(prefix + kv_len):
            d = j - i
            band = {0: (-pre <= d <= nxt) if mask is not None else True, 1: True, 2: d <= 0,
                    3: d <= delta, 4: delta - pre <= d <= delta + nxt}[mode]
            hidden = mask is not None and mode in (0, 1) and bool(mask[i][j])
            out[i, j] = (2 if hidden else 3) if band else 1
    return out


def _qkv(s_q, s_kv, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 1, s_q, d, generator=g), torch.randn(1, 1, s_kv, d, generator=g),
            torch.randn(1, 1, s_kv, d, generator=g))


def _cases():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(1, 23, 31, generator=g) > 0.5
    return {
        "causal mode 3, padded rows and keys": (dict(sparse_mode=3, atten_mask=compressed_causal_mask(),
                                                     actual_seq_lengths=[19], actual_seq_lengths_kv=[27]),
                                                (3, 19, 27, 23, 31)),
        "band mode 4": (dict(sparse_mode=4, atten_mask=compressed_causal_mask(), pre_tokens=5, next_tokens=2),
                        (4, 23, 31, 23, 31, 0, 5, 2)),
        "mode 0 user mask and band": (dict(sparse_mode=0, atten_mask=mask, pre_tokens=6, next_tokens=3,
                                           actual_seq_lengths=[21]),
                                      (0, 21, 31, 23, 31, 0, 6, 3, mask[0].tolist())),
    }


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("max_cells,tile_cells", [(4, 1), (5, 64), (7, 10**6), (256, 1)])
def test_tiled_pooling_equals_pooling_the_hand_written_map(name, max_cells, tile_cells, monkeypatch):
    kwargs, rule = _cases()[name]
    q, k, v = _qkv(23, 31)
    problem = explain("v1", q, k, v, num_heads=1, input_layout="BNSD", **kwargs)
    monkeypatch.setattr(F, "VISIBILITY_TILE_CELLS", tile_cells)  # 1: one block row per tile
    pooled, rs, cs = F.pooled_visibility_codes(problem, 0, max_cells)
    expected, ers, ecs = F.pool(hand_map(*rule), "max", max_cells)
    assert (rs, cs) == (ers, ecs)
    assert torch.equal(pooled, expected)
    assert torch.equal(F.visibility_codes(problem, 0).to(torch.int64), hand_map(*rule))


def test_8192_squared_map_is_pooled_in_bounded_memory():
    """In a child process: the peak RSS it bounds counts only this measurement (tests/isolation.py)."""
    in_child(pool_8192_squared_map_and_bound_its_memory)


def pool_8192_squared_map_and_bound_its_memory() -> None:
    s = 8192
    q, k, v = _qkv(s, s, d=1)
    problem = explain("v1", q, k, v, num_heads=1, input_layout="BNSD", sparse_mode=3,
                      atten_mask=compressed_causal_mask())
    F.pooled_visibility_codes(problem, 0)  # warm-up: the first call's lazy initialisation is not the map's memory
    result = {}
    peak, method = peak_memory(lambda: result.update(z=F.pooled_visibility_codes(problem, 0)), torch.device("cpu"))
    z, rs, cs = result["z"]
    assert (rs, cs) == (32, 32) and z.shape == (256, 256)
    # causal, S_q = S_kv: block (I, J) holds a visible key iff J <= I, else every cell is outside the band
    block = torch.arange(256)
    assert torch.equal(z, torch.where(block[None, :] <= block[:, None], 3.0, 1.0).to(torch.float64))
    if peak is None:
        pytest.skip("peak RSS not measurable here (no /proc/self/clear_refs)")
    dense_int64 = s * s * 8
    assert peak < 48 * 2**20 < dense_int64 / 10, f"{peak / 2**20:.1f} MB by {method}"
    assert math.isfinite(z.sum().item())
