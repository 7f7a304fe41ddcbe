"""Plan.route: each expected route is reasoned by hand from the kernel's router at ops-transformer 5778144.

    TilingFusedInferAttentionScore (op_host/fused_infer_attention_score_tiling.cpp:2362):
        RouteToFia -> "fia"; else IsUsingFAI -> "split-fuse"; else IsUsingIFA -> "legacy-ifa"; else "legacy-pfa".
    RouteToFia (arch22/fused_infer_attention_score_tiling_v3.cpp:1371): float16/bfloat16 Q with K of Q's dtype,
        not IsLegacyTemplatePreferred (:1363), and (with no rope) not CheckSpecConditions (:1208).

The expectations below are written from those lines, not computed by the router.
"""

from __future__ import annotations

import pytest
import torch

import fia_kit
from fia_kit.rules import ROUTES

H16, BF16 = torch.float16, torch.bfloat16


def t(*shape: int, dtype: torch.dtype = H16) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def route(*args: torch.Tensor, form: str = "v1", **kw) -> str:
    return fia_kit.plan(form, *args, **kw).route


def decode_bnsd(n_q: int, n_kv: int, d: int, dtype: torch.dtype = H16) -> tuple[torch.Tensor, ...]:
    return t(2, n_q, 1, d, dtype=dtype), t(2, n_kv, 8, d, dtype=dtype), t(2, n_kv, 8, d, dtype=dtype)


TND = dict(input_layout="TND", actual_seq_lengths=[2, 5], actual_seq_lengths_kv=[3, 7])


def tnd(n_q: int, n_kv: int, d: int, dtype: torch.dtype = H16) -> tuple[torch.Tensor, ...]:
    return t(5, n_q, d, dtype=dtype), t(7, n_kv, d, dtype=dtype), t(7, n_kv, d, dtype=dtype)


def test_routes_are_the_four_host_routes():
    assert ROUTES == ("fia", "split-fuse", "legacy-ifa", "legacy-pfa")


def test_gqa_decode_takes_the_fia_route():
    # float16 Q and K: RouteToFia's dtype test passes; D 128 is not a legacy-preferred template; not TND.
    assert route(*decode_bnsd(8, 2, 128), num_heads=8, num_key_value_heads=2, input_layout="BNSD") == "fia"


def test_mha_decode_with_d_256_keeps_the_legacy_ifa_template():
    # IsLegacyTemplatePreferred: D = Dv = 256, no rope, S_q = 1, BNSD, no prefix, MHA, not paged -> not FIA;
    # not TND -> not split-fuse; IsGqaIfa: BNSD with S_q = 1 -> legacy-ifa.
    assert route(*decode_bnsd(4, 4, 256), num_heads=4, input_layout="BNSD") == "legacy-ifa"
    # the same with GQA (isMha false) is not preferred: FIA.
    assert route(*decode_bnsd(4, 2, 256), num_heads=4, num_key_value_heads=2, input_layout="BNSD") == "fia"
    # with S_q = 2 the template is not preferred either (queryS == 1 fails): FIA.
    q, k, v = t(2, 4, 2, 256), t(2, 4, 8, 256), t(2, 4, 8, 256)
    assert route(q, k, v, num_heads=4, input_layout="BNSD") == "fia"


def test_mha_decode_with_d_80_is_legacy_only_with_a_shared_prefix():
    q, k, v = decode_bnsd(2, 2, 80)
    assert route(q, k, v, num_heads=2, input_layout="BNSD") == "fia"  # D 80 needs isPrefix
    prefix = t(1, 2, 4, 80)
    assert route(q, k, v, num_heads=2, input_layout="BNSD", key_shared_prefix=prefix,
                 value_shared_prefix=prefix) == "legacy-ifa"


def test_tnd_gqa_without_mask_takes_split_fuse():
    # CheckSpecConditions: TND, no rope, sparse 0, not MHA with inner_precise 0, no quant_scale2, not paged,
    # D = Dk = Dv <= 256 -> RouteToFia false; IsUsingFAI the same conditions -> split-fuse.
    assert route(*tnd(4, 2, 64), num_heads=4, num_key_value_heads=2, **TND) == "split-fuse"


def test_tnd_gqa_with_inner_precise_1_takes_fia():
    # nonMhaConditions needs inner_precise == 0; mhaConditions needs MHA: CheckSpecConditions false -> FIA.
    assert route(*tnd(4, 2, 64), num_heads=4, num_key_value_heads=2, inner_precise=1, **TND) == "fia"


def test_tnd_mha_with_a_mask_and_sparse_0_takes_fia():
    # mhaConditions: !(sparseMode == 0 && mask given) fails; not GQA -> CheckSpecConditions false -> FIA.
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    assert route(*tnd(2, 2, 64), num_heads=2, atten_mask=mask, **TND) == "fia"
    # MHA bfloat16 with inner_precise 1 also fails mhaConditions -> FIA.
    assert route(*tnd(2, 2, 64, BF16), num_heads=2, inner_precise=1, **TND) == "fia"
    # MHA float16 with inner_precise 1 is fine -> split-fuse.
    assert route(*tnd(2, 2, 64), num_heads=2, inner_precise=1, **TND) == "split-fuse"


def test_tnd_sparse_mode_2_takes_fia():
    # sparseModeSupported needs 0, 3 or 4.
    mask = fia_kit.masks.compressed_causal_mask()
    assert route(*tnd(4, 2, 64), num_heads=4, num_key_value_heads=2, sparse_mode=2, atten_mask=mask,
                 **TND) == "fia"


def test_tnd_with_different_qk_and_v_dims_takes_fia():
    # CheckSpecCondNoPA needs Q/K D == V D.
    q, k, v = t(5, 2, 192), t(7, 2, 192), t(7, 2, 128)
    assert route(q, k, v, num_heads=2, **TND) == "fia"


def test_tnd_paged_by_cache_rank():
    table = torch.tensor([[0], [1]], dtype=torch.int32)
    kw = dict(input_layout="TND", actual_seq_lengths=[2, 5], actual_seq_lengths_kv=[3, 7], block_table=table,
              block_size=16, num_heads=4, num_key_value_heads=2)
    q = t(5, 4, 64)
    # 3-D BnBsH cache: D = H / N_kv = 64, block 16 (a multiple of 16, <= 512) -> split-fuse
    cache3 = t(2, 16, 2 * 64)
    assert route(q, cache3, cache3, **kw) == "split-fuse"
    # 4-D BnNBsD cache: CheckSpecConditions has no branch for it (returns false) -> FIA
    cache4 = t(2, 2, 16, 64)
    assert route(q, cache4, cache4, **kw) == "fia"


def test_learnable_sink_d_64_bfloat16_takes_fia():
    # isLearnableSinkFlag is false for TND with Q D 64 and a bfloat16 sink -> CheckSpecConditions false -> FIA;
    # with Q D 128 the sink does not matter -> split-fuse.
    sink = t(4, dtype=BF16)
    kw = dict(form="v2", num_query_heads=4, num_key_value_heads=2, learnable_sink=sink, input_layout="TND",
              actual_seq_qlen=[2, 5], actual_seq_kvlen=[3, 7])
    assert route(*tnd(4, 2, 64, BF16), **kw) == "fia"
    assert route(*tnd(4, 2, 128, BF16), **kw) == "split-fuse"


def test_int8_kv_goes_to_the_legacy_routes():
    # K int8 with a float16 query: RouteToFia's qDataType == kDataType fails. Not TND: not split-fuse.
    scale = torch.ones(1, 2, 1, 16, dtype=H16)
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", key_antiquant_scale=scale,
              value_antiquant_scale=scale)
    k8 = torch.zeros(2, 2, 8, 16, dtype=torch.int8)
    # IsGqaIfa: BNSD with S_q = 1 -> legacy-ifa
    assert route(t(2, 4, 1, 16), k8, k8, **kw) == "legacy-ifa"
    # S_q = 3 without rope: no IsUsingIFA branch -> legacy-pfa
    assert route(t(2, 4, 3, 16), k8, k8, **kw) == "legacy-pfa"


def test_float_decode_mla_takes_the_fia_route():
    # float16 Q and K with query_rope/key_rope: RouteToFia true (the legacy template needs no rope).
    q, qr = t(1, 1, 128, 512), t(1, 1, 128, 64)
    cache, cache_rope = t(4, 16, 512), t(4, 16, 64)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    assert route(q, cache, cache, query_rope=qr, key_rope=cache_rope, num_heads=128, num_key_value_heads=1,
                 input_layout="BSND", block_table=table, block_size=16, actual_seq_lengths_kv=[20]) == "fia"


def test_kit_float32_routes_as_float16_and_ascend950_is_all_fia():
    # float32 is the kit's extension: routed as the float16 call it stands for
    assert route(*decode_bnsd(4, 4, 256, torch.float32), num_heads=4, input_layout="BNSD") == "legacy-ifa"
    with fia_kit.target(product="Ascend950"):  # DAV_3510 -> TilingFusedInferAttentionScoreV4
        assert route(*decode_bnsd(4, 4, 256), num_heads=4, input_layout="BNSD") == "fia"
        assert route(*tnd(4, 2, 64), num_heads=4, num_key_value_heads=2, **TND) == "fia"


@pytest.mark.parametrize("product, accepted", [("A2", True), ("A3", False)])
def test_decode_sparse_mode_3_without_mask_by_product(product: str, accepted: bool):
    """info_parser.cpp:686 rewrites sparse_mode to 0 on ASCEND910B (A2) for a "legacy IFA" shaped FIA call; A3
    keeps sparse_mode 3 and mask_checker.cpp:578 refuses it without a mask."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 6, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    kw = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", sparse_mode=3, scale=0.25)
    with fia_kit.target(product=product):
        if not accepted:
            with pytest.raises(fia_kit.FIAArgumentError) as err:
                fia_kit.plan("v1", q, k, v, **kw)
            assert err.value.rule_id == "FIA-MASK-002"
            return
        p = fia_kit.plan("v1", q, k, v, **kw)
        out, _ = fia_kit.reference.npu_fused_infer_attention_score(q, k, v, **kw)
    assert p.route == "fia" and p.sparse_mode == 0
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    want = torch.softmax(0.25 * q @ kk.transpose(-1, -2), dim=-1) @ vv  # sparse_mode 0: every key
    torch.testing.assert_close(out, want)
