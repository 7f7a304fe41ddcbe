"""The binding layer against stand-in torch_npu / torchair modules (tests/fake_npu) that check every keyword."""

from __future__ import annotations

import sys
import types

import fake_npu
import pytest
import torch
from fake_npu import torch_npu as fake_torch_npu
from fake_npu import torchair as fake_torchair

from fia_kit.backends import GraphOptions, run
from fia_kit.backends.bindings import bind, call_keywords, convert_call, schema_violations, supported_keywords
from fia_kit.call import parse_call
from fia_kit.environment import detect
from fia_kit.errors import FIAArgumentError
from fia_kit.signatures import SCHEMAS

requires_npu = pytest.mark.skipif(not detect().backends()["npu"][0], reason="needs a usable NPU (torch_npu)")


def _tensors(dtype=torch.float16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 3, 16, generator=g, dtype=dtype), torch.randn(2, 2, 9, 16, generator=g, dtype=dtype),
            torch.randn(2, 2, 9, 16, generator=g, dtype=dtype))


def _v1_call(**extra):
    return parse_call("v1", *_tensors(), {"num_heads": 4, "num_key_value_heads": 2, "input_layout": "BNSD",
                                          "actual_seq_lengths": torch.tensor([2, 3]),
                                          "actual_seq_lengths_kv": [9, 6], "softmax_lse_flag": True,
                                          "scale": 0.25, **extra})


def test_kit_schemas_are_the_real_ones():
    assert SCHEMAS == {key: fake_npu.SCHEMAS[key] for key in SCHEMAS}


@pytest.mark.parametrize("form", ["v1", "v2"])
def test_eager_receives_schema_keywords_with_list_lengths(form):
    call = _v1_call()
    if form == "v2":
        call = convert_call(call, "torch_npu.v2")
    result = run(call, "npu", torch_npu=fake_torch_npu, device="cpu")
    received = fake_npu.CALLS[-1]
    assert received.schema == f"torch_npu.{form}" and received.problems == ()
    q_len, kv_len = ("actual_seq_lengths", "actual_seq_lengths_kv") if form == "v1" else ("actual_seq_qlen",
                                                                                          "actual_seq_kvlen")
    assert received.keywords[q_len] == [2, 3] and received.keywords[kv_len] == [9, 6]
    assert set(received.keywords) == {q_len, kv_len, "num_key_value_heads", "input_layout",
                                      "num_heads" if form == "v1" else "num_query_heads",
                                      "scale" if form == "v1" else "softmax_scale",
                                      "softmax_lse_flag" if form == "v1" else "return_softmax_lse"}
    assert result.backend == "npu" and result.attention_out.shape == (2, 4, 3, 16)
    assert result.softmax_lse.shape == (2, 4, 3, 1)


@pytest.mark.parametrize("form", ["v1", "v2"])
def test_graph_receives_int64_tensor_lengths_and_config(form):
    call = _v1_call() if form == "v1" else convert_call(_v1_call(), "torch_npu.v2")
    options = GraphOptions(tiling_schedule_optimize=True, graph_dump="pbtxt")
    result = run(call, "npu-graph", torch_npu=fake_torch_npu, torchair=fake_torchair, device="cpu",
                 graph_options=options)
    received = fake_npu.CALLS[-1]
    assert received.schema == f"torchair.{form}" and received.problems == ()
    lengths = [v for k, v in received.keywords.items() if k.startswith("actual_seq")]
    assert len(lengths) == 2 and all(t.dtype == torch.int64 for t in lengths)
    config = fake_torchair.CONFIGS[-1]
    assert (config.mode, config.experimental_config.tiling_schedule_optimize,
            config.debug.graph_dump.type) == ("max-autotune", True, "pbtxt")
    ops = [n for n in fake_torchair.GRAPHS[-1].graph.nodes if n.op == "call_function"
           and isinstance(n.target, torch._ops.OpOverload)]
    assert len(ops) == 1
    eager = run(call, "npu", torch_npu=fake_torch_npu, device="cpu")
    torch.testing.assert_close(result.attention_out, eager.attention_out, atol=0, rtol=0)


def test_stand_in_rejects_wrong_types():
    """The stand-in is strict: a float or 2-D tensor where torch_npu wants SymInt[] (torch's parser takes lists,
    tuples, numpy integer arrays and 1-D integer tensors, spec 25.2) and a list where TorchAir wants a Tensor."""
    q, k, v = _tensors()
    with pytest.raises(TypeError, match="actual_seq_lengths"):
        fake_torch_npu.npu_fused_infer_attention_score(q, k, v, num_heads=4, actual_seq_lengths=torch.tensor([1.0]))
    assert fake_npu.problems("torch_npu.v1", {"actual_seq_lengths": torch.tensor([[1]])})
    assert not fake_npu.problems("torch_npu.v1", {"actual_seq_lengths": torch.tensor([1], dtype=torch.int32)})
    assert fake_npu.problems("torchair.v1", {"actual_seq_lengths": [1]})
    assert fake_npu.problems("torchair.v1", {"actual_seq_lengths": torch.tensor([1], dtype=torch.int32)})
    assert fake_npu.problems("torch_npu.v2", {"num_heads": 4})


@pytest.mark.parametrize("keywords", [
    {"actual_seq_lengths": [1, 2], "num_heads": 2, "scale": 1, "softmax_lse_flag": True},
    {"actual_seq_lengths": torch.tensor([1, 2])},
    {"actual_seq_lengths": torch.tensor([1.0, 2.0])},
    {"actual_seq_lengths": (1, 2)},
    {"num_heads": 2.0},
    {"softmax_lse_flag": 1},
    {"num_query_heads": 2},
    {"atten_mask": [[0]]},
])
@pytest.mark.parametrize("target", ["torch_npu.v1", "torchair.v1"])
def test_kit_schema_check_agrees_with_stand_in(keywords, target):
    assert bool(schema_violations(target, keywords)) == bool(fake_npu.problems(target, keywords))


def test_name_mapping_round_trips():
    call = _v1_call(key_shared_prefix=None)
    for path in (["torch_npu.v2", "torch_npu.v1"], ["torchair.v2", "torchair.v1", "torch_npu.v1"],
                 ["torchair.v1", "torch_npu.v2", "torchair.v2", "torch_npu.v1"]):
        converted = call
        for target in path:
            converted = convert_call(converted, target)
        assert converted.form == "v1" and converted.given == call.given - {"key_shared_prefix"}  # v2 lacks it
        for name in call.options:
            a, b = converted.options[name], call.options[name]
            assert (a.tolist() if isinstance(a, torch.Tensor) else a) == (b.tolist() if isinstance(b, torch.Tensor)
                                                                         else b), name
    air = call_keywords(call, "torchair.v2")
    assert air["actual_seq_qlen"].dtype == torch.int64 and air["actual_seq_kvlen"].tolist() == [9, 6]
    assert air["num_query_heads"] == 4 and air["softmax_scale"] == 0.25


def test_v1_only_keyword_cannot_become_v2():
    q, k, v = _tensors()
    call = parse_call("v1", q, k, v, {"num_heads": 4, "num_key_value_heads": 2, "input_layout": "BNSD",
                                      "key_shared_prefix": k, "value_shared_prefix": v,
                                      "actual_shared_prefix_len": [3]})
    with pytest.raises(FIAArgumentError, match="actual_shared_prefix_len|key_shared_prefix"):
        call_keywords(call, "torchair.v2")


def test_supported_keywords_by_release():
    current = supported_keywords(fake_torch_npu.npu_fused_infer_attention_score_v2)
    old = supported_keywords(fake_torch_npu.release("7.2.0").npu_fused_infer_attention_score_v2)
    assert current - old == {"quant_scale_p", "out_dtype"}
    real_v2 = {a.name for a in torch._C.parse_schema("npu::" + fake_npu.TORCH_NPU_V2).arguments if a.kwarg_only}
    assert current == real_v2
    assert supported_keywords(torch.ops.fia_kit.air_npu_fused_infer_attention_score_v2) == real_v2
    assert supported_keywords(torch.ops.fia_kit.npu_fused_infer_attention_score.default) >= {"actual_seq_lengths"}


def test_supported_keywords_from_torch_ops_npu_for_builtin_bindings():
    """Real torch_npu bindings have no Python signature: their keywords come from torch.ops.npu's schema."""
    if "torch_npu" in sys.modules:
        pytest.skip("the real torch.ops.npu is loaded: defining a stand-in there would clash")
    class Builtin:
        __name__ = "npu_fused_infer_attention_score_v2"

        def __call__(self, *args, **kwargs):
            raise AssertionError("not called")

    old_schema = fake_npu.TORCH_NPU_V2.replace("Tensor? quant_scale_p=None, ", "").replace(
        ", int? out_dtype=None", "")
    with torch.library._scoped_library("npu", "FRAGMENT") as lib:
        lib.define(old_schema)
        assert "out_dtype" not in supported_keywords(Builtin())
        assert "learnable_sink" in supported_keywords(Builtin())


def test_old_release_drops_default_keywords_and_rejects_others():
    old = fake_torch_npu.release("7.2.0").npu_fused_infer_attention_score_v2
    kept = bind(old, {"num_query_heads": 4, "out_dtype": None}, "torch_npu.v2")
    assert kept.keywords == {"num_query_heads": 4} and kept.dropped == ("out_dtype",)
    with pytest.raises(FIAArgumentError, match="out_dtype"):
        bind(old, {"out_dtype": 5}, "torch_npu.v2")


@pytest.mark.npu
@requires_npu
@pytest.mark.parametrize("backend", ["npu", "npu-graph"])
def test_real_npu_matches_reference(backend):
    from fia_kit.backends import compare

    table = compare(_v1_call(), [backend])
    assert table.passed, table.table()


def test_release_without_v2_is_explained():
    old = types.SimpleNamespace(__version__="2.1.0", npu_fused_infer_attention_score=None)
    with pytest.raises(FIAArgumentError, match="v2 first ships"):
        run(convert_call(_v1_call(), "torch_npu.v2"), "npu", torch_npu=old, device="cpu")
