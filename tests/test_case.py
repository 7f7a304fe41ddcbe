"""Case: respelling between forms, determinism, the default scale, capacity checks and the standalone helpers."""

from __future__ import annotations

import math

import pytest
import torch

import fia_kit
from fia_kit import builders
from fia_kit.case import Case
from fia_kit.errors import FIAArgumentError
from fia_kit.signatures import FORMS


@pytest.mark.parametrize("source", FORMS)
@pytest.mark.parametrize("target", FORMS)
def test_args_for_respells_names_and_length_types(source, target):
    case = Case(layout="TND", sparse_mode=3, paged=True, cache_rank=3)
    built = case.build(source)
    q, k, v, kwargs = built.args_for(target)
    expected = case.build(target).kwargs
    assert set(kwargs) == set(expected)
    for name, value in kwargs.items():
        if name.startswith("actual_"):
            assert type(value) is type(expected[name])
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.int64 and torch.equal(value, expected[name])
            else:
                assert value == expected[name]


def test_args_for_rejects_unknown_form():
    with pytest.raises(FIAArgumentError) as info:
        Case().build("v1").args_for("v3")
    assert info.value.parameter == "form"


def test_build_is_deterministic_for_a_seed_and_changes_with_it():
    a, b, c = (Case(seed=s, paged=True).build("v1") for s in (7, 7, 8))
    assert torch.equal(a.query, b.query) and torch.equal(a.key, b.key)
    assert torch.equal(a.kwargs["block_table"], b.kwargs["block_table"])
    assert not torch.equal(a.query, c.query)


def test_default_scale_is_one_over_sqrt_of_full_head_dim_and_always_passed():
    case = Case(head_dim=16, rope_dim=64)
    assert case.softmax_scale == pytest.approx(1 / math.sqrt(80))
    assert case.build("v1").kwargs["scale"] == pytest.approx(1 / math.sqrt(80))
    assert case.replace(scale=1.0).build("v2").kwargs["softmax_scale"] == 1.0


def test_replace_validates_again():
    with pytest.raises(FIAArgumentError) as info:
        Case().replace(kv_heads=3)
    assert info.value.parameter == "kv_heads"


def test_kv_length_beyond_paged_capacity_is_rejected():
    with pytest.raises(FIAArgumentError) as info:
        Case(kv_lens=(40, 1), paged=True, block_size=16, num_blocks=3)
    assert info.value.parameter == "num_blocks"
    built = Case(kv_lens=(40, 1), paged=True, block_size=16, num_blocks=6, cache_rank=4).build("v1")
    assert built.key.shape[0] == 6
    with pytest.raises(FIAArgumentError):
        builders.to_paged([torch.randn(1, 20, 4)], 16, num_blocks=1)


def test_to_fia_call_carries_the_built_options():
    call = Case(layout="BSND", sparse_mode=3).build("torchair-v2").to_fia_call()
    assert call.options["sparse_mode"] == 3 and call.options["input_layout"] == "BSND"


def test_padded_sequence_axes_do_not_change_valid_rows():
    built = Case(q_lens=(3, 2), kv_lens=(5, 4), q_seq=6, kv_seq=9, layout="BNSD", sparse_mode=3,
                 dtype=torch.float64).build("v1")
    assert built.query.shape[2] == 6 and built.key.shape[2] == 9
    out_padded, _ = built.call(fia_kit.npu_fused_infer_attention_score)
    trimmed = dict(built.kwargs)
    out_trimmed, _ = fia_kit.npu_fused_infer_attention_score(built.query[:, :, :3], built.key[:, :, :5],
                                                             built.value[:, :, :5], **trimmed)
    for b, lq in enumerate((3, 2)):
        assert torch.equal(out_padded[b, :, :lq], out_trimmed[b, :, :lq])


def test_describe_rows_name_every_v2_argument():
    case = Case(layout="TND", sinks=True, pse=False, sparse_mode=3)  # q_lens (6, 4), kv_lens (9, 12), N 2/1, D 16
    rows = {row["name"]: row for row in case.describe_rows("v2")}
    assert list(rows)[:3] == ["query", "key", "value"]
    # What a v2 TND sink call with sparse_mode 3 passes (spec 1.2, 5, 6.4, 13), written out here.
    assert set(rows) == {"query", "key", "value", "num_query_heads", "num_key_value_heads", "softmax_scale",
                         "input_layout", "sparse_mode", "inner_precise", "return_softmax_lse", "actual_seq_qlen",
                         "actual_seq_kvlen", "atten_mask", "learnable_sink"}
    assert rows["query"]["shape / value"] == "(10, 2, 16)" and rows["key"]["shape / value"] == "(21, 1, 16)"
    assert rows["atten_mask"]["shape / value"] == "(2048, 2048)" and rows["atten_mask"]["dtype"] == "bool"
    assert rows["learnable_sink"]["shape / value"] == "(2,)"
    assert "[6, 10]" in rows["actual_seq_qlen"]["shape / value"]
    assert all(rows[n]["meaning"] for n in ("query", "atten_mask", "learnable_sink", "sparse_mode"))


def test_standalone_helpers_have_documented_shapes():
    k, v = builders.shared_prefix(2, 5, 16, 8, "BSH")
    assert k.shape == (1, 5, 32) and v.shape == (1, 5, 16)
    assert builders.pse_tensor(1, 4, 3, 7).shape == (1, 4, 3, 7)
    sink = builders.sink_tensor(4)
    assert sink.shape == (4,) and sink.dtype == torch.bfloat16
    qr, kr = builders.rope_parts(2, 4, 2, 3, 5)
    assert qr.shape == (2, 4, 3, 64) and kr.shape == (2, 2, 5, 64)
    lengths = builders.length_tensor([3, 5])
    assert lengths.dtype == torch.int64 and lengths.tolist() == [3, 5]
    assert builders.nz_block(torch.float16) == 16 and builders.nz_block(torch.int8) == 32
    assert builders.nz_block(torch.float32) == 8 and builders.nz_block(torch.float64) == 4


def _bnsd(x: torch.Tensor) -> torch.Tensor:
    """BSND (B, S, N, D) -> (B, N, S, D) float64, by a plain permute."""
    return x.permute(0, 2, 1, 3).double()


def _sequence(x: torch.Tensor, built, b: int, length: int, paged: bool) -> torch.Tensor:
    """(N_kv, length, D) float64 keys of batch b: BSND rows, or gathered from a (blocks, N_kv, bs, D) cache."""
    if not paged:
        return _bnsd(x)[b, :, :length]
    table = built.kwargs["block_table"][b]
    bs = built.kwargs["block_size"]
    return torch.cat([x[int(i)] for i in table[:-(-length // bs)]], dim=1)[:, :length].double()


def _golden(case: Case, built) -> list[torch.Tensor]:
    """Per batch (N_q, L_q, Dv) float64: softmax(scale (q k^T + q_r k_r^T) + pse) v, written from spec 3, 9, 12."""
    kw = {name.replace("pse_shift", "pse"): value for name, value in built.kwargs.items()}
    q = _bnsd(built.query)
    group = case.heads // case.kv_heads
    outs = []
    for b, (lq, lk) in enumerate(zip(case.q_lens, case.kv_lens, strict=True)):
        k = _sequence(built.key, built, b, lk, case.paged).repeat_interleave(group, 0)
        v = _sequence(built.value, built, b, lk, case.paged).repeat_interleave(group, 0)
        scores = torch.einsum("nid,njd->nij", q[b, :, :lq], k)
        if "query_rope" in kw:
            qr = _bnsd(kw["query_rope"])[b, :, :lq]
            kr = _sequence(kw["key_rope"], built, b, lk, case.paged).repeat_interleave(group, 0)
            scores = scores + torch.einsum("nid,njd->nij", qr, kr)
        scores = scores * case.softmax_scale
        if "pse" in kw:
            scores = scores + kw["pse"][b, :, :lq, :lk].double()
        outs.append(torch.einsum("nij,njd->nid", scores.softmax(-1), v))
    return outs


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("paged", [False, True])
def test_pse_cases_are_accepted(form, paged):
    case = Case(q_lens=(3, 1), kv_lens=(7, 20), heads=4, kv_heads=1, head_dim=32, layout="BSND", pse=True,
                paged=paged, block_size=16, dtype=torch.float64)
    built = case.build(form)
    assert built.kwargs["pse_shift"].shape == (2, 4, 3, 32 if paged else 20)
    out, _ = built.call(_entry_point(form))
    assert out.shape == (2, 3, 4, 32)
    for b, expected in enumerate(_golden(case, built)):
        lq = case.q_lens[b]
        torch.testing.assert_close(_bnsd(out)[b, :, :lq], expected, atol=1e-10, rtol=1e-10)
        assert not out[b, lq:].any()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("paged", [False, True])
def test_mla_rope_cases_are_accepted(form, paged):
    case = Case(q_lens=(1, 1), kv_lens=(7, 20), heads=4, kv_heads=1, head_dim=128, rope_dim=64, layout="BSND",
                paged=paged, block_size=16, dtype=torch.float64)
    built = case.build(form)
    assert built.kwargs["query_rope"].shape == (2, 1, 4, 64)
    out, _ = built.call(_entry_point(form))
    assert out.shape == (2, 1, 4, 128)
    for b, expected in enumerate(_golden(case, built)):
        torch.testing.assert_close(_bnsd(out)[b], expected, atol=1e-10, rtol=1e-10)


def _entry_point(form: str):
    return fia_kit.npu_fused_infer_attention_score_v2 if form.endswith("v2") else fia_kit.npu_fused_infer_attention_score


def test_pse_is_an_additive_bias_as_sdpa_float_mask():
    case = Case(q_lens=(3, 2), kv_lens=(5, 6), heads=2, kv_heads=2, layout="BNSD", pse=True, dtype=torch.float64)
    built = case.build("v1")
    out, _ = built.call(fia_kit.npu_fused_infer_attention_score)
    pse = built.kwargs["pse_shift"]
    for b, (lq, lk) in enumerate(zip(case.q_lens, case.kv_lens, strict=True)):
        expected = torch.nn.functional.scaled_dot_product_attention(
            built.query[b:b + 1, :, :lq], built.key[b:b + 1, :, :lk], built.value[b:b + 1, :, :lk],
            attn_mask=pse[b:b + 1, :, :lq, :lk], scale=case.softmax_scale)[0]
        torch.testing.assert_close(out[b, :, :lq], expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------ new fields

# Spec 16.3, separated form: the mode and the scale's shape (B=2, N_kv=1, S_kv=12, D=16 below) per granularity.
QUANT_TABLE = {"tensor": (0, (1,)), "channel": (0, (1, 1, 1, 16)), "token": (1, (1, 2, 12)), "head": (2, (1,)),
               "token_head": (3, (2, 1, 12))}


@pytest.mark.parametrize("granularity", list(QUANT_TABLE))
def test_kv_quant_builds_int8_kv_whose_dequantisation_is_the_float_kv(granularity):
    case = Case(q_lens=(1, 1), kv_lens=(9, 12), layout="BNSD", kv_quant=granularity, dtype=torch.float16)
    built, floats = case.build("v1"), case.replace(kv_quant="none").build("v1")
    mode, shape = QUANT_TABLE[granularity]
    kw = built.kwargs
    assert built.key.dtype == built.value.dtype == torch.int8
    assert kw["key_antiquant_mode"] == kw["value_antiquant_mode"] == mode
    assert tuple(kw["key_antiquant_scale"].shape) == shape
    assert kw["key_antiquant_scale"].dtype == (torch.float32 if mode in (1, 3) else torch.float16)
    v2 = case.build("v2").kwargs
    assert v2["key_quant_mode"] == mode and torch.equal(v2["dequant_scale_key"], kw["key_antiquant_scale"])
    for ints, scale, original in ((built.key, kw["key_antiquant_scale"], floats.key),
                                  (built.value, kw["value_antiquant_scale"], floats.value)):
        view = {"tensor": (1, 1, 1, 1), "channel": (1, 1, 1, 16), "token": (2, 1, 12, 1), "head": (1, 1, 1, 1),
                "token_head": (2, 1, 12, 1)}[granularity]  # spec 16.3's index column, on (B, N_kv, S, D)
        s = scale.double().view(view)
        back = ints.double() * s
        for b, n in enumerate(case.kv_lens):  # valid tokens: within half a step; the 1000 garbage is not in a scale
            step = s.expand_as(back)[b, :, :n]
            assert ((back[b, :, :n] - original[b, :, :n].double()).abs() <= step / 2 + 1e-3 * step).all()
            assert float(step.max()) < 1.0
            assert (ints[b, :, n:] == 127).all()


def test_kv_quant_goes_through_the_reference_as_dequantised_kv():
    case = Case(q_lens=(1, 1), kv_lens=(9, 12), heads=2, kv_heads=1, layout="BNSD", kv_quant="token",
                dtype=torch.float32, paged=True)
    built = case.build("v1")
    out, _ = built.call(fia_kit.npu_fused_infer_attention_score)
    table, scale = built.kwargs["block_table"], built.kwargs["key_antiquant_scale"].double()[0]
    vscale = built.kwargs["value_antiquant_scale"].double()[0]
    for b, n in enumerate(case.kv_lens):
        blocks = [built.key[int(i)] for i in table[b, :-(-n // 16)]]
        vblocks = [built.value[int(i)] for i in table[b, :-(-n // 16)]]
        k = torch.cat(blocks, 1)[:, :n].double() * scale[b, :n].view(1, -1, 1)
        v = torch.cat(vblocks, 1)[:, :n].double() * vscale[b, :n].view(1, -1, 1)
        q = built.query[b].double()
        p = (case.softmax_scale * q @ k.repeat_interleave(2, 0).transpose(1, 2)).softmax(-1)
        torch.testing.assert_close(out[b].double(), p @ v.repeat_interleave(2, 0), atol=1e-5, rtol=1e-5)


def test_from_call_reads_kv_quant_back():
    for granularity in ("channel", "token"):
        case = Case(q_lens=(1, 1), kv_lens=(9, 12), layout="BNSD", kv_quant=granularity, dtype=torch.float16)
        assert Case.from_call(fia_kit.plan(case)).kv_quant == granularity
    assert Case.from_call(fia_kit.plan(Case(dtype=torch.float16))).kv_quant == "none"


def test_kv_quant_with_a_shared_prefix_says_the_case_cannot_build_it():
    with pytest.raises(FIAArgumentError) as info:
        Case(kv_quant="channel", prefix_len=2, dtype=torch.float16).build("v1")
    assert info.value.parameter == "kv_quant + prefix_len"


def test_alibi_pse_is_minus_slope_times_the_distance_to_the_diagonal():
    case = Case(q_lens=(3, 2), kv_lens=(5, 6), heads=4, kv_heads=2, layout="BNSD", pse=True, pse_kind="alibi",
                dtype=torch.float32)
    pse = case.build("v1").kwargs["pse_shift"]
    assert pse.shape == (2, 4, 3, 6)
    for b, (lq, lk) in enumerate(zip(case.q_lens, case.kv_lens, strict=True)):
        for n in range(4):
            slope = 2 ** (-8 * (n + 1) / 4)  # ALiBi's geometric slopes, head 0 the steepest
            for i in range(3):
                for j in range(6):
                    assert float(pse[b, n, i, j]) == pytest.approx(-slope * abs(j - (i + lk - lq)))
    with pytest.raises(FIAArgumentError):
        Case(pse_kind="sine")


def test_tree_mask_case_is_v2_and_sees_context_plus_ancestors():
    case = Case(q_lens=(4, 3), kv_lens=(9, 5), heads=2, kv_heads=1, head_dim=512, rope_dim=64, sparse_mode=9,
                dtype=torch.float16)
    assert case.natural_form == "v2" and case.mask == "auto"
    mask = case.build().kwargs["atten_mask"]
    assert mask.shape == (2, 4, 4)
    ancestors = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}}  # heap order: parent(t) = (t - 1) // 2
    for b, lq in enumerate(case.q_lens):
        for i in range(4):
            for j in range(4):
                assert bool(mask[b, i, j]) == (i >= lq or j >= lq or j not in ancestors[i])
    packed = Case(q_lens=(4, 3), kv_lens=(9, 5), layout="TND", paged=True, heads=2, kv_heads=1, head_dim=512,
                  rope_dim=64, sparse_mode=9, dtype=torch.float16).build().kwargs["atten_mask"]
    assert packed.shape == (16 + 9,) and torch.equal(packed[:16].view(4, 4), mask[0])


def test_reusing_tensors_draws_once_for_equal_shapes_and_builds_the_same_tensors(monkeypatch):
    from fia_kit.case import reusing_tensors

    draws = []
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: draws.append(a) or real(*a, **k))
    base = Case(q_lens=(5, 3), kv_lens=(7, 6), pse=True, paged=True, dtype=torch.float32)
    fresh = [base.build("v1"), base.replace(sparse_mode=3, dtype=torch.float16).build("v1")]
    store: dict = {}
    draws.clear()
    with reusing_tensors(store):
        again = [base.build("v1"), base.replace(sparse_mode=3, dtype=torch.float16).build("v1")]
    assert len(draws) == 3 + 1 + 1  # q, k, v and pse once; the second build draws only its pse
    for a, b in zip(fresh, again, strict=True):
        assert torch.equal(a.query, b.query) and torch.equal(a.key, b.key) and torch.equal(a.value, b.value)
        assert torch.equal(a.kwargs["pse_shift"], b.kwargs["pse_shift"])
        assert torch.equal(a.kwargs["block_table"], b.kwargs["block_table"])
    again[0].query.zero_()  # a build's tensors are its own: the store is not touched
    with reusing_tensors(store):
        assert torch.equal(base.build("v1").query, fresh[0].query)
