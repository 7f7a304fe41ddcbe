"""fia_kit.targets: the product/version table, how a target is chosen, and the rules that read it (spec 25.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import attention

import fia_kit
from fia_kit import FIAArgumentError, targets
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2

DOCS = Path(__file__).resolve().parents[1] / "docs" / "targets.md"


def test_default_is_the_newest_a2_a3(monkeypatch):
    monkeypatch.delenv(targets.ENV_VARIABLE, raising=False)
    assert targets.current() == fia_kit.Target("A3", targets.CANN_VERSIONS[-1])


def test_environment_variable_and_context_manager(monkeypatch):
    monkeypatch.setenv(targets.ENV_VARIABLE, "A2/8.3")
    assert str(targets.current()) == "A2 / CANN 8.3"
    with fia_kit.target(product="Ascend950") as t:
        assert targets.current() is t and t.product == "Ascend950"
        with fia_kit.target(product="A3", cann="9.0"):
            assert str(targets.current()) == "A3 / CANN 9.0"
        assert targets.current() is t
    assert str(targets.current()) == "A2 / CANN 8.3"
    monkeypatch.setenv(targets.ENV_VARIABLE, "A5")
    with pytest.raises(FIAArgumentError, match="target.product"):
        targets.current()


def test_unknown_cann_version_refused():
    with pytest.raises(FIAArgumentError, match="target.cann"), fia_kit.target(cann="7.9"):
        pass


def test_docs_hold_the_table():
    assert targets.table_markdown() in DOCS.read_text(), "regenerate docs/targets.md from targets.table_markdown()"


def test_every_rule_has_a_setting_for_every_target():
    for product in targets.PRODUCTS:
        for cann in targets.CANN_VERSIONS:
            with fia_kit.target(product, cann):
                for name in targets.RULES:
                    targets.rule(name)


def _bnsd(gen, d_qk: int, d_v: int):
    q = torch.randn(1, 2, 3, d_qk, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 4, d_qk, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 4, d_v, generator=gen, dtype=torch.float64)
    return q, k, v


def test_ascend950_accepts_qk_dim_different_from_v_dim_outside_tnd(gen):
    q, k, v = _bnsd(gen, 16, 8)
    with fia_kit.target(product="Ascend950"):
        out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.25)
    torch.testing.assert_close(out[0], attention(q[0], k[0], v[0], 0.25)[0])
    with pytest.raises(FIAArgumentError, match="qk_v_head_dims on A3 / CANN") as err:
        fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.25)
    assert err.value.target == str(targets.DEFAULT) and isinstance(err.value, ValueError)


def test_fp8_inputs_are_ascend950_only_not_reserved():
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.float4_e2m1fn_x2):
        q = torch.zeros(1, 2, 2, 64, dtype=torch.uint8).view(dtype)
        for product in ("A3", "Ascend950"):
            with fia_kit.target(product=product), pytest.raises(FIAArgumentError, match="Ascend950 only, not mod"):
                fia_v2(q, q, q, num_query_heads=2, input_layout="BNSD")
    f = torch.zeros(1, 2, 2, 64).half()
    for name, code in (("query_dtype", 290), ("key_dtype", 296), ("out_dtype", 24)):
        with pytest.raises(FIAArgumentError, match=f"{name}.*Ascend950 only, not modelled") as err:
            fia_v2(f, f, f, num_query_heads=2, input_layout="BNSD", **{name: code})
        assert "reserved" not in str(err.value)


def test_gqa_ratio_limit_by_route_and_product(gen):
    """G <= 64 is the legacy routes' rule (incre_flash_attention_tiling_check.cpp:326, prompt_flash_attention_
    tiling.cpp:1748); a float decode takes the FIA route, which has no cap (common_checker.cpp CheckAxis)."""
    q = torch.randn(1, 128, 1, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 1, 3, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    out, _ = fia(q, k, v, num_heads=128, num_key_value_heads=1, input_layout="BNSD")
    torch.testing.assert_close(out[0], attention(q[0], k[0], v[0], 1.0)[0])
    k8 = torch.randint(-8, 8, (1, 1, 3, 16), generator=gen, dtype=torch.int8)
    scale = torch.ones(1, 1, 1, 16, dtype=torch.float16)
    q16 = torch.randn(1, 128, 1, 16, generator=gen, dtype=torch.float16)
    kw = dict(num_heads=128, num_key_value_heads=1, input_layout="BNSD", key_antiquant_scale=scale,
              value_antiquant_scale=scale)
    with pytest.raises(FIAArgumentError, match="gqa_ratio.*A3") as err:  # int8 K/V: the legacy-ifa route
        fia(q16, k8, k8, **kw)
    assert err.value.rule_id == "IFA-GQA-001"
    with fia_kit.target(product="Ascend950"):
        fia(q16, k8, k8, **kw)


def test_tnd_head_dims_are_documented_not_checked():
    """The kernel's TND D set is in the table, but the kit computes any D (cheap examples); the table says so."""
    assert not targets.RULES["tnd_head_dims"].checked and "| no |" in targets.table_markdown()
    q = torch.zeros(4, 2, 96).half()
    fia(q, q, q, num_heads=2, input_layout="TND", actual_seq_lengths=[4], actual_seq_lengths_kv=[4])


def test_mla_kv_heads(gen):
    """Decode MLA (D 512 + rope 64) on A2/A3: N_q in {1, 2, ..., 128} and N_kv = 1 at every version
    (common_checker.cpp:1131, :1138); the kit once read 'any heads' for 9.1 from the Ascend950 branch (22 #17)."""
    q = torch.randn(1, 1, 4, 512, generator=gen, dtype=torch.float64) * 0.1
    qr = torch.randn(1, 1, 4, 64, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 3, 1, 512, generator=gen, dtype=torch.float64) * 0.1
    kr = torch.randn(1, 3, 1, 64, generator=gen, dtype=torch.float64)
    kw = dict(query_rope=qr, key_rope=kr, num_query_heads=4, num_key_value_heads=1, input_layout="BSND",
              softmax_scale=0.1)
    out, _ = fia_v2(q, k, k, **kw)
    want, _ = attention(torch.cat([q, qr], -1)[0].transpose(0, 1), torch.cat([k, kr], -1)[0].transpose(0, 1),
                        k[0].transpose(0, 1), 0.1)
    torch.testing.assert_close(out[0].transpose(0, 1), want)
    k2, kr2 = torch.cat([k, k], 2), torch.cat([kr, kr], 2)
    with pytest.raises(FIAArgumentError, match="mla_heads on A3 / CANN 9.1") as err:
        fia_v2(q, k2, k2, **{**kw, "key_rope": kr2, "num_key_value_heads": 2})
    assert err.value.rule_id == "FIA-MLA-002"
    with fia_kit.target(product="Ascend950"):
        three = dict(kw, num_query_heads=3)
        fia_v2(q[:, :, :3], k, k, **{**three, "query_rope": qr[:, :, :3]})
    with pytest.raises(FIAArgumentError, match="mla_heads") as err:
        fia_v2(q[:, :, :3], k, k, **{**kw, "num_query_heads": 3, "query_rope": qr[:, :, :3]})
    assert err.value.rule_id == "FIA-MLA-001"


def test_prefill_block_size_by_version(gen):
    q = torch.randn(1, 2, 2, 16, generator=gen)
    cache = torch.randn(2, 2, 16, 16, generator=gen)
    table = torch.tensor([[1, 0]], dtype=torch.int32)
    kw = dict(num_heads=2, input_layout="BNSD", block_table=table, block_size=16, actual_seq_lengths_kv=[20])
    fia(q, cache, cache, **kw)
    with fia_kit.target(cann="8.3"), pytest.raises(FIAArgumentError, match="block_size.*128..512.*CANN 8.3"):
        fia(q, cache, cache, **kw)
