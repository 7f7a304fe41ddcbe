"""The flex backend against torch SDPA and hand-worked cases, so a bug shared by flex and the reference would show.

float64 inputs: flex computes in float64, so agreement is to ~1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from fia_kit import flex
from fia_kit.masks import compressed_causal_mask

F64 = torch.float64
fia = flex.npu_fused_infer_attention_score
fia_v2 = flex.npu_fused_infer_attention_score_v2


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


def test_gqa_reads_kv_head_n_over_g(gen):
    """Query head n uses kv head n // G (spec 10): SDPA on K/V repeated with repeat_interleave."""
    q, k, v = rand(gen, 2, 6, 4, 16), rand(gen, 2, 2, 5, 16), rand(gen, 2, 2, 5, 16)
    out, lse = fia(q, k, v, num_heads=6, num_key_value_heads=2, input_layout="BNSD", scale=0.3,
                   softmax_lse_flag=True)
    kr, vr = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    close(out, sdpa(q, kr, vr, scale=0.3))
    close(lse[..., 0], torch.logsumexp(0.3 * q @ kr.transpose(-1, -2), dim=-1))  # natural log (spec 8)


def test_right_down_causal_leaves_the_first_rows_empty(gen):
    """Mode 3 with L_q = 6 > L_kv = 4: query i sees keys j <= i - 2; rows 0 and 1 are 0 with LSE +inf (6.3, 7)."""
    q, k, v = rand(gen, 1, 2, 6, 16), rand(gen, 1, 2, 4, 16), rand(gen, 1, 2, 4, 16)
    out, lse = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.25, sparse_mode=3,
                   atten_mask=compressed_causal_mask(), softmax_lse_flag=True)
    i, j = torch.arange(6).view(-1, 1), torch.arange(4).view(1, -1)
    allowed = j <= i - 2
    close(out[:, :, 2:], sdpa(q[:, :, 2:], k, v, attn_mask=allowed[2:], scale=0.25))
    assert out[:, :, :2].abs().max() == 0 and torch.isposinf(lse[:, :, :2]).all()


def test_band_mode_matches_the_documented_figure(gen):
    """Mode 4, S_q = 13, S_kv = 15, pre 6, next 4: row i sees i - 4 <= j <= i + 6 (spec 6.3's figure)."""
    q, k, v = rand(gen, 1, 1, 13, 16), rand(gen, 1, 1, 15, 16), rand(gen, 1, 1, 15, 16)
    out, _ = fia(q, k, v, num_heads=1, input_layout="BNSD", scale=0.5, sparse_mode=4, pre_tokens=6,
                 next_tokens=4, atten_mask=compressed_causal_mask())
    i, j = torch.arange(13).view(-1, 1), torch.arange(15).view(1, -1)
    close(out, sdpa(q, k, v, attn_mask=(j >= i - 4) & (j <= i + 6), scale=0.5))


def test_user_mask_and_pse_after_scaling(gen):
    """s = scale * QK^T + pse, then masked (True = masked) (spec 3.4, 6.1, 9); SDPA adds a float mask the same way."""
    q, k, v = rand(gen, 2, 2, 5, 16), rand(gen, 2, 2, 7, 16), rand(gen, 2, 2, 7, 16)
    pse = rand(gen, 2, 2, 5, 7)
    mask = torch.rand(2, 1, 5, 7, generator=gen) < 0.4
    mask[..., 0] = False  # every row keeps a key
    out, _ = fia(q, k, v, num_heads=2, input_layout="BNSD", scale=0.2, pse_shift=pse, atten_mask=mask)
    close(out, sdpa(q, k, v, attn_mask=pse.masked_fill(mask, -math.inf), scale=0.2))


@pytest.mark.parametrize("inner_precise", [0, 2])
def test_a_fully_masked_row_is_the_mean_or_zero(gen, inner_precise):
    """All keys of row 1 masked: -1e12 everywhere gives the mean of V for inner_precise 0/1, 0 for 2/3 (spec 7)."""
    q, k, v = rand(gen, 1, 1, 3, 16), rand(gen, 1, 1, 4, 16), rand(gen, 1, 1, 4, 16)
    mask = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = True
    out, _ = fia(q, k, v, num_heads=1, input_layout="BNSD", atten_mask=mask, inner_precise=inner_precise)
    expected = v[0, 0].mean(0) if inner_precise == 0 else torch.zeros(16, dtype=F64)
    close(out[0, 0, 1], expected)
    close(out[0, 0, [0, 2]], sdpa(q, k, v, scale=1.0)[0, 0, [0, 2]])


def test_learnable_sink_joins_the_denominator_only(gen):
    """p = exp(s) / (sum exp(s) + exp(sink[n])); the LSE excludes the sink (spec 8, 13)."""
    q, k, v = rand(gen, 5, 2, 64), rand(gen, 7, 2, 64), rand(gen, 7, 2, 64)
    sink = torch.tensor([0.5, -1.0], dtype=F64)
    out, lse = fia_v2(q, k, v, num_query_heads=2, input_layout="TND", softmax_scale=0.125, learnable_sink=sink,
                      actual_seq_qlen=[5], actual_seq_kvlen=[7], return_softmax_lse=True)
    scores = 0.125 * torch.einsum("tnd,snd->nts", q, k)
    with_sink = torch.cat([scores, sink.view(2, 1, 1).expand(2, 5, 1)], dim=-1).softmax(-1)[..., :-1]
    close(out, torch.einsum("nts,snd->tnd", with_sink, v))
    close(lse[..., 0], torch.logsumexp(scores, -1).transpose(0, 1))


def test_shared_prefix_then_own_keys_as_the_founding_example(gen):
    """Batch keys are prefix[:50] then kv[:512]; rows past L_q = 50 are 0 (spec 1.4, 14)."""
    q, k, v = rand(gen, 1, 8, 164, 128), rand(gen, 1, 8, 1024, 128), rand(gen, 1, 8, 1024, 128)
    kp, vp = rand(gen, 1, 8, 1024, 128), rand(gen, 1, 8, 1024, 128)
    out, _ = fia(q, k, v, num_heads=8, input_layout="BNSD", scale=128 ** -0.5, pre_tokens=65535,
                 next_tokens=65535, actual_seq_lengths=[50], actual_seq_lengths_kv=[512], key_shared_prefix=kp,
                 value_shared_prefix=vp, actual_shared_prefix_len=[50])
    keys, values = torch.cat([kp[:, :, :50], k[:, :, :512]], 2), torch.cat([vp[:, :, :50], v[:, :, :512]], 2)
    close(out[:, :, :50], sdpa(q[:, :, :50], keys, values, scale=128 ** -0.5))
    assert out[:, :, 50:].abs().max() == 0


def test_paged_decode_reads_blocks_through_the_table(gen):
    """BnNBsD cache, shuffled table: token t of batch b is cache[table[b, t // 16], :, t % 16] (spec 11)."""
    k, v = rand(gen, 2, 2, 40, 64), rand(gen, 2, 2, 40, 64)
    table = torch.tensor([[5, 0, 3], [1, 4, 2]], dtype=torch.int32)
    k_cache, v_cache = rand(gen, 6, 2, 16, 64), rand(gen, 6, 2, 16, 64)
    for b in range(2):
        for t in range(40):
            k_cache[table[b, t // 16], :, t % 16] = k[b, :, t]
            v_cache[table[b, t // 16], :, t % 16] = v[b, :, t]
    q = rand(gen, 2, 4, 1, 64)
    out, _ = fia(q, k_cache, v_cache, num_heads=4, num_key_value_heads=2, input_layout="BNSD", scale=0.125,
                 block_table=table, block_size=16, actual_seq_lengths_kv=[40, 21])
    for b, n in enumerate([40, 21]):
        expected = sdpa(q[b:b + 1], k[b:b + 1, :, :n].repeat_interleave(2, 1), v[b:b + 1, :, :n].repeat_interleave(2, 1),
                        scale=0.125)
        close(out[b:b + 1], expected)


def test_decode_batch_without_keys_is_zero_with_the_ifa_lse(gen):
    """L_kv = 0 in decode: output 0 and LSE float32(-3.4e38), what the FIA route writes for a "legacy IFA" shaped
    decode (ops-transformer op_kernel/arch22/fia_kernel_nonquant.h:112, :346; spec 5.4, 22 row 20)."""
    q, k, v = rand(gen, 2, 2, 1, 16), rand(gen, 2, 2, 6, 16), rand(gen, 2, 2, 6, 16)
    out, lse = fia(q, k, v, num_heads=2, input_layout="BNSD", actual_seq_lengths_kv=[0, 6], softmax_lse_flag=True)
    assert out[0].abs().max() == 0 and (lse[0] == float(torch.tensor(-3.4e38, dtype=torch.float32))).all()
    close(out[1:], sdpa(q[1:], k[1:], v[1:], scale=1.0))


def test_mla_rope_is_concatenated_to_query_and_key(gen):
    """s = scale * (<q, k> + <q_rope, k_rope>); values have no rope part (spec 12)."""
    q, k, v = rand(gen, 1, 2, 3, 128), rand(gen, 1, 2, 5, 128), rand(gen, 1, 2, 5, 128)
    qr, kr = rand(gen, 1, 2, 3, 64), rand(gen, 1, 2, 5, 64)
    out, _ = fia_v2(q, k, v, query_rope=qr, key_rope=kr, num_query_heads=2, input_layout="BNSD",
                    softmax_scale=192 ** -0.5)
    close(out, sdpa(torch.cat([q, qr], -1), torch.cat([k, kr], -1), v, scale=192 ** -0.5))


def test_tree_mask_hides_draft_tokens_only(gen):
    """sparse_mode 9: keys j < L_kv - L_q all visible, key L_kv - L_q + t hidden from row i where tree[i, t]
    (spec 6.6, 25.1); MLA D=512, so the scores include the rope part."""
    q, k, v = rand(gen, 1, 2, 3, 512), rand(gen, 1, 1, 8, 512), rand(gen, 1, 1, 8, 512)
    qr, kr = rand(gen, 1, 2, 3, 64), rand(gen, 1, 1, 8, 64)
    tree = torch.tensor([[[0, 1, 1], [0, 0, 1], [1, 0, 0]]], dtype=torch.bool)
    out, _ = fia_v2(q, k, v, query_rope=qr, key_rope=kr, num_query_heads=2, num_key_value_heads=1,
                    input_layout="BNSD", softmax_scale=0.04, sparse_mode=9, atten_mask=tree,
                    actual_seq_kvlen=[7])
    allowed = torch.ones(3, 7, dtype=torch.bool)
    allowed[:, 4:7] = ~tree[0]
    expected = sdpa(torch.cat([q, qr], -1), torch.cat([k, kr], -1)[:, :, :7].expand(1, 2, 7, 576),
                    v[:, :, :7].expand(1, 2, 7, 512), attn_mask=allowed, scale=0.04)
    close(out, expected)


@pytest.mark.slow
@pytest.mark.parametrize("seq, dim", [(8, 16), (24, 8)])
def test_compiled_flex_matches_a_float64_golden(gen, seq, dim):
    """mode="compiled" (torch.compile of flex_attention; ~10 s a shape on CPU) against SDPA in float64.

    These key counts and head dims are where torch 2.13's compiled CPU kernel returned zero or NaN rows on an
    AVX2 machine when handed a ragged last key block; compiled flex pads the key axis (flex.COMPILED_BUCKET).
    """
    kv_len = seq - 2
    kw = dict(num_heads=2, input_layout="BNSD", scale=0.25, sparse_mode=3, atten_mask=compressed_causal_mask(),
              actual_seq_lengths_kv=[kv_len])
    i, j = torch.arange(seq).unsqueeze(1), torch.arange(seq).unsqueeze(0)
    allowed = (j <= i + kv_len - seq) & (j < kv_len)  # right-down causal: delta = L_kv - L_q = -2
    for _ in range(8):  # the unpadded kernel read garbage: some draws came out right, most did not
        q, k, v = (torch.randn(1, 2, seq, dim, generator=gen) for _ in range(3))
        with flex.flex_mode("compiled"):
            compiled, lse = fia(q, k, v, **kw)
        expected = sdpa(q.double(), k.double(), v.double(), attn_mask=allowed, scale=0.25)
        expected[:, :, ~allowed.any(1)] = 0.0  # rows without a key in the band are written as 0 (spec 7)
        torch.testing.assert_close(compiled.double(), expected, atol=1e-5, rtol=1e-5)
    assert lse.numel() == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flex_on_cuda_matches_the_reference():
    from fia_kit import reference

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, s, 64, generator=gen).to(torch.bfloat16) for s in (33, 70, 70))
    kw = dict(num_heads=4, num_key_value_heads=4, input_layout="BNSD", scale=0.125, sparse_mode=3,
              atten_mask=compressed_causal_mask(), actual_seq_lengths_kv=[50, 70], softmax_lse_flag=True)
    ref_out, ref_lse = reference.npu_fused_infer_attention_score(q, k, v, **kw)
    out, lse = fia(q.cuda(), k.cuda(), v.cuda(), **{**kw, "atten_mask": kw["atten_mask"].cuda()})
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu().double(), ref_out.double(), atol=1e-2, rtol=1e-2)
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.cpu()[finite], ref_lse[finite], atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_compiled_flex_reuses_its_kernel_within_a_bucket():
    """Lengths that change inside one COMPILED_BUCKET (rows and keys padded to 128) compile once, and stay exact."""
    from torch._dynamo.utils import counters

    import fia_kit

    compiled_frames = []
    for length in (100, 120):
        case = fia_kit.Case(q_lens=(length,), kv_lens=(length,), heads=2, kv_heads=1, head_dim=32, sparse_mode=3,
                            dtype=torch.float32, return_lse=False, seed=length)
        plan = fia_kit.plan(case)
        before = counters["stats"]["unique_graphs"]
        out, _ = flex.run_plan(plan, mode="compiled")
        compiled_frames.append(counters["stats"]["unique_graphs"] - before)
        q, k, v = plan.query.double(), plan.key.double(), plan.value.double()
        expected = sdpa(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True,
                        scale=plan.scale)  # S_q == S_kv: right-down causal is the usual causal
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert compiled_frames[1] == 0, compiled_frames
