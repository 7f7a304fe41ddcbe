"""Quantised paths of the reference (spec 16): antiquant K/V, output quant, full quant, builders, validation.

Expected values are computed here with plain torch ops (scale * (x + offset), softmax, round/clamp), never with the
kit's own dequantisation.
"""

from __future__ import annotations

import pytest
import torch

from fia_kit import quant
from fia_kit.errors import FIAArgumentError
from fia_kit.reference import npu_fused_infer_attention_score as op_v1
from fia_kit.reference import npu_fused_infer_attention_score_v2 as op_v2

B, N, S, D = 2, 2, 16, 64
SCALE = 0.125


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Plain float64 softmax(scale q k^T) v on (B, N, S, D) tensors, K/V heads repeated for GQA."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).double(), v.repeat_interleave(g, 1).double()
    return torch.softmax(scale * q.double() @ k.transpose(-1, -2), -1) @ v


def int8(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------------------------ builders

@pytest.mark.parametrize("granularity", quant.GRANULARITIES)
@pytest.mark.parametrize("bits,asymmetric", [(8, False), (8, True), (4, False), (4, True)])
def test_quantize_round_trip_within_half_a_step(granularity: str, bits: int, asymmetric: bool) -> None:
    x = torch.randn(2, 3, 5, 16) * 3 + 1
    ints, scale, offset = quant.quantize_kv(x, granularity, bits=bits, asymmetric=asymmetric)
    lo, hi = (-128, 127) if bits == 8 else (-8, 7)
    assert ints.dtype == torch.int8 and int(ints.min()) >= lo and int(ints.max()) <= hi
    view = {"tensor": (1, 1, 1, 1), "channel": (1, 3, 1, 16), "token": (2, 1, 5, 1), "head": (1, 3, 1, 1),
            "token_head": (2, 3, 5, 1)}[granularity]
    s = scale.reshape(view)
    back = s * (ints.float() + (offset.reshape(view) if asymmetric else 0))
    assert ((back - x).abs() <= s / 2 + 1e-5).all()


def test_int4_pack_unpack_round_trip_and_nibble_order() -> None:
    values = torch.randint(-8, 8, (3, 4, 64), dtype=torch.int8)
    packed = quant.pack_int4(values)
    assert packed.shape == (3, 4, 8) and packed.dtype == torch.int32
    assert torch.equal(quant.unpack_int4(packed), values)
    first = torch.zeros(8, dtype=torch.int8)
    first[0] = 1
    assert int(quant.pack_int4(first)) == 1  # element 0 in the low nibble [inferred]
    ones = torch.full((1,), 0x11111111, dtype=torch.int32)
    assert torch.equal(quant.unpack_int4(ones), torch.ones(8, dtype=torch.int8))
    assert torch.equal(quant.unpack_int4(torch.full((1,), -1, dtype=torch.int32)), -torch.ones(8, dtype=torch.int8))


def test_trans_quant_param_encoding() -> None:
    x = torch.tensor([1.0, 0.0123456, -3.5], dtype=torch.float32)
    enc = quant.encode_trans_quant_param(x)
    assert enc.dtype == torch.uint64
    assert int(enc[0].view(torch.int64)) == 0x3F800000 | (1 << 46)
    expected = (x.view(torch.int32) & torch.tensor(0xFFFFE000 - 2**32, dtype=torch.int32)).view(torch.float32)
    assert torch.equal(quant.decode_trans_quant_param(enc), expected)


def test_full_quant_inputs_builder() -> None:
    q, k, v = torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32)
    qi, ki, vi, kw = quant.full_quant_inputs(q, k, v, encode=True)
    sq, sk, sv = (t.abs().max() / 127 for t in (q, k, v))
    assert qi.dtype == torch.int8 and ((qi.float() * sq - q).abs() <= sq / 2 + 1e-6).all()
    torch.testing.assert_close(quant.decode_trans_quant_param(kw["dequant_scale1"]), (sq * sk).view(1), rtol=2**-10,
                               atol=0)
    torch.testing.assert_close(quant.decode_trans_quant_param(kw["dequant_scale2"]), (sv / 127).view(1), rtol=2**-10,
                               atol=0)
    assert float(kw["quant_scale1"]) == 127.0


def test_paged_token_scales_places_tokens_by_block_table() -> None:
    per_token = torch.arange(2 * 20, dtype=torch.float32).reshape(2, 20)
    table = torch.tensor([[3, 0], [1, 2]], dtype=torch.int32)
    paged = quant.paged_token_scales(per_token, table, 16, 4)
    assert paged.shape == (4, 16)
    assert paged[3, 5] == per_token[0, 5] and paged[0, 3] == per_token[0, 19] and paged[2, 0] == per_token[1, 16]


# ------------------------------------------------------------------------------------------------ antiquant

def dequant(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    return scale * (x.double() + (0 if offset is None else offset))


MODE_PAIRS = [(0, 0, "tensor", "tensor"), (0, 0, "channel", "channel"), (1, 1, "token", "token"),
              (2, 2, "head", "head"), (3, 3, "token_head", "token_head"), (0, 1, "channel", "token")]


@pytest.mark.parametrize("sq,kmode,vmode,gran_k,gran_v",
                         [(1, *m) for m in MODE_PAIRS] + [(4, *m) for m in MODE_PAIRS if m[0] in (0, 1)])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_antiquant_equals_reference_on_dequantised_kv(sq: int, kmode: int, vmode: int, gran_k: str, gran_v: str,
                                                      asymmetric: bool, gen: torch.Generator) -> None:
    q = torch.randn(B, N, sq, D, generator=gen)
    k, v = int8((B, 1, S, D), gen), int8((B, 1, S, D), gen)
    view = {"tensor": (1, 1, 1, 1), "channel": (1, 1, 1, D), "token": (B, 1, S, 1), "head": (1, 1, 1, 1),
            "token_head": (B, 1, S, 1)}
    params = {}
    for name, t, gran in (("key", k, gran_k), ("value", v, gran_v)):
        _, scale, offset = quant.quantize_kv(torch.randn(B, 1, S, D, generator=gen), gran, asymmetric=asymmetric)
        params[name] = (scale, offset, t)
    kw = {"key_antiquant_scale": params["key"][0], "value_antiquant_scale": params["value"][0],
          "key_antiquant_offset": params["key"][1], "value_antiquant_offset": params["value"][1],
          "key_antiquant_mode": kmode, "value_antiquant_mode": vmode}
    out, _ = op_v1(q, k, v, num_heads=N, num_key_value_heads=1, input_layout="BNSD", scale=SCALE, **kw)
    kf = dequant(k, params["key"][0].reshape(view[gran_k]),
                 None if params["key"][1] is None else params["key"][1].reshape(view[gran_k]))
    vf = dequant(v, params["value"][0].reshape(view[gran_v]),
                 None if params["value"][1] is None else params["value"][1].reshape(view[gran_v]))
    torch.testing.assert_close(out.double(), attention(q, kf, vf), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_query_with_int8_kv(dtype: torch.dtype, gen: torch.Generator) -> None:
    k, v = int8((B, 1, S, D), gen), int8((B, 1, S, D), gen)
    ks, vs = (torch.rand(1, 1, 1, D, generator=gen).add(0.1).mul(0.05).to(dtype) for _ in range(2))
    q = torch.randn(B, N, 1, D, generator=gen).to(dtype)
    out, _ = op_v1(q, k, v, num_heads=N, num_key_value_heads=1, input_layout="BNSD", scale=SCALE,
                   key_antiquant_scale=ks, value_antiquant_scale=vs)
    assert out.dtype == dtype
    expected = attention(q, ks.double() * k.double(), vs.double() * v.double())
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", [4, 5])
def test_paged_per_token_antiquant(mode: int, gen: torch.Generator) -> None:
    bs, blocks, lens = 16, 5, [20, 9]
    table = torch.tensor([[4, 1], [0, 3]], dtype=torch.int32)
    k_cache, v_cache = int8((blocks, 1, bs, D), gen), int8((blocks, 1, bs, D), gen)
    ks = torch.rand(blocks, 1, bs, generator=gen) + 0.1
    vs = torch.rand(blocks, 1, bs, generator=gen) + 0.1
    shape = (blocks, bs) if mode == 4 else (blocks, 1, bs)
    q = torch.randn(2, N, 1, D, generator=gen)
    out, _ = op_v1(q, k_cache, v_cache, num_heads=N, num_key_value_heads=1, input_layout="BNSD", scale=SCALE,
                   block_table=table, block_size=bs, actual_seq_lengths_kv=lens,
                   key_antiquant_scale=ks.reshape(shape), value_antiquant_scale=vs.reshape(shape),
                   key_antiquant_mode=mode, value_antiquant_mode=mode)
    for b, n in enumerate(lens):
        rows = torch.cat([torch.arange(bs) + bs * int(table[b, i]) for i in range(2)])[:n]
        kf = ks.reshape(-1, 1)[rows] * k_cache.reshape(-1, D)[rows].double()
        vf = vs.reshape(-1, 1)[rows] * v_cache.reshape(-1, D)[rows].double()
        expected = attention(q[b:b + 1], kf.view(1, 1, n, D), vf.view(1, 1, n, D))
        torch.testing.assert_close(out[b:b + 1].double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sq", [1, 3])
def test_int4_per_channel(sq: int, gen: torch.Generator) -> None:
    k4, v4 = (torch.randint(-8, 8, (B, 1, S, D), generator=gen, dtype=torch.int8) for _ in range(2))
    ks, vs = torch.rand(1, 1, 1, D, generator=gen) + 0.5, torch.rand(1, 1, 1, D, generator=gen) + 0.5
    q = torch.randn(B, N, sq, D, generator=gen)
    out, _ = op_v1(q, quant.pack_int4(k4), quant.pack_int4(v4), num_heads=N, num_key_value_heads=1,
                   input_layout="BNSD", scale=SCALE, key_antiquant_scale=ks, value_antiquant_scale=vs)
    assert out.shape == (B, N, sq, D)
    torch.testing.assert_close(out.double(), attention(q, ks * k4.double(), vs * v4.double()), rtol=1e-5, atol=1e-4)


def test_int4_all_ones_gives_ones() -> None:
    """op-plugin's int4 golden (spec 20): 0x11111111 words with unit scales give an all-ones output."""
    kv = torch.full((1, 1, 8, 16), 0x11111111, dtype=torch.int32)
    one = torch.ones(1, 1, 1, 128, dtype=torch.float16)
    out, _ = op_v1(torch.randn(1, 1, 4, 128, dtype=torch.float16), kv, kv, num_heads=1, input_layout="BNSD",
                   key_antiquant_scale=one, value_antiquant_scale=one)
    assert torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("combined_mode", [0, 1])
def test_combined_form_equals_separated_math(combined_mode: int, gen: torch.Generator) -> None:
    k, v = int8((B, 1, S, D), gen), int8((B, 1, S, D), gen)
    q = torch.randn(B, N, 1, D, generator=gen)
    if combined_mode == 0:
        scale, offset = torch.rand(2, 1, 1, D, generator=gen) + 0.1, torch.randn(2, 1, 1, D, generator=gen)
        kf, vf = dequant(k, scale[0], offset[0]), dequant(v, scale[1], offset[1])
    else:
        scale, offset = torch.rand(2, B, S, generator=gen) + 0.1, torch.randn(2, B, S, generator=gen)
        kf = dequant(k, scale[0].view(B, 1, S, 1), offset[0].view(B, 1, S, 1))
        vf = dequant(v, scale[1].view(B, 1, S, 1), offset[1].view(B, 1, S, 1))
    out, _ = op_v1(q, k, v, num_heads=N, num_key_value_heads=1, input_layout="BNSD", scale=SCALE,
                   antiquant_scale=scale, antiquant_offset=offset, antiquant_mode=combined_mode)
    torch.testing.assert_close(out.double(), attention(q, kf, vf), rtol=1e-5, atol=1e-4)


def test_int8_shared_prefix_is_dequantised_with_the_key_scales(gen: torch.Generator) -> None:
    k, v = int8((B, 1, S, D), gen), int8((B, 1, S, D), gen)
    kp, vp = int8((1, 1, 5, D), gen), int8((1, 1, 5, D), gen)
    ks, vs = torch.rand(1, 1, 1, D, generator=gen) + 0.1, torch.rand(1, 1, 1, D, generator=gen) + 0.1
    q = torch.randn(B, N, 1, D, generator=gen)
    out, _ = op_v1(q, k, v, num_heads=N, num_key_value_heads=1, input_layout="BNSD", scale=SCALE,
                   key_shared_prefix=kp, value_shared_prefix=vp, actual_shared_prefix_len=[3],
                   key_antiquant_scale=ks, value_antiquant_scale=vs)
    kf = ks * torch.cat([kp[:, :, :3].expand(B, -1, -1, -1), k], 2).double()
    vf = vs * torch.cat([vp[:, :, :3].expand(B, -1, -1, -1), v], 2).double()
    torch.testing.assert_close(out.double(), attention(q, kf, vf), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------ output quant

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("form", ["v1", "v2"])
def test_output_quant_is_round_half_even_and_saturate(per_channel: bool, form: str, gen: torch.Generator) -> None:
    q, k, v = (torch.randn(B, N, 8, D, generator=gen) for _ in range(3))
    shape = (1, N, 1, D) if per_channel else (1,)
    scale = torch.rand(shape, generator=gen) * 400
    offset = torch.randn(shape, generator=gen) * 10
    if form == "v1":
        base, _ = op_v1(q, k, v, num_heads=N, input_layout="BNSD", scale=SCALE)
        out, _ = op_v1(q, k, v, num_heads=N, input_layout="BNSD", scale=SCALE, quant_scale2=scale,
                       quant_offset2=offset)
    else:
        base, _ = op_v2(q, k, v, num_query_heads=N, input_layout="BNSD", softmax_scale=SCALE)
        out, _ = op_v2(q, k, v, num_query_heads=N, input_layout="BNSD", softmax_scale=SCALE,
                       quant_scale_out=scale, quant_offset_out=offset)
    assert out.dtype == torch.int8
    expected = torch.round(base * scale + offset).clamp(-128, 127).to(torch.int8)
    saturated = (base * scale + offset).abs() > 127
    assert saturated.any() and torch.equal(out, expected)


def test_output_quant_ties_round_to_even() -> None:
    """Constant V makes O exact, so O * scale lands on .5 ties: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2 [inferred]."""
    q, k = torch.randn(1, 1, 2, 32), torch.randn(1, 1, 4, 32)
    v = torch.ones(1, 1, 4, 32)
    ties = torch.tensor([0.5, 1.5, 2.5, -2.5, 300.0, -300.0, 126.5, -127.5]).repeat(4)
    out, _ = op_v1(q, k, v, num_heads=1, input_layout="BNSD", quant_scale2=ties.view(1, 1, 1, 32))
    expected = torch.tensor([0, 2, 2, -2, 127, -128, 126, -128], dtype=torch.int8).repeat(4)
    assert torch.equal(out, expected.expand(1, 1, 2, 32))


# ------------------------------------------------------------------------------------------------ full quant

def test_full_quant_all_ones_unit_scales_gives_ones() -> None:
    """op-plugin's golden (spec 20): all-ones int8 Q/K/V with unit scales equal the float result (all ones)."""
    ones = torch.ones(1, 1, 4, 32, dtype=torch.int8)
    one = torch.ones(1)
    out, _ = op_v1(ones, ones, ones, num_heads=1, input_layout="BNSD", dequant_scale1=one, quant_scale1=one,
                   dequant_scale2=one)
    assert out.dtype == torch.float16 and torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("encoded", [False, True])
def test_full_quant_close_to_float(encoded: bool, gen: torch.Generator) -> None:
    qf, kf, vf = (torch.randn(1, N, 32, D, generator=gen) for _ in range(3))
    (qi, qs, _), (ki, ks, _), (vi, vs, _) = (quant.quantize_kv(t, "tensor") for t in (qf, kf, vf))
    qs_p = 127.0
    dq1, dq2 = qs * ks, vs / qs_p
    if encoded:
        dq1, dq2 = quant.encode_trans_quant_param(dq1), quant.encode_trans_quant_param(dq2)
    out, _ = op_v1(qi, ki, vi, num_heads=N, input_layout="BNSD", scale=SCALE, dequant_scale1=dq1,
                   quant_scale1=torch.tensor([qs_p]), dequant_scale2=dq2)
    expected = attention(qi * qs, ki * ks, vi * vs)
    assert out.dtype == torch.float16
    v_range = float(vs) * 127  # P is quantised in steps of 1/127 of the row max: allow a few steps of V's range
    assert (out.double() - expected).abs().max() < 4 / 127 * v_range


def test_mla_v2_full_quant(gen: torch.Generator) -> None:
    nq, skv, d = 4, 12, 512
    q = int8((1, nq, 1, d), gen)
    kv = int8((1, 1, skv, d), gen)
    q_rope = torch.randn(1, nq, 1, 64, generator=gen).to(torch.bfloat16)
    k_rope = torch.randn(1, 1, skv, 64, generator=gen).to(torch.bfloat16)
    dq_q = torch.rand(1, nq, 1, generator=gen) * 1e-3
    dq_k, dq_v = torch.tensor([2e-3]), torch.tensor([1e-2])
    out, _ = op_v2(q, kv, kv, query_rope=q_rope, key_rope=k_rope, num_query_heads=nq, num_key_value_heads=1,
                   input_layout="BNSD", softmax_scale=SCALE, dequant_scale_query=dq_q, dequant_scale_key=dq_k,
                   dequant_scale_value=dq_v, query_quant_mode=3)
    assert out.dtype == torch.bfloat16
    qf = torch.cat([q.double() * dq_q.double().unsqueeze(-1), q_rope.double()], -1)
    kf = torch.cat([kv.double() * dq_k.double(), k_rope.double()], -1)
    probs = torch.softmax(SCALE * qf @ kf.transpose(-1, -2), -1)
    torch.testing.assert_close(out.double(), probs @ (kv.double() * dq_v.double()), rtol=1e-2, atol=1e-2)


def test_mla_v2_full_quant_tnd_paged(gen: torch.Generator) -> None:
    """vLLM's MLA full-quant decode pattern (spec 19): TND, (T, N) dequant_scale_query, paged int8 latent cache."""
    nq, bs, lens_q, lens_kv = 4, 16, [1, 2], [20, 10]
    table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    q = int8((3, nq, 512), gen)
    cache = int8((4, bs, 512), gen)
    q_rope = torch.randn(3, nq, 64, generator=gen).to(torch.bfloat16)
    k_rope = torch.randn(4, bs, 64, generator=gen).to(torch.bfloat16)
    dq_q = torch.rand(3, nq, generator=gen) * 1e-3
    dq_k, dq_v = torch.tensor([1e-3]), torch.tensor([1e-2])
    out, _ = op_v2(q, cache, cache, query_rope=q_rope, key_rope=k_rope, num_query_heads=nq, num_key_value_heads=1,
                   input_layout="TND", actual_seq_qlen=[1, 3], actual_seq_kvlen=lens_kv, block_table=table,
                   block_size=bs, softmax_scale=SCALE, dequant_scale_query=dq_q, dequant_scale_key=dq_k,
                   dequant_scale_value=dq_v, query_quant_mode=3)
    assert out.shape == (3, nq, 512) and out.dtype == torch.bfloat16
    row = 0
    for b, (lq, lkv) in enumerate(zip(lens_q, lens_kv, strict=True)):
        tokens = cache[table[b].long()].reshape(-1, 512)[:lkv].double()
        ropes = k_rope[table[b].long()].reshape(-1, 64)[:lkv].double()
        for i in range(row, row + lq):
            qf = torch.cat([q[i].double() * dq_q[i].double().unsqueeze(-1), q_rope[i].double()], -1)
            kf = torch.cat([tokens * dq_k.double(), ropes], -1)
            expected = torch.softmax(SCALE * qf @ kf.T, -1) @ (tokens * dq_v.double())
            torch.testing.assert_close(out[i].double(), expected, rtol=1e-2, atol=1e-2)
        row += lq


# ------------------------------------------------------------------------------------------------ validation

def _case(**over):
    g = torch.Generator().manual_seed(1)
    base = dict(q=torch.randn(B, N, 1, D, generator=g), k=int8((B, N, S, D), g), v=int8((B, N, S, D), g),
                kw=dict(num_heads=N, input_layout="BNSD", key_antiquant_scale=torch.ones(1, N, 1, D),
                        value_antiquant_scale=torch.ones(1, N, 1, D)))
    kw = dict(base["kw"])
    kw.update(over.pop("kw", {}))
    for name in [n for n, v in kw.items() if v is None]:
        del kw[name]
    base.update(over)
    return base["q"], base["k"], base["v"], kw


ONES_PT = torch.ones(1)
FLOAT_KV = dict(k=torch.randn(B, N, S, D), v=torch.randn(B, N, S, D))
VALIDATION = {
    "scales missing": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None)),
                       "key_antiquant_scale + value_antiquant_scale"),
    "value scale missing": (dict(kw=dict(value_antiquant_scale=None)), "key_antiquant_scale + value_antiquant_scale"),
    "offsets all-or-none": (dict(kw=dict(key_antiquant_offset=torch.zeros(1, N, 1, D))),
                            "key_antiquant_offset + value_antiquant_offset"),
    "modes differ": (dict(kw=dict(key_antiquant_mode=1, value_antiquant_mode=0)),
                     "key_antiquant_mode + value_antiquant_mode"),
    "mode out of range": (dict(kw=dict(key_antiquant_mode=6, value_antiquant_mode=6)),
                          "key_antiquant_mode + value_antiquant_mode"),
    "prefill mode 2": (dict(q=torch.randn(B, N, 4, D), kw=dict(key_antiquant_mode=2, value_antiquant_mode=2)),
                       "key_antiquant_mode + value_antiquant_mode"),
    "paged modes need block_table": (dict(kw=dict(key_antiquant_mode=4, value_antiquant_mode=4)),
                                     "key_antiquant_mode + value_antiquant_mode + block_table"),
    "int4 mode 2": (dict(k=torch.zeros(B, N, S, 8, dtype=torch.int32), v=torch.zeros(B, N, S, 8, dtype=torch.int32),
                         kw=dict(key_antiquant_scale=torch.ones(N), value_antiquant_scale=torch.ones(N),
                                 key_antiquant_mode=2, value_antiquant_mode=2)), "key_antiquant_mode + value_antiquant_mode"),
    "bad scale shape": (dict(kw=dict(key_antiquant_scale=torch.ones(1, N, 1, 3))), "key_antiquant_scale"),
    "per-token dtype": (dict(kw=dict(key_antiquant_scale=torch.ones(1, B, S, dtype=torch.float16),
                                     value_antiquant_scale=torch.ones(1, B, S, dtype=torch.float16),
                                     key_antiquant_mode=1, value_antiquant_mode=1)), "key_antiquant_scale"),
    "offset shape": (dict(kw=dict(key_antiquant_offset=torch.zeros(1), value_antiquant_offset=torch.zeros(1))),
                     "key_antiquant_offset"),
    "antiquant with float kv": (dict(**FLOAT_KV), "key_antiquant_scale"),
    "combined int4": (dict(k=torch.zeros(B, N, S, 8, dtype=torch.int32), v=torch.zeros(B, N, S, 8, dtype=torch.int32),
                           kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                   antiquant_scale=torch.ones(2))), "antiquant_scale + key"),
    "combined mode 1 prefill": (dict(q=torch.randn(B, N, 4, D), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, antiquant_scale=torch.ones(2, B, S),
        antiquant_mode=1)), "antiquant_mode"),
    "combined leading 2": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                        antiquant_scale=torch.ones(3))), "antiquant_scale"),
    "int4 with output quant": (dict(q=torch.randn(B, N, 4, D), k=torch.zeros(B, N, S, 8, dtype=torch.int32),
                                    v=torch.zeros(B, N, S, 8, dtype=torch.int32), kw=dict(quant_scale2=ONES_PT)),
                               "quant_scale2 + key"),
    "offset without scale": (dict(**FLOAT_KV, kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                      quant_offset2=ONES_PT)), "quant_offset2"),
    "output quant dtype": (dict(**FLOAT_KV, kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                    quant_scale2=torch.ones(1, dtype=torch.float16))),
                           "quant_scale2"),
    "output quant per-channel shape": (dict(**FLOAT_KV, kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                                quant_scale2=torch.ones(N, 3))), "quant_scale2"),
    "per-channel output quant with lse": (dict(**FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=torch.ones(N, D), softmax_lse_flag=True)),
        "quant_scale2 + softmax_lse_flag"),
    "output quant layout": (dict(q=torch.randn(B, 1, N, D), k=torch.randn(B, S, N, D), v=torch.randn(B, S, N, D),
                                 kw=dict(
        input_layout="BSND_BNSD", num_key_value_heads=N, key_antiquant_scale=None, value_antiquant_scale=None,
        quant_scale2=ONES_PT)), "quant_scale2 + input_layout"),
    "negative band with int8 output": (dict(q=torch.randn(B, N, 4, D), **FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=ONES_PT,
        atten_mask=torch.zeros(B, 1, 4, S, dtype=torch.bool), next_tokens=-1, pre_tokens=8)),
        "quant_scale2 + pre_tokens + next_tokens"),
    "offset with uncomputed rows": (dict(q=torch.randn(B, N, 20, D), **FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=ONES_PT, quant_offset2=ONES_PT,
        sparse_mode=3, atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1))),
        "quant_offset2 + sparse_mode"),
    "full quant scales together": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT)),
        "dequant_scale1 + quant_scale1 + dequant_scale2"),
    "full quant decode": (dict(q=int8((B, N, 1, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT, quant_scale1=ONES_PT,
        dequant_scale2=ONES_PT)), "query"),
    "full quant with antiquant": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        dequant_scale1=ONES_PT, quant_scale1=ONES_PT, dequant_scale2=ONES_PT)), "key_antiquant_scale"),
    "full quant per-tensor": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=torch.ones(2), quant_scale1=ONES_PT,
        dequant_scale2=ONES_PT)), "dequant_scale1"),
    "full-quant scale with float query": (dict(**FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT)), "dequant_scale1"),
    "int8 query needs int8 kv": (dict(q=int8((B, N, 4, D), torch.Generator()), **FLOAT_KV), "key"),
    "key value dtypes differ": (dict(v=torch.zeros(B, N, S, 8, dtype=torch.int32)), "key + value"),
    "packed layout": (dict(q=torch.randn(B, N, D), k=int8((B * S, N, D), torch.Generator()),
                           v=int8((B * S, N, D), torch.Generator()), kw=dict(
        input_layout="TND", actual_seq_lengths=[1, 2], actual_seq_lengths_kv=[S, 2 * S])), "input_layout"),
    "left padding with int4": (dict(q=torch.randn(B, N, 4, D), k=torch.zeros(B, N, S, 8, dtype=torch.int32),
                                    v=torch.zeros(B, N, S, 8, dtype=torch.int32), kw=dict(
        kv_padding_size=torch.tensor([1]), actual_seq_lengths_kv=[4, 4])), "kv_padding_size + key"),
    "separated prefill S_q <= 16": (dict(q=torch.randn(B, N, 17, D)), "key_antiquant_scale + query"),
    "prefix with per-token modes": (dict(kw=dict(
        key_antiquant_scale=torch.ones(1, B, S), value_antiquant_scale=torch.ones(1, B, S), key_antiquant_mode=1,
        value_antiquant_mode=1, key_shared_prefix=torch.zeros(1, N, 2, D, dtype=torch.int8),
        value_shared_prefix=torch.zeros(1, N, 2, D, dtype=torch.int8))),
        "key_antiquant_mode + value_antiquant_mode + key_shared_prefix"),
    "antiquant offset without scale": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                    key_antiquant_offset=ONES_PT)), "key_antiquant_offset"),
    "prefill paging excludes antiquant": (dict(q=torch.randn(1, N, 4, D), k=torch.zeros(2, N, 16, D, dtype=torch.int8),
                                               v=torch.zeros(2, N, 16, D, dtype=torch.int8), kw=dict(
        block_table=torch.zeros(1, 1, dtype=torch.int32), block_size=16, actual_seq_lengths_kv=[8])),
        "block_table + key"),
    "int4 cannot be paged": (dict(q=torch.randn(1, N, 1, D), k=torch.zeros(2, N, 16, 8, dtype=torch.int32),
                                  v=torch.zeros(2, N, 16, 8, dtype=torch.int32), kw=dict(
        block_table=torch.zeros(1, 1, dtype=torch.int32), block_size=16, actual_seq_lengths_kv=[8])),
        "block_table + key"),
    "int4 needs D % 64": (dict(q=torch.randn(B, N, 1, 32), k=torch.zeros(B, N, S, 4, dtype=torch.int32),
                               v=torch.zeros(B, N, S, 4, dtype=torch.int32), kw=dict(
        key_antiquant_scale=torch.ones(1, N, 1, 32), value_antiquant_scale=torch.ones(1, N, 1, 32))), "key"),
    "antiquant with rope": (dict(q=torch.randn(1, N, 1, 512), k=torch.zeros(1, 1, S, 512, dtype=torch.int8),
                                 v=torch.zeros(1, 1, S, 512, dtype=torch.int8), kw=dict(
        num_key_value_heads=1, query_rope=torch.zeros(1, N, 1, 64), key_rope=torch.zeros(1, 1, S, 64, dtype=torch.int8),
        key_antiquant_scale=ONES_PT, value_antiquant_scale=ONES_PT)), "query_rope + key"),
    "combined mode range": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                         antiquant_scale=torch.ones(2), antiquant_mode=2)), "antiquant_mode"),
    "combined with separated modes": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                   antiquant_scale=torch.ones(2), key_antiquant_mode=1)),
                                      "key_antiquant_mode + antiquant_scale"),
    "combined offset shape": (dict(kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                           antiquant_scale=torch.ones(2), antiquant_offset=torch.ones(2, 1))),
                              "antiquant_offset"),
    "output offset shape": (dict(**FLOAT_KV, kw=dict(key_antiquant_scale=None, value_antiquant_scale=None,
                                                     quant_scale2=ONES_PT, quant_offset2=torch.ones(N, D))),
                            "quant_offset2"),
    "per-channel output needs D % 32": (dict(q=torch.randn(B, N, 1, 16), k=torch.randn(B, N, S, 16),
                                             v=torch.randn(B, N, S, 16), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=torch.ones(N, 16))), "quant_scale2 + value"),
    "output quant with MLA": (dict(q=torch.randn(1, N, 1, 512), k=torch.randn(1, 1, S, 512),
                                   v=torch.randn(1, 1, S, 512), kw=dict(
        num_key_value_heads=1, query_rope=torch.zeros(1, N, 1, 64), key_rope=torch.zeros(1, 1, S, 64),
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=ONES_PT)), "quant_scale2 + query_rope"),
    "mode 4 negative pre with int8 output": (dict(q=torch.randn(B, N, 4, D), **FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=ONES_PT, sparse_mode=4, pre_tokens=-1,
        next_tokens=4, atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1))),
        "quant_scale2 + pre_tokens + next_tokens"),
    # mode 4, L_q 20 > S 16, next 0: rows 0..3 have no key in the band (next + L_kv - L_q < 0, spec 16.1)
    "mode 4 offset with uncomputed rows": (dict(q=torch.randn(B, N, 20, D), **FLOAT_KV, kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, quant_scale2=ONES_PT, quant_offset2=ONES_PT,
        sparse_mode=4, pre_tokens=30, next_tokens=0,
        atten_mask=torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1))),
        "quant_offset2 + sparse_mode"),

    "full quant layout": (dict(q=int8((B, 4, N, D), torch.Generator()), k=int8((B, S, N, D), torch.Generator()),
                               v=int8((B, S, N, D), torch.Generator()), kw=dict(
        input_layout="BSND_BNSD", key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT,
        quant_scale1=ONES_PT, dequant_scale2=ONES_PT)), "input_layout"),
    "full quant with prefix": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT, quant_scale1=ONES_PT,
        dequant_scale2=ONES_PT, key_shared_prefix=torch.zeros(1, N, 2, D, dtype=torch.int8),
        value_shared_prefix=torch.zeros(1, N, 2, D, dtype=torch.int8))), "key_shared_prefix + query"),
    "full quant paging": (dict(q=int8((1, N, 4, D), torch.Generator()), k=torch.zeros(2, N, 16, D, dtype=torch.int8),
                               v=torch.zeros(2, N, 16, D, dtype=torch.int8), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT, quant_scale1=ONES_PT,
        dequant_scale2=ONES_PT, block_table=torch.zeros(1, 1, dtype=torch.int32), block_size=16,
        actual_seq_lengths_kv=[8])), "block_table + query"),
    "quant_scale1 dtype": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT,
        quant_scale1=quant.encode_trans_quant_param(ONES_PT), dequant_scale2=ONES_PT)), "quant_scale1"),
    "full quant pse dtype": (dict(q=int8((B, N, 4, D), torch.Generator()), kw=dict(
        key_antiquant_scale=None, value_antiquant_scale=None, dequant_scale1=ONES_PT, quant_scale1=ONES_PT,
        dequant_scale2=ONES_PT, pse_shift=torch.zeros(B, N, 4, S))), "pse_shift"),
    "reserved rope antiquant": (dict(kw=dict(key_rope_antiquant_scale=ONES_PT)), "key_rope_antiquant_scale"),
}


@pytest.mark.parametrize("name", list(VALIDATION))
def test_validation_rule(name: str) -> None:
    over, parameter = VALIDATION[name]
    q, k, v, kw = _case(**{key: value for key, value in over.items()})
    with pytest.raises(FIAArgumentError) as info:
        op_v1(q, k, v, **kw)
    assert info.value.parameter == parameter, str(info.value)


@pytest.mark.parametrize("next_tokens,accepted", [(4, True), (3, False)])
def test_mode4_offset_needs_a_key_for_every_row(next_tokens: int, accepted: bool) -> None:
    """L_q 20, L_kv 16, mode 4: row 0's last key is next + L_kv - L_q = next - 4, so next 4 reaches key 0."""
    over = VALIDATION["mode 4 offset with uncomputed rows"][0]
    q, k, v, kw = _case(**{**over, "kw": {**over["kw"], "next_tokens": next_tokens}})
    if accepted:
        out, _ = op_v1(q, k, v, **kw)
        assert out.dtype == torch.int8 and out.shape == (B, N, 20, D)
    else:
        with pytest.raises(FIAArgumentError, match="uncomputed"):
            op_v1(q, k, v, **kw)


MLA = dict(num_query_heads=4, num_key_value_heads=1, input_layout="BNSD", query_quant_mode=3,
           query_rope=torch.zeros(1, 4, 1, 64, dtype=torch.bfloat16),
           key_rope=torch.zeros(1, 1, 4, 64, dtype=torch.bfloat16), dequant_scale_query=torch.ones(1, 4, 1),
           dequant_scale_key=ONES_PT, dequant_scale_value=ONES_PT)
V2_VALIDATION = {
    "query mode without int8 query": (dict(query_quant_mode=3), "query_quant_mode"),
    "query scale with float query": (dict(dequant_scale_query=torch.ones(1, 4, 1)), "dequant_scale_query"),
    "rope dtype": (dict(MLA, query_rope=torch.zeros(1, 4, 1, 64)), "query_rope"),
    "no offsets": (dict(MLA, dequant_offset_key=ONES_PT), "dequant_offset_key"),
    "no output quant": (dict(MLA, quant_scale_out=ONES_PT), "quant_scale_out"),
    "kv modes 0": (dict(MLA, key_quant_mode=1, value_quant_mode=1), "key_quant_mode"),
    "kv scales per-tensor": (dict(MLA, dequant_scale_key=torch.ones(2)), "dequant_scale_key"),
    "query scale shape": (dict(MLA, dequant_scale_query=torch.ones(1, 4, 2)), "dequant_scale_query"),
    "int8 query needs rope": (dict(MLA, query_rope=None, key_rope=None), "query_rope"),
}


@pytest.mark.parametrize("name", list(V2_VALIDATION))
def test_v2_validation_rule(name: str) -> None:
    kw, parameter = V2_VALIDATION[name]
    g = torch.Generator().manual_seed(2)
    q = int8((1, 4, 1, 512), g) if "query_quant_mode" in kw and name != "query mode without int8 query" \
        else torch.randn(1, 4, 1, 512)
    kv = int8((1, 1, 4, 512), g) if q.dtype == torch.int8 else torch.randn(1, 1, 4, 512)
    kw = {k: v for k, v in {"num_query_heads": 4, "num_key_value_heads": 1, "input_layout": "BNSD", **kw}.items()
          if v is not None}
    with pytest.raises(FIAArgumentError) as info:
        op_v2(q, kv, kv, **kw)
    assert info.value.parameter == parameter, str(info.value)


def test_v2_validation_names_v2_parameters(gen: torch.Generator) -> None:
    q, k = torch.randn(B, N, 1, D), int8((B, N, S, D), gen)
    with pytest.raises(FIAArgumentError) as info:
        op_v2(q, k, k, num_query_heads=N, input_layout="BNSD", dequant_scale_key=torch.ones(1, N, 1, D),
              dequant_scale_value=torch.ones(1, N, 1, D), key_quant_mode=1, value_quant_mode=0)
    assert info.value.parameter == "key_quant_mode + value_quant_mode"
    with pytest.raises(FIAArgumentError) as info:
        op_v2(int8((1, 4, 1, 512), gen), int8((1, 1, 4, 512), gen), int8((1, 1, 4, 512), gen), num_query_heads=4, num_key_value_heads=1,
              input_layout="BNSD", query_rope=torch.zeros(1, 4, 1, 64, dtype=torch.bfloat16),
              key_rope=torch.zeros(1, 1, 4, 64, dtype=torch.bfloat16), dequant_scale_query=torch.ones(1, 4, 1),
              dequant_scale_key=ONES_PT, dequant_scale_value=ONES_PT)
    assert info.value.parameter == "dequant_scale_query + query_quant_mode"
