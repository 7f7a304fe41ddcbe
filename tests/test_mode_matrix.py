"""fia_kit.graph_modes (fia_kit/mode_matrix.py): the graph-mode matrix run through the stand-in torch_npu / torchair (tests/fake_npu) and the
compiled look-alike ops; recompiles counted by dynamo, length copies per step, unavailable modes say why."""

from __future__ import annotations

import types

import fake_npu
import pytest
import torch
from fake_npu import torch_npu as fake_torch_npu
from fake_npu import torchair as fake_torchair

import fia_kit
from fia_kit.backends import lookalike
from fia_kit.call import parse_call
from fia_kit.environment import detect
from fia_kit.mode_matrix import CPU_MODES, NPU_MODES, graph_modes

STEPS = [[24, 9], [25, 10], [26, 11]]


def decode_call(form: str = "v1"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k = torch.randn(2, 2, 32, 16, generator=g)
    if form == "v1":
        keywords = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD", actual_seq_lengths_kv=[24, 9])
    else:
        keywords = dict(num_query_heads=4, num_key_value_heads=2, input_layout="BNSD", actual_seq_kvlen=[24, 9])
    return parse_call(form, q, k, k.clone(), keywords)


@pytest.mark.parametrize("form", ["v1", "v2"])
def test_modes_with_stand_ins(form):
    torch._dynamo.reset()
    fake_npu.CALLS.clear()
    fake_torchair.CONFIGS.clear()
    table = graph_modes(fia_kit.plan(decode_call(form)), STEPS, torch_npu=fake_torch_npu, torchair=fake_torchair,
                        device="cpu")
    ran = {r.mode: r for r in table.rows if r.available}
    assert set(ran) == {"eager", "ge-static", "ge-dynamic", "tiling-sink", *CPU_MODES}
    # SymInt[] host lists: no compile in eager, a new graph per new value when compiled
    assert ran["eager"].compiles == 0 and ran["lookalike-list"].compiles == len(STEPS)
    # int64 tensor lengths are graph inputs: one compile serves every step
    assert all(ran[m].compiles == 1 for m in ("ge-static", "ge-dynamic", "tiling-sink", "lookalike-tensor"))
    assert {m: ran[m].length_copies for m in ran} == {"eager": 0, "ge-static": 1, "ge-dynamic": 1, "tiling-sink": 1,
                                                      "lookalike-list": 0, "lookalike-tensor": 1}
    assert all(r.steps == 3 and 0 < r.host_ms <= r.step_ms for r in ran.values())
    tiling = [c.experimental_config.tiling_schedule_optimize for c in fake_torchair.CONFIGS]
    assert tiling == [False, False, True]  # ge-static, ge-dynamic, tiling-sink
    assert not any(c.problems for c in fake_npu.CALLS)
    kinds = {c.schema for c in fake_npu.CALLS}
    assert kinds == {f"torch_npu.{form}", f"torchair.{form}"}
    aclgraph = table.row("aclgraph")
    assert not aclgraph.available and "NPUGraph" in aclgraph.reason
    text = table.table()
    assert "length copies/step" in text and "unavailable: this torch_npu has no" in text
    assert "<table>" in table._repr_html_()


def test_aclgraph_with_a_torch_npu_that_has_npugraph():
    """A stand-in torch_npu whose op is the torch_npu-schema look-alike (a real custom op) and which has
    ``npu.NPUGraph``: aclgraph compiles through TorchAir's npugraph_ex mode, and its SymInt[] lengths recompile."""
    torch._dynamo.reset()
    fake_torchair.CONFIGS.clear()
    npu = types.SimpleNamespace(npu_fused_infer_attention_score=lookalike.op("torch_npu.v1"),
                                npu=types.SimpleNamespace(NPUGraph=object), __version__="stand-in")
    row = graph_modes(decode_call(), STEPS, modes=["aclgraph"], torch_npu=npu, torchair=fake_torchair,
                      device="cpu").row("aclgraph")
    assert row.available and row.compiles == len(STEPS) and row.length_copies == 0
    assert [c.mode for c in fake_torchair.CONFIGS] == ["npugraph_ex"]


def test_without_an_npu_each_npu_mode_says_why():
    if detect().backends()["npu"][0]:
        pytest.skip("an NPU is usable here")
    table = graph_modes(decode_call(), STEPS[:2], modes=[*NPU_MODES, "lookalike-tensor"])
    reason = detect().backends()["npu"][1]
    assert [(r.mode, r.available, r.reason) for r in table.rows[:-1]] == [(m, False, reason) for m in NPU_MODES]
    assert table.row("lookalike-tensor").available and table.row("lookalike-tensor").compiles == 1


def test_bad_steps_and_modes_are_rejected_before_compiling():
    with pytest.raises(fia_kit.FIAArgumentError):
        graph_modes(decode_call(), [[24, 9], [99, 9]], modes=["lookalike-list"])  # 99 > the key's 32 tokens
    with pytest.raises(ValueError, match="unknown mode"):
        graph_modes(decode_call(), STEPS, modes=["npugraph"])
    with pytest.raises(ValueError, match="at least one step"):
        graph_modes(decode_call(), [])
