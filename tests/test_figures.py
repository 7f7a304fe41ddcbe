"""Figure functions: their data equals what the spec's rules give, written here with plain loops (spec 6.3, 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fia_kit import figures as F
from fia_kit.call import parse_call
from fia_kit.masks import compressed_causal_mask
from fia_kit.reference import explain, run_call

INT_MAX = 2147483647
VIS, MASKED, OUT, PAD = F.VISIBLE, F.MASKED, F.OUTSIDE_BAND, F.PADDING


def _call(q, k, v, **kw):
    kw.setdefault("softmax_lse_flag", True)
    return explain("v1", q, k, v, **kw), run_call(parse_call("v1", q, k, v, kw))


def expected_codes(mode, q_len, kv_len, s_q, s_kv, prefix=0, pre=INT_MAX, nxt=INT_MAX, mask=None):
    """The spec 6.3 table for one batch, cell by cell: 3 visible, 2 hidden by the mask, 1 outside the band, 0 pad."""
    delta = prefix + kv_len - q_len
    codes = np.zeros((s_q, prefix + s_kv), dtype=np.int64)
    for i in range(q_len):
        for j in range(prefix + kv_len):
            if mode == 0 and mask is not None:
                in_band = -pre <= j - i <= nxt
            elif mode in (0, 1):
                in_band = True
            elif mode == 2:
                in_band = j <= i
            elif mode == 3:
                in_band = j <= i + delta
            else:
                in_band = i + delta - pre <= j <= i + delta + nxt
            hidden = mask is not None and mode in (0, 1) and bool(mask[i][j])
            codes[i, j] = OUT if not in_band else (MASKED if hidden else VIS)
    return codes


def _qkv(b, n, s_q, s_kv, d=8, n_kv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_kv = n_kv or n
    return (torch.randn(b, n, s_q, d, generator=g), torch.randn(b, n_kv, s_kv, d, generator=g),
            torch.randn(b, n_kv, s_kv, d, generator=g))


@pytest.mark.parametrize("mode,pre,nxt", [(2, INT_MAX, INT_MAX), (3, INT_MAX, INT_MAX), (4, 2, 1), (4, 0, 3)])
def test_visibility_matches_spec_table_for_compressed_modes(mode, pre, nxt):
    q, k, v = _qkv(2, 2, 6, 9)
    problem, result = _call(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=mode, pre_tokens=pre,
                            next_tokens=nxt, atten_mask=compressed_causal_mask(), actual_seq_lengths=[6, 4],
                            actual_seq_lengths_kv=[9, 5])
    for b, (lq, lkv) in enumerate([(6, 9), (4, 5)]):
        z = F.visibility_figure(problem, result, b).data[0].z
        np.testing.assert_array_equal(np.asarray(z), expected_codes(mode, lq, lkv, 6, 9, pre=pre, nxt=nxt))


def test_mode3_diagonal_shifts_by_skv_minus_sq_and_rows_before_it_are_zero():
    q, k, v = _qkv(1, 1, 4, 10)
    problem, result = _call(q, k, v, num_heads=1, input_layout="BNSD", sparse_mode=3,
                            atten_mask=compressed_causal_mask())
    fig = F.visibility_figure(problem, result)
    z = np.asarray(fig.data[0].z)
    assert [int((row == VIS).sum()) for row in z] == [7, 8, 9, 10]  # query i sees keys 0..i + 6
    diag = next(t for t in fig.data if t.name and t.name.startswith("right-down diagonal"))
    assert diag.name.endswith("+ 6")
    # more queries than keys: the first S_q - S_kv rows see nothing and are written as zero (spec 7)
    q, k, v = _qkv(1, 1, 7, 4)
    problem, result = _call(q, k, v, num_heads=1, input_layout="BNSD", sparse_mode=3,
                            atten_mask=compressed_causal_mask())
    strip = np.asarray(F.visibility_figure(problem, result).data[1].z).ravel()
    assert strip.tolist() == [2, 2, 2, 1, 1, 1, 1]  # OUT_OF_BAND x3, then COMPUTED


def test_user_mask_prefix_and_padding_in_mode0():
    g = torch.Generator().manual_seed(3)
    q, k, v = _qkv(1, 2, 5, 6)
    kp, vp = torch.randn(1, 2, 3, 8, generator=g), torch.randn(1, 2, 3, 8, generator=g)
    mask = torch.rand(1, 5, 9, generator=g) > 0.6
    mask[0, 2] = True  # a fully masked row
    problem, result = _call(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=0, atten_mask=mask,
                            pre_tokens=3, next_tokens=2, actual_seq_lengths=[4], actual_seq_lengths_kv=[5],
                            key_shared_prefix=kp, value_shared_prefix=vp, actual_shared_prefix_len=[2],
                            inner_precise=2)
    fig = F.visibility_figure(problem, result)
    expected = expected_codes(0, 4, 5, 5, 6, prefix=2, pre=3, nxt=2, mask=mask[0].tolist())
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), expected)
    strip = np.asarray(fig.data[1].z).ravel().tolist()
    assert strip[2] == 3 and strip[4] == 0  # fully masked row, padding row
    assert any("P=2" in (a.text or "") for a in fig.layout.annotations)


def test_packed_layout_shows_each_batch_slice():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(7, 2, 8, generator=g), torch.randn(9, 2, 8, generator=g)
    problem, result = _call(q, k, k, num_heads=2, input_layout="TND", sparse_mode=3,
                            atten_mask=compressed_causal_mask(), actual_seq_lengths=[3, 7],
                            actual_seq_lengths_kv=[5, 9])
    z = np.asarray(F.visibility_figure(problem, result, 1).data[0].z)
    np.testing.assert_array_equal(z, expected_codes(3, 4, 4, 4, 4))


def test_pool_takes_block_max_and_big_maps_are_downsampled():
    values = torch.arange(35, dtype=torch.float64).view(5, 7)
    pooled, rs, cs = F.pool(values, "max", max_cells=2)
    assert (rs, cs) == (3, 4)
    expected = [[max(values[r, c] for r in range(i * 3, min(5, i * 3 + 3)) for c in range(j * 4, min(7, j * 4 + 4)))
                 for j in range(2)] for i in range(2)]
    assert pooled.tolist() == expected
    q, k, v = _qkv(1, 1, 600, 700, d=4)
    problem, result = _call(q, k, v, num_heads=1, input_layout="BNSD", sparse_mode=2,
                            atten_mask=compressed_causal_mask())
    fig = F.visibility_figure(problem, result)
    assert max(np.asarray(fig.data[0].z).shape) <= F.MAX_CELLS
    assert "downsampled" in fig.layout.title.text


def test_probabilities_equal_an_independent_softmax_and_invalid_rows_are_zero():
    q, k, v = _qkv(1, 4, 5, 3, n_kv=2)
    problem, _ = _call(q, k, v, num_heads=4, num_key_value_heads=2, input_layout="BNSD", sparse_mode=3,
                       atten_mask=compressed_causal_mask(), scale=0.5)
    fig = F.probabilities_figure(problem, 0, heads=[1, 3])
    assert "kv head 0" in fig.layout.annotations[0].text and "kv head 1" in fig.layout.annotations[1].text
    for panel, n in enumerate([1, 3]):
        got = np.asarray(fig.data[panel].z)
        scores = 0.5 * q[0, n] @ k[0, n // 2].T
        for i in range(5):
            visible = [j for j in range(3) if j <= i - 2]
            if not visible:
                assert (got[i] == 0).all()
                continue
            e = [math.exp(scores[i, j]) if j in visible else 0.0 for j in range(3)]
            np.testing.assert_allclose(got[i], np.array(e) / sum(e), rtol=1e-5, atol=1e-7)


def test_lse_figure_marks_rows_not_computed():
    q, k, v = _qkv(1, 2, 5, 3)
    problem, result = _call(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=3,
                            atten_mask=compressed_causal_mask())
    fig = F.lse_figure(problem, result)
    assert "natural log" in fig.layout.title.text
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[:2]).all() and np.isfinite(z[2:]).all()
    assert list(fig.data[1].y) == [0, 1]
    scores = q[0, 1, 4] @ k[0, 1].T
    assert z[4, 1] == pytest.approx(float(torch.logsumexp(scores, 0)), rel=1e-5)


def test_difference_figure_reports_max_error_against_tolerance():
    a = torch.zeros(2, 3, 4)
    b = a.clone()
    b[1, 2, 3] = 0.25
    fig = F.difference_figure(a, b, 0.1, ("npu", "reference"))
    assert "max 0.25 EXCEEDS tolerance 0.1" in fig.layout.title.text
    z = np.asarray(fig.data[0].z)
    assert z.shape == (6, 4) and z[5, 3] == 0.25 and z.sum() == 0.25


def test_layout_figure_walks_memory_in_layout_order():
    fig = F.layout_figure("BSND_NBSD", batch=2, seq=2, heads=2)
    inputs, outputs = fig.data
    assert list(inputs.text[0][:3]) == ["b0 s0<br>n0", "b0 s0<br>n1", "b0 s1<br>n0"]  # BSND: n fastest
    assert list(outputs.text[0][:3]) == ["b0 s0<br>n0", "b0 s1<br>n0", "b1 s0<br>n0"]  # NBSD: s, then b
    assert len(F.layout_figure("BNSD").data) == 1


def test_timing_and_roofline_charts():
    fig = F.timing_chart([{"name": "ref", "median_ms": 2.0, "backend": "a"},
                          {"name": "npu", "median_ms": 0.5, "backend": "b"}], group="backend")
    assert [list(t.x) for t in fig.data] == [[2.0], [0.5]]
    roof = F.roofline_chart([{"label": "fia", "intensity": 2.0, "flops": 1e9}], peak_flops=1e12,
                            peak_bandwidth=1e11)
    xs, ys = np.asarray(roof.data[0].x), np.asarray(roof.data[0].y)
    np.testing.assert_allclose(ys, np.minimum(1e12, 1e11 * xs))


def test_lse_figure_leaves_fully_masked_rows_out_of_the_colour_scale():
    q, k, v = _qkv(1, 1, 3, 4)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 1] = True  # row 1 sees nothing: with inner_precise 0 its LSE is about -1e12 (spec 7)
    problem, result = _call(q, k, v, num_heads=1, input_layout="BNSD", atten_mask=mask)
    fig = F.lse_figure(problem, result)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[1]).all() and np.isfinite(z[[0, 2]]).all()
    assert list(fig.data[1].y) == [1] and "fully masked" in fig.data[1].text[0]
