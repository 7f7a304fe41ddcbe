"""The fia_kit:: look-alike custom ops: opcheck, shape inference vs real outputs, one-node graphs, recompiles."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fia_kit.backends import lookalike
from fia_kit.backends.compiled import captured_graph, recompile_counts
from fia_kit.call import parse_call
from fia_kit.shapes import infer_output
from fia_kit.signatures import keyword_defaults


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)


def _lengths(values, target):
    return list(values) if target.startswith("torch_npu") else torch.tensor(values, dtype=torch.int64)


def _kw(target, **kw):
    """Spell v1-named keywords for a target (tests keep their own tiny table, independent of signatures.py)."""
    names = {"num_heads": "num_query_heads", "actual_seq_lengths": "actual_seq_qlen",
             "actual_seq_lengths_kv": "actual_seq_kvlen", "softmax_lse_flag": "return_softmax_lse",
             "scale": "softmax_scale"}
    v2 = target.endswith("v2")
    return {(names.get(k, k) if v2 else k): (_lengths(v, target) if k.startswith("actual_seq") else v)
            for k, v in kw.items()}


CASES = {
    "bsh-gqa": (lambda: (_t(2, 3, 64), _t(2, 5, 32), _t(2, 5, 32)),
                dict(num_heads=4, num_key_value_heads=2, input_layout="BSH", actual_seq_lengths=[2, 3],
                     actual_seq_lengths_kv=[4, 5], softmax_lse_flag=True)),
    "bnsd-bsnd": (lambda: (_t(2, 2, 4, 8), _t(2, 2, 6, 8), _t(2, 2, 6, 8)),
                  dict(num_heads=2, input_layout="BNSD_BSND", actual_seq_lengths_kv=[6, 3])),
    "tnd": (lambda: (_t(7, 2, 8), _t(9, 2, 8), _t(9, 2, 8)),
            dict(num_heads=2, input_layout="TND", actual_seq_lengths=[3, 7], actual_seq_lengths_kv=[4, 9],
                 softmax_lse_flag=True)),
    "paged-bnsd": (lambda: (_t(2, 2, 1, 8), _t(6, 2, 16, 8), _t(6, 2, 16, 8)),
                   dict(num_heads=2, input_layout="BNSD", block_table=torch.tensor([[0, 2, 4], [1, 3, 5]],
                                                                                   dtype=torch.int32),
                        block_size=16, actual_seq_lengths_kv=[40, 20], softmax_lse_flag=True)),
}


@pytest.mark.parametrize("target", list(lookalike.OP_NAMES))
@pytest.mark.parametrize("case", ["bsh-gqa", "tnd"])
def test_opcheck(target, case):
    make, kw = CASES[case]
    torch.library.opcheck(lookalike.op(target), make(), _kw(target, **kw))


# Spec 4.3 by hand, per case: (attention_out shape, softmax_lse shape); dtypes float32 (the query's) and float32.
SHAPES = {
    "bsh-gqa": ((2, 3, 4 * 16), (2, 4, 3, 1)),  # BSH out: H = N_q * value_d, value_d = 32 / N_kv
    "bnsd-bsnd": ((2, 4, 2, 8), (0,)),          # output part BSND; no LSE requested: (0,)
    "tnd": ((7, 2, 8), (7, 2, 1)),               # TND: (T, N_q, D) and LSE (T, N_q, 1)
    "paged-bnsd": ((2, 2, 1, 8), (2, 2, 1, 1)),  # value_d from the (blocks, N_kv, bs, D) cache
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("target", ["torch_npu.v1", "torchair.v2"])
def test_fake_kernel_matches_real_outputs(case, target):
    make, kw = CASES[case]
    args, keywords = make(), _kw(target, **kw)
    out, lse = lookalike.op(target)(*args, **keywords)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = [mode.from_tensor(a) for a in args]
        fake_kw = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in keywords.items()}
        fake_out, fake_lse = lookalike.op(target)(*fake_args, **fake_kw)
    out_shape, lse_shape = SHAPES[case]
    for o, lse_out in ((out, lse), (fake_out, fake_lse)):
        assert (tuple(o.shape), o.dtype) == (out_shape, torch.float32)
        assert (tuple(lse_out.shape), lse_out.dtype) == (lse_shape, torch.float32)


def _options(**given):
    return {**{k: v for k, v in keyword_defaults("v1").items()}, **given}


def test_meta_rules_by_hand():
    q = torch.empty(2, 3, 4 * 16, dtype=torch.float16)
    v = torch.empty(2, 5, 2 * 8, dtype=torch.float16)  # BSH with N_kv = 2, value_d 8
    m = infer_output(q, v, _options(num_heads=4, num_key_value_heads=2, input_layout="BSH_BNSD"))
    assert (m.out_shape, m.out_dtype, m.lse_shape) == ((2, 4, 3, 8), torch.float16, (0,))
    m = infer_output(q, v, _options(num_heads=4, num_key_value_heads=2, quant_scale2=torch.ones(1),
                                    softmax_lse_flag=True))
    assert (m.out_shape, m.out_dtype, m.lse_shape, m.lse_dtype) == ((2, 3, 32), torch.int8, (2, 4, 3, 1),
                                                                    torch.float32)
    q8 = torch.empty(2, 4, 3, 16, dtype=torch.int8)
    assert infer_output(q8, torch.empty(2, 4, 5, 16, dtype=torch.int8),
                        _options(num_heads=4, input_layout="BNSD")).out_dtype == torch.float16
    assert infer_output(q8, torch.empty(2, 4, 5, 16, dtype=torch.int8),
                        _options(num_heads=4, input_layout="BNSD",
                                 query_rope=torch.empty(2, 4, 3, 64, dtype=torch.bfloat16))).out_dtype == torch.bfloat16
    packed_int4 = torch.empty(2, 4, 5, 2, dtype=torch.int32)  # 2 int32 = 16 int4 values
    q4 = torch.empty(2, 3, 4, 16, dtype=torch.float16)
    assert infer_output(q4, packed_int4, _options(num_heads=4, input_layout="BSND")).out_shape == (2, 3, 4, 16)
    nz = torch.empty(6, 2, 1, 4, 16, dtype=torch.float16)  # paged NZ: D = 1 * 16
    m = infer_output(torch.empty(2, 1, 2 * 16, dtype=torch.float16), nz,
                     _options(num_heads=2, block_table=torch.zeros(2, 3, dtype=torch.int32), block_size=4,
                              input_layout="BSH", softmax_lse_flag=True))
    assert (m.out_shape, m.lse_shape) == ((2, 1, 32), (2, 2, 1, 1))
    m = infer_output(torch.empty(7, 2, 8), torch.empty(9, 2, 8), _options(num_heads=2, input_layout="TND_NTD",
                                                                         softmax_lse_flag=True))
    assert (m.out_shape, m.lse_shape) == ((2, 7, 8), (7, 2, 1))


def test_matches_sdpa():
    q, k, v = _t(2, 4, 6, 16), _t(2, 4, 9, 16), _t(2, 4, 9, 16)
    out, _ = lookalike.op("torchair.v1")(q, k, v, num_heads=4, input_layout="BNSD", scale=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _decode_call(form="v1"):
    q, k, v = _t(2, 4, 1, 16), _t(2, 4, 12, 16), _t(2, 4, 12, 16)
    names = ("num_heads", "actual_seq_lengths_kv") if form == "v1" else ("num_query_heads", "actual_seq_kvlen")
    return parse_call(form, q, k, v, {names[0]: 4, "input_layout": "BNSD", names[1]: [5, 7]})


@pytest.mark.parametrize("lengths", ["tensor", "list"])
def test_model_compiles_as_one_node(lengths):
    gm = captured_graph(_decode_call("v2"), lengths)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    assert [n.target for n in calls] == [lookalike.op(f"{'torchair' if lengths == 'tensor' else 'torch_npu'}.v2")]


def test_list_lengths_recompile_tensor_lengths_do_not():
    counts = recompile_counts(_decode_call(), [[3, 4], [5, 6], [7, 8]])
    assert counts == {"list": 3, "tensor": 1}
