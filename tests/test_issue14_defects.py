"""Calls real callers make that the kit used to refuse or miscompute (issue 14, spec 25.1), against float64 goldens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from golden import FIA_DECODE_EMPTY_LSE, attention, causal, paged_cache

from fia_kit import FIAArgumentError
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------- 1. lengths as numpy etc.

@pytest.mark.parametrize("as_type", [np.array, tuple, lambda v: torch.tensor(v, dtype=torch.int32),
                                     lambda v: np.array(v, dtype=np.int32)[:len(v)]])
def test_lengths_accept_numpy_tuples_and_tensors(gen, as_type):
    """torch's SymInt[] parser takes numpy integer arrays, tuples and 1-D int tensors (spec 25.2)."""
    b, n, s, d = 2, 2, 5, 8
    q, k, v = (torch.randn(b, s, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    lq, lkv = [3, 5], [2, 5]
    out, _ = fia(q, k, v, num_heads=n, input_layout="BSND", scale=0.3,
                 actual_seq_lengths=as_type(lq), actual_seq_lengths_kv=as_type(lkv))
    for i in range(b):
        want, _ = attention(q[i, :lq[i]].transpose(0, 1), k[i, :lkv[i]].transpose(0, 1),
                            v[i, :lkv[i]].transpose(0, 1), 0.3)
        _close(out[i, :lq[i]].transpose(0, 1), want)
        assert not out[i, lq[i]:].any()


def test_tnd_lengths_from_np_cumsum(gen):
    """sglang passes np.cumsum(...) (int64 numpy) as TND cumulative lengths."""
    n, d = 2, 8
    per_q, per_kv = [2, 3], [4, 3]
    q = torch.randn(5, n, d, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(7, n, d, generator=gen, dtype=torch.float64) for _ in range(2))
    out, _ = fia(q, k, v, num_heads=n, input_layout="TND", scale=0.5, sparse_mode=0,
                 actual_seq_lengths=np.cumsum(per_q), actual_seq_lengths_kv=np.cumsum(per_kv))
    want0, _ = attention(q[:2].transpose(0, 1), k[:4].transpose(0, 1), v[:4].transpose(0, 1), 0.5)
    want1, _ = attention(q[2:].transpose(0, 1), k[4:].transpose(0, 1), v[4:].transpose(0, 1), 0.5)
    _close(out.transpose(0, 1), torch.cat([want0, want1], dim=1))


def test_lengths_refuse_float_numpy_and_2d():
    q = torch.zeros(1, 2, 2, 8)
    with pytest.raises(FIAArgumentError, match="actual_seq_lengths_kv.*integer"):
        fia(q, q, q, num_heads=2, input_layout="BSND", actual_seq_lengths_kv=np.array([1.5]))
    with pytest.raises(FIAArgumentError, match="actual_seq_lengths_kv.*1-D"):
        fia(q, q, q, num_heads=2, input_layout="BSND", actual_seq_lengths_kv=np.array([[1, 2]]))


# ------------------------------------------------------------------- 2. GQA int8 decode, NZ cache, per-channel

def _int8_decode_nz(gen, scale_shape):
    b, nq, nkv, d, bs = 2, 4, 2, 32, 128
    lens = [5, 20]
    q = torch.randn(b, nq, 1, d, generator=gen).half()
    seqs_k = [torch.randint(-20, 20, (nkv, n, d), generator=gen, dtype=torch.int8) for n in lens]
    seqs_v = [torch.randint(-20, 20, (nkv, n, d), generator=gen, dtype=torch.int8) for n in lens]
    kc, table = paged_cache(seqs_k, bs, rank=5)
    vc, _ = paged_cache(seqs_v, bs, rank=5)
    ks = (torch.rand(nkv, 1, d, generator=gen) * 0.05 + 0.01).half()
    vs = (torch.rand(nkv, 1, d, generator=gen) * 0.05 + 0.01).half()
    call = dict(num_heads=nq, num_key_value_heads=nkv, input_layout="BNSD", scale=d ** -0.5, block_table=table,
                block_size=bs, actual_seq_lengths_kv=lens, key_antiquant_scale=ks.reshape(scale_shape),
                value_antiquant_scale=vs.reshape(scale_shape), key_antiquant_mode=0, value_antiquant_mode=0)
    return q, kc, vc, call, (seqs_k, seqs_v, ks, vs, lens)


def test_gqa_int8_decode_nz_per_channel_scale_nkv_1_d(gen):
    """vllm-ascend C8 decode: NZ int8 cache with (N_kv, 1, D) per-channel scales (CheckGqaAntiQuantPerChannel)."""
    q, kc, vc, call, (seqs_k, seqs_v, ks, vs, lens) = _int8_decode_nz(gen, (2, 1, 32))
    out, _ = fia(q, kc, vc, **call)
    for i in range(len(lens)):
        k = seqs_k[i].double() * ks.double()
        v = seqs_v[i].double() * vs.double()
        want, _ = attention(q[i].double(), k, v, 32 ** -0.5)
        _close(out[i], want, 2e-3)


def test_gqa_int8_decode_nz_refuses_1_nkv_1_d(gen):
    q, kc, vc, call, _ = _int8_decode_nz(gen, (1, 2, 1, 32))
    with pytest.raises(FIAArgumentError, match="key_antiquant_scale.*CheckGqaAntiQuantPerChannel"):
        fia(q, kc, vc, **call)


# ----------------------------------------------------------------------- 3. MLA full quant, bf16 key_rope NZ

def test_mla_full_quant_bf16_rope_nz_tiled_by_its_own_dtype(gen):
    """key_rope NZ is (blocks, N_kv, 64/16, bs, 16) for bf16, not the int8 key's (.., 64/32, bs, 32) (spec 25.1)."""
    b, nq, d, bs = 2, 4, 512, 16
    lens = [3, 17]
    q = torch.randint(-50, 50, (b, 1, nq, d), generator=gen, dtype=torch.int8)
    q_scale = torch.rand(b, 1, nq, generator=gen) * 0.02 + 0.01
    q_rope = torch.randn(b, 1, nq, 64, generator=gen).bfloat16()
    latent = [torch.randint(-50, 50, (1, n, d), generator=gen, dtype=torch.int8) for n in lens]
    rope = [torch.randn(1, n, 64, generator=gen).bfloat16() for n in lens]
    kc, table = paged_cache(latent, bs, rank=5)
    krc, table_r = paged_cache(rope, bs, rank=5)
    assert krc.shape[2:] == (4, bs, 16) and torch.equal(table, table_r)
    k_scale, v_scale = torch.tensor([0.02]), torch.tensor([0.03])
    scale = (d + 64) ** -0.5
    out, _ = fia_v2(q, kc, kc, query_rope=q_rope, key_rope=krc, num_query_heads=nq, num_key_value_heads=1,
                    input_layout="BSND", softmax_scale=scale, block_table=table, block_size=bs,
                    actual_seq_kvlen=lens, dequant_scale_query=q_scale, query_quant_mode=3,
                    dequant_scale_key=k_scale, dequant_scale_value=v_scale)
    assert out.dtype == torch.bfloat16
    for i in range(b):
        qf = torch.cat([q[i, 0].double() * q_scale[i, 0].double().unsqueeze(-1), q_rope[i, 0].double()], -1)
        kf = torch.cat([latent[i].double() * 0.02, rope[i].double()], -1)
        want, _ = attention(qf.unsqueeze(1), kf, latent[i].double() * 0.03, scale)
        _close(out[i, 0], want[:, 0], 3e-2)


# ----------------------------------------------------------------------------- 4. LSE sentinels, per path

def test_decode_batch_without_keys_has_lse_float32_lowest(gen):
    """A float BNSD decode takes the FIA route, which writes float32(-3.4e38) for a batch with L_kv = 0
    (op_kernel/arch22/fia_kernel_nonquant.h:346, its "legacy IFA" flag), so a merge gives it weight 0."""
    q = torch.randn(2, 2, 1, 8, generator=gen)
    k, v = (torch.randn(2, 2, 6, 8, generator=gen) for _ in range(2))
    out, lse = fia(q, k, v, num_heads=2, input_layout="BNSD", actual_seq_lengths_kv=[0, 6], softmax_lse_flag=True)
    assert lse.dtype == torch.float32 and not out[0].any()
    assert (lse[0] == FIA_DECODE_EMPTY_LSE).all()
    _, want = attention(q[1], k[1], v[1], 1.0)
    _close(lse[1, ..., 0], want, 1e-5)


def test_prefill_rows_outside_the_band_keep_lse_inf(gen):
    """The PFA path writes 3e99 (-> +inf in float32) for rows it does not compute (spec 7)."""
    q = torch.randn(1, 2, 4, 8, generator=gen)
    k, v = (torch.randn(1, 2, 4, 8, generator=gen) for _ in range(2))
    from fia_kit.masks import compressed_causal_mask
    _, lse = fia(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=3, atten_mask=compressed_causal_mask(),
                 actual_seq_lengths=[4], actual_seq_lengths_kv=[2], softmax_lse_flag=True)
    assert torch.isposinf(lse[0, :, :2]).all() and torch.isfinite(lse[0, :, 2:]).all()
    _, lse0 = fia(q, k, v, num_heads=2, input_layout="BNSD", actual_seq_lengths_kv=[0], softmax_lse_flag=True)
    assert torch.isposinf(lse0).all()  # prefill with L_kv = 0: not computed, +inf


# ------------------------------------------------------------------------------------ 5. MLA D=512 with LSE

def test_mla_d512_returns_lse(gen):
    """vllm-ascend's context-parallel MLA decode asks for the LSE with D = 512 (docs say unsupported)."""
    b, nq = 2, 4
    q = torch.randn(b, 1, nq, 512, generator=gen, dtype=torch.float64) * 0.1
    qr = torch.randn(b, 1, nq, 64, generator=gen, dtype=torch.float64)
    k = torch.randn(b, 3, 1, 512, generator=gen, dtype=torch.float64) * 0.1
    kr = torch.randn(b, 3, 1, 64, generator=gen, dtype=torch.float64)
    out, lse = fia_v2(q, k, k, query_rope=qr, key_rope=kr, num_query_heads=nq, num_key_value_heads=1,
                      input_layout="BSND", softmax_scale=0.1, return_softmax_lse=True, actual_seq_kvlen=[3, 0])
    want, want_lse = attention(torch.cat([q[0], qr[0]], -1).transpose(0, 1),
                               torch.cat([k[0], kr[0]], -1).transpose(0, 1), k[0].transpose(0, 1), 0.1)
    _close(out[0].transpose(0, 1), want)
    _close(lse[0, :, :, 0], want_lse)
    # float MLA D=512 takes the FIA route (RouteToFia, arch22/..._tiling_v3.cpp:1371), whose MLA kernel initialises
    # the LSE with 3e99 = +inf (op_kernel/arch22/fia_kernel_nonquant_mla.h:320), not the IFA's -3.4e38 (22 row 20)
    assert (lse[1] == float("inf")).all() and not out[1].any()


# --------------------------------------------------------------------------- 6. BSH output quant scale shapes

@pytest.mark.parametrize("shape", [(2, 32), (1, 64), (64,), (1, 1, 64), (2, 1, 32)])
def test_bsh_output_quant_scale_any_shape_with_h_elements(gen, shape):
    b, s, n, d = 1, 3, 2, 32
    q, k, v = (torch.randn(b, s, n * d, generator=gen).half() for _ in range(3))
    scale = torch.rand(n * d, generator=gen) * 40 + 10
    out, _ = fia(q, k, v, num_heads=n, input_layout="BSH", scale=0.25, quant_scale2=scale.reshape(shape))
    assert out.dtype == torch.int8
    want, _ = attention(q[0].view(s, n, d).transpose(0, 1), k[0].view(s, n, d).transpose(0, 1),
                        v[0].view(s, n, d).transpose(0, 1), 0.25)
    want_i8 = torch.round(want.transpose(0, 1).reshape(s, n * d) * scale.double()).clamp(-128, 127)
    assert (out[0].double() - want_i8).abs().max() <= 1


def test_bsh_output_quant_scale_wrong_count_refused():
    q = torch.zeros(1, 3, 64).half()
    with pytest.raises(FIAArgumentError, match="quant_scale2.*H = 64"):
        fia(q, q, q, num_heads=2, input_layout="BSH", quant_scale2=torch.ones(2, 16))


# ---------------------------------------------------------------------- 7. left padding, decode, start < 0

def test_left_padding_decode_start_below_zero_gives_zero_output(gen):
    """Spec 15: kv start S - pad - L < 0 gives an all-zero output on the IFA path (not an error)."""
    q = torch.randn(2, 1, 2, 8, generator=gen)
    k, v = (torch.randn(2, 6, 2, 8, generator=gen) for _ in range(2))
    out, _ = fia(q, k, v, num_heads=2, input_layout="BSND", kv_padding_size=torch.tensor([2]),
                 actual_seq_lengths_kv=[5, 3])
    assert not out[0].any()
    want, _ = attention(q[1].transpose(0, 1), k[1, 1:4].transpose(0, 1), v[1, 1:4].transpose(0, 1), 1.0)
    _close(out[1].transpose(0, 1), want)


# ----------------------------------------------------------------------- 8. out_dtype with an int8 query

def test_out_dtype_selects_the_output_dtype_with_an_int8_query(gen):
    b, nq, d, bs = 1, 2, 512, 16
    q = torch.randint(-5, 5, (b, 1, nq, d), generator=gen, dtype=torch.int8)
    qr = torch.randn(b, 1, nq, 64, generator=gen).bfloat16()
    kc, table = paged_cache([torch.randint(-5, 5, (1, 4, d), generator=gen, dtype=torch.int8)], bs, rank=4)
    krc, _ = paged_cache([torch.randn(1, 4, 64, generator=gen).bfloat16()], bs, rank=4)
    common = dict(query_rope=qr, key_rope=krc, num_query_heads=nq, num_key_value_heads=1, input_layout="BSND",
                  softmax_scale=0.05, block_table=table, block_size=bs, actual_seq_kvlen=[4],
                  dequant_scale_query=torch.full((b, 1, nq), 0.01), query_quant_mode=3,
                  dequant_scale_key=torch.tensor([0.01]), dequant_scale_value=torch.tensor([0.01]))
    bf16, _ = fia_v2(q, kc, kc, **common)
    fp16, _ = fia_v2(q, kc, kc, out_dtype=5, **common)
    assert bf16.dtype == torch.bfloat16 and fp16.dtype == torch.float16
    _close(fp16, bf16, 2e-2)


def test_out_dtype_with_a_float_query_is_refused():
    q = torch.zeros(1, 2, 2, 8).half()
    with pytest.raises(FIAArgumentError, match="out_dtype"):
        fia_v2(q, q, q, num_query_heads=2, input_layout="BNSD", out_dtype=15)


# --------------------------------------------------------------- 9. decode, int8 K/V, sparse_mode != 0

def test_decode_int8_kv_sparse_mode_nonzero_refused(gen):
    q, kc, vc, call, _ = _int8_decode_nz(gen, (2, 1, 32))
    mask = torch.zeros(2, 1, 1, 32, dtype=torch.bool)
    with pytest.raises(FIAArgumentError, match="sparse_mode.*CheckAntiquantSparseMode"):
        fia(q, kc, vc, sparse_mode=3, atten_mask=mask, **call)


def test_decode_float_kv_sparse_mode_still_ignored(gen):
    """One decode row sees every key whether sparse_mode 3 is kept (Ascend950: right-down causal) or rewritten to 0
    with its compressed template dropped (A2/A3, FIA-MASK-003; spec 6.5)."""
    import fia_kit
    from fia_kit.masks import compressed_causal_mask
    q = torch.randn(1, 2, 1, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 5, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    for product in ("A3", "A2", "Ascend950"):
        with fia_kit.target(product=product):
            out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", sparse_mode=3, atten_mask=compressed_causal_mask())
        _close(out[0], attention(q[0], k[0], v[0], 1.0)[0])


# -------------------------------------------------------------- 11. TND query T past the last cumulative length

def test_tnd_query_t_beyond_last_cumulative_length_on_newest_target(gen):
    q = torch.randn(6, 2, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(4, 2, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    out, _ = fia(q, k, v, num_heads=2, input_layout="TND", actual_seq_lengths=[4], actual_seq_lengths_kv=[4])
    _close(out[:4].transpose(0, 1), attention(q[:4].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), 1.0)[0])
    assert not out[4:].any()


def test_tnd_query_t_beyond_last_cumulative_length_refused_on_older_cann():
    import fia_kit
    q = torch.zeros(6, 2, 8)
    with fia_kit.target(product="A2", cann="8.3"), \
            pytest.raises(FIAArgumentError, match=r"actual_seq_lengths.*T_q=6.*A2 / CANN 8\.3") as err:
        fia(q, q, q, num_heads=2, input_layout="TND", actual_seq_lengths=[4], actual_seq_lengths_kv=[4])
    assert err.value.target == "A2 / CANN 8.3"


def test_tnd_query_t_below_last_cumulative_length_refused():
    q = torch.zeros(3, 2, 8)
    with pytest.raises(FIAArgumentError, match="actual_seq_lengths"):
        fia(q, q, q, num_heads=2, input_layout="TND", actual_seq_lengths=[4], actual_seq_lengths_kv=[3])


def test_causal_golden_helper_is_right_down():
    assert causal(2, 3).tolist() == [[True, True, False], [True, True, True]]


# ------------------------------------------------------------------- 8. refused before compute, naming the target

def test_refusals_come_before_any_compute(monkeypatch, gen):
    """Every refusal of this issue is an FIAArgumentError raised while planning: the kernel never runs."""
    import fia_kit
    from fia_kit import reference

    def must_not_run(problem):
        raise AssertionError("computed a call that should have been refused")

    monkeypatch.setattr(reference, "run_plan", must_not_run)
    q, kc, vc, call, _ = _int8_decode_nz(gen, (1, 2, 1, 32))
    f16 = torch.zeros(1, 2, 2, 64).half()
    t6 = torch.zeros(6, 2, 8)
    refused = [
        (lambda: fia(q, kc, vc, **call), "key_antiquant_scale", None),
        (lambda: fia(q, kc, vc, **{**call, "key_antiquant_scale": call["key_antiquant_scale"].reshape(2, 1, 32),
                                   "value_antiquant_scale": call["value_antiquant_scale"].reshape(2, 1, 32),
                                   "sparse_mode": 3, "atten_mask": torch.zeros(2, 128, dtype=torch.bool)}),
         "sparse_mode", None),
        (lambda: fia_v2(f16, f16, f16, num_query_heads=2, input_layout="BNSD", out_dtype=15), "out_dtype", None),
        (lambda: fia_v2(f16, f16, f16, num_query_heads=2, input_layout="BNSD", query_dtype=290), "query_dtype",
         "A3 / CANN 9.1"),
        (lambda: fia(t6, t6, t6, num_heads=2, input_layout="TND", actual_seq_lengths=[4], actual_seq_lengths_kv=[4]),
         "actual_seq_lengths", "A2 / CANN 8.3"),
    ]
    for make, parameter, target in refused:
        with fia_kit.target(product="A2", cann="8.3") if target == "A2 / CANN 8.3" else fia_kit.target():
            with pytest.raises(FIAArgumentError) as err:
                make()
        assert err.value.parameter == parameter and err.value.target == target, str(err.value)
