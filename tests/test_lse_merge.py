"""fia_kit.merge_attention against SDPA over the concatenated keys (float64), with both no-key sentinels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from golden import FIA_DECODE_EMPTY_LSE, FLOAT32_LOWEST

import fia_kit
from fia_kit.reference import npu_fused_infer_attention_score as fia


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)


@pytest.mark.parametrize("s_q", [1, 3])  # decode (IFA sentinel for an empty part) and prefill (+inf)
def test_merge_equals_attention_over_all_keys(gen, s_q):
    b, n, d, scale = 2, 2, 8, 0.4
    q = torch.randn(b, n, s_q, d, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(b, n, 9, d, generator=gen, dtype=torch.float64) for _ in range(2))
    parts = [(0, 4), (4, 4), (4, 9)]  # the middle part has no keys at all
    outs, lses = [], []
    for lo, hi in parts:
        chunk_k = k[:, :, lo:hi] if hi > lo else k[:, :, :1]
        chunk_v = v[:, :, lo:hi] if hi > lo else v[:, :, :1]
        out, lse = fia(q, chunk_k, chunk_v, num_heads=n, input_layout="BNSD", scale=scale, softmax_lse_flag=True,
                       actual_seq_lengths_kv=[hi - lo] * b)
        outs.append(out)
        lses.append(lse)
    empty = lses[1]
    # a float BNSD decode takes the FIA route, whose decode sentinel is float32(-3.4e38) (fia_kernel_nonquant.h:346)
    assert (empty == FIA_DECODE_EMPTY_LSE).all() if s_q == 1 else torch.isposinf(empty).all()
    merged, lse = fia_kit.merge_attention(outs, lses)
    torch.testing.assert_close(merged, _sdpa(q, k, v, scale), atol=1e-10, rtol=1e-10)
    want_lse = torch.logsumexp(scale * q @ k.transpose(-1, -2), dim=-1, keepdim=True)
    torch.testing.assert_close(lse, want_lse)


def test_rows_with_no_keys_anywhere_merge_to_zero_without_nan():
    out = torch.randn(1, 1, 3, 4)
    lse_a = torch.tensor([FLOAT32_LOWEST, float("inf"), 0.5]).view(1, 1, 3, 1)
    lse_b = torch.tensor([float("inf"), FLOAT32_LOWEST, float("-inf")]).view(1, 1, 3, 1)
    merged, lse = fia_kit.merge_attention([torch.zeros_like(out), out], [lse_a, lse_b])
    assert not torch.isnan(merged).any() and not torch.isnan(lse).any()
    assert not merged[..., :2, :].any() and (lse[..., :2, :] == FLOAT32_LOWEST).all()
    torch.testing.assert_close(merged[..., 2, :], torch.zeros(1, 1, 4))  # only part a has keys: its zero output
    assert float(lse[0, 0, 2, 0]) == pytest.approx(0.5)


def test_merge_of_tnd_float16_parts(gen):
    """Two halves of each batch's keys (TND, cumulative lengths): the LSE is (T, N, 1), merged row by row."""
    n, d = 2, 64
    q = torch.randn(2, n, d, generator=gen).half()  # two batches of one query row
    halves_k = [torch.randn(6, n, d, generator=gen).half() for _ in range(2)]
    halves_v = [torch.randn(6, n, d, generator=gen).half() for _ in range(2)]
    parts = [fia(q, hk, hv, num_heads=n, input_layout="TND", scale=0.3, softmax_lse_flag=True,
                 actual_seq_lengths=[1, 2], actual_seq_lengths_kv=[3, 6]) for hk, hv in zip(halves_k, halves_v, strict=True)]
    merged, _ = fia_kit.merge_attention([p[0] for p in parts], [p[1] for p in parts])
    assert merged.dtype == torch.float16
    for i in range(2):  # batch i sees rows 3i..3i+2 of each half
        ks = torch.cat([hk[3 * i:3 * i + 3] for hk in halves_k]).transpose(0, 1).unsqueeze(0)
        vs = torch.cat([hv[3 * i:3 * i + 3] for hv in halves_v]).transpose(0, 1).unsqueeze(0)
        want = _sdpa(q[i].view(1, n, 1, d), ks, vs, 0.3)[0, :, 0]
        torch.testing.assert_close(merged[i].double(), want, atol=2e-3, rtol=2e-3)


def test_merge_refuses_mismatched_shapes():
    with pytest.raises(fia_kit.FIAArgumentError, match="outputs"):
        fia_kit.merge_attention([torch.zeros(1, 2, 3, 4)], [torch.zeros(1, 2, 3)])
    with pytest.raises(fia_kit.FIAArgumentError, match="outputs"):
        fia_kit.merge_attention([], [])


def test_the_fia_decode_sentinel_also_merges_with_weight_zero():
    """float32(-3.4e38) (the FIA route's decode sentinel, fia_kernel_nonquant.h:112) is a no-key LSE too."""
    from golden import FIA_DECODE_EMPTY_LSE

    out = torch.randn(1, 1, 2, 4, dtype=torch.float64)
    lse_a = torch.tensor([FIA_DECODE_EMPTY_LSE, FIA_DECODE_EMPTY_LSE], dtype=torch.float64).view(1, 1, 2, 1)
    lse_b = torch.tensor([0.25, FIA_DECODE_EMPTY_LSE], dtype=torch.float64).view(1, 1, 2, 1)
    merged, lse = fia_kit.merge_attention([torch.ones_like(out), out], [lse_a, lse_b])
    torch.testing.assert_close(merged[..., 0, :], out[..., 0, :])
    assert float(lse[0, 0, 0, 0]) == pytest.approx(0.25)
    assert not merged[..., 1, :].any() and float(lse[0, 0, 1, 0]) == FLOAT32_LOWEST
