"""fia_kit.npu_attention_update, the twin of torch_npu.npu_attention_update, against hand-worked kernel cases.

The expected values are worked by hand from ops-transformer's attention_update/op_kernel/decode_update.h
(snapshot 5778144): +inf -> -inf, m = max, lse_out = m + ln sum exp(lse - m), out = sum exp(lse - lse_out) out_k;
sp > 16 in rounds behind a dummy partition (lse -1e38, out 0). The limits are the host code's
(op_host/op_api/aclnn_attention_update.cpp).
"""

from __future__ import annotations

import math

import pytest
import torch

import fia_kit
from fia_kit.cp.update import DUMMY_LSE, check_arguments

INF = float("inf")
LOWEST = -3.4028234663852886e38  # float32's lowest: the legacy IFA kernel's no-key LSE
FIA_DECODE = -3.3999999521443642e38  # float32(-3.4e38): the FIA decode kernel's (fia_kit.lse)


def _rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _outs(*values: float, d: int = 8) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, d).contiguous()


def test_two_finite_partitions_hand_worked() -> None:
    # lse 0 and ln 3: weights 1/4 and 3/4; lse_out ln 4; out 0.25 * 1 + 0.75 * 5 = 4
    out, lse_out = fia_kit.npu_attention_update([_rows(0.0), _rows(math.log(3))], [_outs(1.0), _outs(5.0)], 1)
    assert torch.allclose(out, _outs(4.0), atol=1e-6)
    assert torch.allclose(lse_out, _rows(math.log(4)), atol=1e-6)


def test_plus_inf_becomes_minus_inf_and_gets_weight_zero() -> None:
    # the prompt route's no-key value (+inf) beside a finite partition: the finite one alone
    out, lse_out = fia_kit.npu_attention_update([_rows(INF, 2.0), _rows(0.5, INF)], [_outs(9.0, 3.0), _outs(7.0, 9.0)],
                                                1)
    assert torch.equal(out, _outs(7.0, 3.0))
    assert torch.equal(lse_out, _rows(0.5, 2.0))


@pytest.mark.parametrize("sentinel", [LOWEST, FIA_DECODE], ids=["legacy-ifa -FLT_MAX", "fia decode -3.4e38"])
def test_negative_sentinels_get_weight_zero(sentinel: float) -> None:
    out, lse_out = fia_kit.npu_attention_update([_rows(sentinel), _rows(1.5)], [_outs(0.0), _outs(2.0)], 1)
    assert torch.equal(out, _outs(2.0)) and torch.equal(lse_out, _rows(1.5))


@pytest.mark.parametrize("empty", [INF, -INF], ids=["+inf", "-inf"])
def test_a_row_empty_on_every_rank_is_nan(empty: float) -> None:
    # m = -inf, -inf - (-inf) = NaN: the kernel has no guard
    out, lse_out = fia_kit.npu_attention_update([_rows(empty, 0.0), _rows(empty, 0.0)], [_outs(0.0, 1.0)] * 2, 1)
    assert torch.isnan(out[0]).all() and torch.isnan(lse_out[0])
    assert torch.allclose(out[1], _outs(1.0)[0]) and torch.allclose(lse_out[1], _rows(math.log(2)))


def test_a_row_with_only_incremental_sentinels_sums_the_outputs() -> None:
    # every weight is exp(0) = 1: out = sum of the outputs (0 for the op's zero rows), lse_out stays float32 lowest
    out, lse_out = fia_kit.npu_attention_update([_rows(LOWEST, LOWEST)] * 3, [_outs(0.0, 1.0)] * 3, 1)
    assert torch.equal(out, _outs(0.0, 3.0))
    assert torch.equal(lse_out, _rows(LOWEST, LOWEST))


def test_more_than_sixteen_partitions_merge_in_rounds() -> None:
    sp = 20
    lse = [_rows(float(k) / 10, INF) for k in range(sp)]
    outs = [_outs(float(k), 5.0) for k in range(sp)]
    out, lse_out = fia_kit.npu_attention_update(lse, outs, 1)
    exact_lse = torch.logsumexp(torch.tensor([k / 10 for k in range(sp)], dtype=torch.float64), 0)
    weights = torch.softmax(torch.tensor([k / 10 for k in range(sp)], dtype=torch.float64), 0)
    assert abs(float(lse_out[0]) - float(exact_lse)) < 1e-5
    assert abs(float(out[0, 0]) - float((weights * torch.arange(sp, dtype=torch.float64)).sum())) < 1e-4
    # a row empty everywhere: the dummy partition keeps it finite (out 0, lse_out -1e38), unlike sp <= 16
    assert torch.equal(out[1], torch.zeros(8)) and float(lse_out[1]) == pytest.approx(DUMMY_LSE, rel=1e-6)


def test_update_type_zero_returns_none_and_the_dtype_of_local_out() -> None:
    out, lse_out = fia_kit.npu_attention_update([_rows(0.0)], [_outs(1.5).to(torch.bfloat16)])
    assert lse_out is None and out.dtype == torch.bfloat16 and out.shape == (1, 8)


def test_empty_rows() -> None:
    out, lse_out = fia_kit.npu_attention_update([torch.empty(0)], [torch.empty(0, 16)], 1)
    assert out.shape == (0, 16) and lse_out.shape == (0,)


def test_agrees_with_merge_attention_where_both_are_defined() -> None:
    gen = torch.Generator().manual_seed(3)
    lses = [torch.randn(12, generator=gen) * 3 for _ in range(4)]
    outs = [torch.randn(12, 32, generator=gen) for _ in range(4)]
    out, lse_out = fia_kit.npu_attention_update(lses, outs, 1)
    ref_out, ref_lse = fia_kit.merge_attention([o[:, None] for o in outs], [x[:, None, None] for x in lses])
    assert torch.allclose(out, ref_out[:, 0], atol=1e-5) and torch.allclose(lse_out, ref_lse[:, 0, 0], atol=1e-5)


@pytest.mark.parametrize(("lse", "local_out", "update_type", "parameter"), [
    ([_rows(0.0)], [_outs(0.0)], 2, "update_type"),
    ([], [], 0, "lse"),
    ([_rows(0.0)] * 129, [_outs(0.0)] * 129, 0, "lse"),
    ([_rows(0.0)] * 2, [_outs(0.0)], 0, "local_out"),
    ([_rows(0.0).double()], [_outs(0.0)], 0, "lse[0]"),
    ([_rows(0.0)], [_outs(0.0).to(torch.int32)], 0, "local_out[0]"),
    ([_rows(0.0)] * 2, [_outs(0.0), _outs(0.0).half()], 0, "local_out[1]"),
    ([_rows(0.0)[None]], [_outs(0.0)], 0, "lse[0]"),
    ([_rows(0.0)], [_outs(0.0)[None]], 0, "local_out[0]"),
    ([_rows(0.0), _rows(0.0, 1.0)], [_outs(0.0)] * 2, 0, "lse[1]"),
    ([_rows(0.0)], [_outs(0.0, d=12)], 0, "local_out"),
    ([_rows(0.0)], [_outs(0.0, d=520)], 0, "local_out"),
    ([_rows(0.0, 1.0)], [_outs(0.0)], 0, "lse + local_out"),
    (torch.zeros(1, 1), [_outs(0.0)], 0, "lse"),
])
def test_host_code_limits_raise_before_compute(lse, local_out, update_type, parameter) -> None:
    with pytest.raises(fia_kit.FIAArgumentError) as info:
        fia_kit.npu_attention_update(lse, local_out, update_type)
    assert info.value.parameter == parameter and "aclnn_attention_update.cpp" in info.value.rule


def test_partition_limit_depends_on_the_product() -> None:
    check_arguments([_rows(0.0)] * 128, [_outs(0.0)] * 128, 0)  # A2/A3: up to 128
    with fia_kit.target(product="Ascend950"), pytest.raises(fia_kit.FIAArgumentError) as info:
        check_arguments([_rows(0.0)] * 17, [_outs(0.0)] * 17, 0)
    assert "16" in info.value.rule and info.value.target == "Ascend950 / CANN 9.1"


def test_look_alike_op_has_torch_npus_schema_and_is_captured(tmp_path) -> None:
    from fia_kit.backends import lookalike

    op = torch.ops.fia_kit.npu_attention_update.default
    assert str(op._schema) == "fia_kit::" + lookalike.UPDATE_SCHEMA
    lse, outs = [_rows(0.0, INF), _rows(1.0, 2.0)], [_outs(1.0, 2.0), _outs(3.0, 4.0)]
    path = tmp_path / "update.fiacap"
    with fia_kit.capture(path, flush_seconds=0):
        out, lse_out = op(lse, outs, 0)
        fia_kit.npu_attention_update(lse, outs, 1)
    assert lse_out is None and torch.equal(out, fia_kit.npu_attention_update(lse, outs)[0])
    calls = fia_kit.load_capture(path)
    assert [(c.entry, c.form) for c in calls] == [("torch.ops.fia_kit.npu_attention_update.default", "update"),
                                                  ("fia_kit.npu_attention_update", "update")]
    got_lse, got_outs, update_type = calls[1].update_args()
    assert update_type == 1 and all(torch.equal(a, b) for a, b in zip(got_lse + got_outs, lse + outs, strict=True))
    with pytest.raises(fia_kit.FIAArgumentError):
        calls[0].to_fia_call()


def test_fake_kernel_traces_with_torch_compile() -> None:
    def merge(a, b, x, y):
        return torch.ops.fia_kit.npu_attention_update([a, b], [x, y], 1)

    lse, outs = [_rows(0.0, 1.0), _rows(2.0, 3.0)], [_outs(1.0, 2.0), _outs(3.0, 4.0)]
    out, lse_out = torch.compile(merge, backend="aot_eager", fullgraph=True)(*lse, *outs)
    ref_out, ref_lse = fia_kit.npu_attention_update(lse, outs, 1)
    assert torch.equal(out, ref_out) and torch.equal(lse_out, ref_lse)


def test_look_alike_schema_equals_the_wheels() -> None:
    """torch_npu 2.13.0's yaml registers the schema the look-alike op copies (tests/npu_wheel.py; skips without
    the wheel outside CI)."""
    import re

    from npu_wheel import wheel_text

    from fia_kit.backends import lookalike

    found = [m.group(1) for m in re.finditer(r"func:\s*(npu_attention_update\(.+)$",
                                             wheel_text("torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"),
                                             re.MULTILINE)]

    def normal(schema: str) -> str:
        return str(torch._C.parse_schema("x::" + " ".join(schema.split()))).removeprefix("x::")

    assert [normal(s) for s in found] == [normal(lookalike.UPDATE_SCHEMA)]


def test_check_order_follows_the_product() -> None:
    # 200 partitions of float64 LSE: A2/A3 checks dtypes first, Ascend950 the partition count first
    lse, outs = [_rows(0.0).double()] * 200, [_outs(0.0)] * 200
    with pytest.raises(fia_kit.FIAArgumentError) as a3:
        check_arguments(lse, outs, 0)
    with fia_kit.target(product="Ascend950"), pytest.raises(fia_kit.FIAArgumentError) as a950:
        check_arguments(lse, outs, 0)
    assert (a3.value.parameter, a950.value.parameter) == ("lse[0]", "lse")


@pytest.mark.parametrize("sp", [1, 2, 15, 16, 17, 31, 46, 128])
def test_finite_partitions_match_a_float64_merge_for_any_count(sp: int) -> None:
    # one round up to 16, rounds of 15 behind the dummy above: the same merge within float32 rounding
    gen = torch.Generator().manual_seed(sp)
    lses = torch.randn(sp, 24, generator=gen, dtype=torch.float64) * 4
    outs = torch.randn(sp, 24, 16, generator=gen, dtype=torch.float64)
    out, lse_out = fia_kit.npu_attention_update(list(lses.float()), list(outs.float()), 1)
    exact_lse = torch.logsumexp(lses.float().double(), 0)
    exact = (torch.softmax(lses.float().double(), 0)[..., None] * outs.float().double()).sum(0)
    assert torch.allclose(lse_out.double(), exact_lse, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out.double(), exact, atol=1e-5, rtol=1e-4)
