"""Left padding (v1 query_padding_size / kv_padding_size, spec 15): equals right padding on shifted inputs."""

from __future__ import annotations

import pytest
import torch

from fia_kit.errors import FIAArgumentError
from fia_kit.reference import npu_fused_infer_attention_score as op

B, N, SQ, SKV, D = 2, 2, 6, 10, 16
LQ, LKV, QPAD, KVPAD = [3, 4], [5, 7], 1, 2
KW = dict(num_heads=N, input_layout="BNSD", scale=0.25)


def starts(s: int, pad: int, lengths: list[int]) -> list[int]:
    return [s - pad - n for n in lengths]


def to_right(x: torch.Tensor, axis_starts: list[int], lengths: list[int], dim: int) -> torch.Tensor:
    """Move batch b's window [start, start + L) on ``dim`` to [0, L); the rest becomes 0."""
    out = torch.zeros_like(x)
    for b, (s, n) in enumerate(zip(axis_starts, lengths, strict=True)):
        out[b].narrow(dim - 1, 0, n).copy_(x[b].narrow(dim - 1, s, n))
    return out


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"q": torch.randn(B, N, SQ, D, generator=g), "k": torch.randn(B, N, SKV, D, generator=g),
            "v": torch.randn(B, N, SKV, D, generator=g), "pse": torch.randn(B, N, SQ, SKV, generator=g),
            "mask": torch.rand(B, 1, SQ, SKV, generator=g) > 0.7}


def right_padded(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    qs, ks = starts(SQ, QPAD, LQ), starts(SKV, KVPAD, LKV)
    mask = torch.ones_like(data["mask"])
    pse = torch.zeros_like(data["pse"])
    for b in range(B):
        mask[b, :, :LQ[b], :LKV[b]] = data["mask"][b, :, qs[b]:qs[b] + LQ[b], ks[b]:ks[b] + LKV[b]]
        pse[b, :, :LQ[b], :LKV[b]] = data["pse"][b, :, qs[b]:qs[b] + LQ[b], ks[b]:ks[b] + LKV[b]]
    return {"q": to_right(data["q"], qs, LQ, 2), "k": to_right(data["k"], ks, LKV, 2),
            "v": to_right(data["v"], ks, LKV, 2), "pse": pse, "mask": mask}


def padding() -> dict[str, torch.Tensor]:
    return dict(query_padding_size=torch.tensor([QPAD]), kv_padding_size=torch.tensor([KVPAD]),
                actual_seq_lengths=LQ, actual_seq_lengths_kv=LKV)


def assert_same_rows(left: torch.Tensor, right: torch.Tensor) -> None:
    """Valid rows at the left-padded physical positions equal the right-padded ones; other rows are 0."""
    qs = starts(SQ, QPAD, LQ)
    torch.testing.assert_close(to_right(left, qs, LQ, 2), right)
    for b in range(B):
        rows = torch.ones(SQ, dtype=torch.bool)
        rows[qs[b]:qs[b] + LQ[b]] = False
        assert (left[b][:, rows] == 0).all()


@pytest.mark.parametrize("with_mask,with_pse", [(False, False), (True, False), (False, True), (True, True)])
def test_left_padding_equals_right_padding(data: dict[str, torch.Tensor], with_mask: bool, with_pse: bool) -> None:
    right = right_padded(data)
    extra_l = {**({"atten_mask": data["mask"]} if with_mask else {}), **({"pse_shift": data["pse"]} if with_pse else {})}
    extra_r = {**({"atten_mask": right["mask"]} if with_mask else {}), **({"pse_shift": right["pse"]} if with_pse else {})}
    out_l, lse_l = op(data["q"], data["k"], data["v"], **KW, **padding(), **extra_l, softmax_lse_flag=True)
    out_r, lse_r = op(right["q"], right["k"], right["v"], **KW, actual_seq_lengths=LQ, actual_seq_lengths_kv=LKV,
                      **extra_r, softmax_lse_flag=True)
    assert_same_rows(out_l, out_r)
    torch.testing.assert_close(to_right(lse_l, starts(SQ, QPAD, LQ), LQ, 2)[..., 0],
                               to_right(lse_r, [0, 0], LQ, 2)[..., 0])


def test_mode0_with_left_padding_ignores_pre_next(data: dict[str, torch.Tensor]) -> None:
    """Spec 15: sparse_mode 0 with left padding forces pre/next to INT_MAX (only the mask applies)."""
    right = right_padded(data)
    out_l, _ = op(data["q"], data["k"], data["v"], **KW, **padding(), atten_mask=data["mask"], pre_tokens=0,
                  next_tokens=0)
    out_r, _ = op(right["q"], right["k"], right["v"], **KW, actual_seq_lengths=LQ, actual_seq_lengths_kv=LKV,
                  atten_mask=right["mask"])
    assert_same_rows(out_l, out_r)


def test_decode_kv_left_padding_with_mask(data: dict[str, torch.Tensor]) -> None:
    q = data["q"][:, :, :1]
    mask = data["mask"][:, 0, 0]  # (B, S_kv)
    ks = starts(SKV, KVPAD, LKV)
    out_l, _ = op(q, data["k"], data["v"], **KW, kv_padding_size=torch.tensor([KVPAD]), actual_seq_lengths_kv=LKV,
                  atten_mask=mask)
    right_mask = torch.ones_like(mask)
    for b in range(B):
        right_mask[b, :LKV[b]] = mask[b, ks[b]:ks[b] + LKV[b]]
    out_r, _ = op(q, to_right(data["k"], ks, LKV, 2), to_right(data["v"], ks, LKV, 2), **KW,
                  actual_seq_lengths_kv=LKV, atten_mask=right_mask)
    torch.testing.assert_close(out_l, out_r)


def test_left_padding_with_per_token_antiquant_reads_physical_positions(data: dict[str, torch.Tensor]) -> None:
    g = torch.Generator().manual_seed(5)
    k = torch.randint(-128, 128, (B, N, SKV, D), generator=g, dtype=torch.int8)
    v = torch.randint(-128, 128, (B, N, SKV, D), generator=g, dtype=torch.int8)
    ks_, vs_ = torch.rand(1, B, SKV, generator=g) + 0.1, torch.rand(1, B, SKV, generator=g) + 0.1
    q = data["q"][:, :, :1]
    out_l, _ = op(q, k, v, **KW, kv_padding_size=torch.tensor([KVPAD]), actual_seq_lengths_kv=LKV,
                  key_antiquant_scale=ks_, value_antiquant_scale=vs_, key_antiquant_mode=1, value_antiquant_mode=1)
    kf = ks_[0].view(B, 1, SKV, 1) * k.float()
    vf = vs_[0].view(B, 1, SKV, 1) * v.float()
    starts_kv = starts(SKV, KVPAD, LKV)
    out_r, _ = op(q, to_right(kf, starts_kv, LKV, 2), to_right(vf, starts_kv, LKV, 2), **KW,
                  actual_seq_lengths_kv=LKV)
    torch.testing.assert_close(out_l, out_r)


def test_padding_without_lengths_is_right_padding(data: dict[str, torch.Tensor]) -> None:
    out_l, _ = op(data["q"], data["k"], data["v"], **KW, query_padding_size=torch.tensor([QPAD]),
                  kv_padding_size=torch.tensor([KVPAD]))
    out_r, _ = op(data["q"], data["k"], data["v"], **KW)
    torch.testing.assert_close(out_l, out_r)


def test_negative_padding_counts_as_zero_and_only_element_0_is_read(data: dict[str, torch.Tensor]) -> None:
    out_l, _ = op(data["q"], data["k"], data["v"], **KW, query_padding_size=torch.tensor([-3, 2]),
                  kv_padding_size=torch.tensor([0, 5]), actual_seq_lengths=LQ, actual_seq_lengths_kv=LKV)
    q = to_right(data["q"], starts(SQ, 0, LQ), LQ, 2)
    out_r, _ = op(q, to_right(data["k"], starts(SKV, 0, LKV), LKV, 2), to_right(data["v"], starts(SKV, 0, LKV), LKV, 2),
                  **KW, actual_seq_lengths=LQ, actual_seq_lengths_kv=LKV)
    torch.testing.assert_close(to_right(out_l, starts(SQ, 0, LQ), LQ, 2), out_r)


@pytest.mark.parametrize("extra,parameter", [
    (dict(kv_padding_size=torch.tensor([9])), "kv_padding_size + actual_seq_lengths_kv"),
    (dict(kv_padding_size=torch.tensor([1], dtype=torch.int32)), "kv_padding_size"),
    (dict(key_shared_prefix=torch.zeros(1, N, 4, D), value_shared_prefix=torch.zeros(1, N, 4, D)),
     "query_padding_size/kv_padding_size + key_shared_prefix"),
    (dict(quant_scale2=torch.ones(N, D)), "quant_scale2 + kv_padding_size"),
])
def test_left_padding_validation(data: dict[str, torch.Tensor], extra: dict, parameter: str) -> None:
    kw = {**padding(), **extra}
    with pytest.raises(FIAArgumentError) as info:
        op(data["q"], data["k"], data["v"], **KW, **kw)
    assert info.value.parameter == parameter, str(info.value)


def test_left_padding_rejects_paging_and_packed() -> None:
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(4, 16, N * D, generator=g)
    with pytest.raises(FIAArgumentError) as info:
        op(torch.randn(1, 1, N * D), cache, cache, num_heads=N, block_table=torch.zeros(1, 2, dtype=torch.int32),
           block_size=16, actual_seq_lengths_kv=[8], kv_padding_size=torch.tensor([1]))
    assert info.value.parameter == "query_padding_size/kv_padding_size + block_table"
    t = torch.randn(8, N, D, generator=g)
    with pytest.raises(FIAArgumentError) as info:
        op(t, t, t, num_heads=N, input_layout="TND", actual_seq_lengths=[8], actual_seq_lengths_kv=[8],
           kv_padding_size=torch.tensor([1]))
    assert info.value.parameter == "query_padding_size/kv_padding_size + input_layout"
