"""fia_kit.roofline.profiler_flops against torch_npu 2.13.0's own profiler formula, executed from the real wheel.

The formula's source (torch_npu/profiler/_flops_formulas.py) is read from the wheel and executed with its one
package import (the registry decorator) stubbed; nothing else of torch_npu is loaded. On a grid of calls (layouts,
sparse modes, S_q above / below S_kv, GQA, TND with zero-length batches) the kit must give the wheel's number, or
None exactly where the wheel raises.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from npu_wheel import wheel_text

import fia_kit
from fia_kit.call import parse_call
from fia_kit.masks import compressed_causal_mask
from fia_kit.roofline import call_cost, profiler_flops

FORMULAS = "torch_npu/profiler/_flops_formulas.py"
REGISTRY_IMPORT = "from ._flops_registry import register_npu_flop"


@pytest.fixture(scope="module")
def wheel_formula():
    source = wheel_text(FORMULAS)
    assert REGISTRY_IMPORT in source, "the wheel's formula module changed its imports: update the stub"
    namespace = {"register_npu_flop": lambda *a, **k: (lambda fn: fn), "__name__": "wheel_flops"}
    exec(compile(source.replace(REGISTRY_IMPORT, ""), FORMULAS, "exec"), namespace)  # noqa: S102
    return namespace["npu_fused_infer_attention_score_flops"]


def wheel_value(formula, call):
    """The wheel's FLOPs for the call (its keywords as torch_npu receives them), or None where it raises."""
    o = call.options
    try:
        return formula(call.query, call.key, call.value, input_layout=o["input_layout"], num_heads=o["num_heads"],
                       num_key_value_heads=o["num_key_value_heads"], actual_seq_lengths=o["actual_seq_lengths"],
                       actual_seq_lengths_kv=o["actual_seq_lengths_kv"], sparse_mode=o["sparse_mode"])
    except ValueError:
        return None


def shaped(layout, batch, heads, seq, dim):
    g = torch.Generator().manual_seed(batch * 100 + seq)
    shape = {"BNSD": (batch, heads, seq, dim), "BSND": (batch, seq, heads, dim), "BSH": (batch, seq, heads * dim),
             "SBH": (seq, batch, heads * dim)}[layout]
    return torch.randn(*shape, generator=g, dtype=torch.float16)


GRID = list(itertools.product(["BNSD", "BSND", "BSH"], [0, 2, 3], [(1, 16), (16, 16), (24, 8), (5, 40)],
                              [(4, 4), (8, 2)]))


@pytest.mark.parametrize("layout, mode, seqs, heads", GRID)
def test_profiler_flops_match_the_wheels_formula(wheel_formula, layout, mode, seqs, heads):
    (s_q, s_kv), (n_q, n_kv) = seqs, heads
    q, k, v = shaped(layout, 2, n_q, s_q, 16), shaped(layout, 2, n_kv, s_kv, 16), shaped(layout, 2, n_kv, s_kv, 8)
    keywords = dict(num_heads=n_q, num_key_value_heads=n_kv, input_layout=layout, sparse_mode=mode)
    if mode:
        keywords["atten_mask"] = compressed_causal_mask()
    try:  # V D 8 != Q/K D 16 outside TND: an Ascend950 rule (docs/targets.md, rule qk_v_head_dims)
        call = parse_call("v1", q, k, v, keywords)
        with fia_kit.target(product="Ascend950"):
            plan = fia_kit.plan(call)
    except fia_kit.FIAArgumentError:
        pytest.skip("not a valid call (the kit rejects it before any formula applies)")
    expected = wheel_value(wheel_formula, call)
    assert expected is not None and expected > 0
    assert profiler_flops(call) == expected
    assert call_cost(plan).profiler_flops == expected  # a plan is read through its call, not re-parsed


@pytest.mark.parametrize("q_cum, kv_cum", [([4, 9], [6, 15]), ([3, 3, 7], [5, 9, 12]), ([2, 6, 0], [8, 8, 0])])
def test_tnd_profiler_flops_match_the_wheels_formula(wheel_formula, q_cum, kv_cum):
    q = torch.randn(max(q_cum), 4, 16, dtype=torch.float16)
    k = torch.randn(max(kv_cum), 2, 16, dtype=torch.float16)
    call = parse_call("v1", q, k, k.clone(), dict(num_heads=4, num_key_value_heads=2, input_layout="TND",
                                                  actual_seq_lengths=q_cum, actual_seq_lengths_kv=kv_cum))
    assert profiler_flops(call) == wheel_value(wheel_formula, call)


def test_no_formula_where_the_wheel_raises(wheel_formula):
    q, k = shaped("BNSD", 1, 4, 8, 16), shaped("BNSD", 1, 4, 8, 16)
    band = parse_call("v1", q, k, k.clone(), dict(num_heads=4, input_layout="BNSD", sparse_mode=4, pre_tokens=2,
                                                  next_tokens=0, atten_mask=compressed_causal_mask()))
    assert wheel_value(wheel_formula, band) is None and profiler_flops(band) is None
