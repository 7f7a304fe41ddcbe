"""One path for data: a call is planned (parsed and validated) once, and every backend takes that plan.

Independent checks: validations are counted by spying on ``build_plan`` wherever the kit bound it; outputs are
checked against float64 SDPA written here, not the kit's code.
"""

from __future__ import annotations

import sys

import pytest
import torch

import fia_kit
from fia_kit import planning
from fia_kit.backends import Runner, as_call, backend_names, registry
from fia_kit.call import parse_call
from fia_kit.case import Case
from fia_kit.environment import detect
from fia_kit.errors import FIAArgumentError
from fia_kit.reference import op_outputs

V2_ONLY = Case(q_lens=(5, 3), kv_lens=(9, 6), heads=4, kv_heads=2, head_dim=64, sinks=True, dtype=torch.float32)


@pytest.fixture
def validations(monkeypatch) -> list[int]:
    """Counts ``build_plan`` calls, patched in every fia_kit module that bound the name."""
    original = planning.build_plan
    count: list[int] = []

    def spy(call):
        count.append(1)
        return original(call)
    for name, module in list(sys.modules.items()):
        if name.startswith("fia_kit") and getattr(module, "build_plan", None) is original:
            monkeypatch.setattr(module, "build_plan", spy)
    return count


@pytest.fixture
def spy_backend(monkeypatch) -> list[planning.Plan]:
    """A registered backend "spy" that records the plan it gets and computes with the reference kernel."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    seen: list[planning.Plan] = []

    def prepare(plan, options):
        seen.append(plan)
        return Runner(lambda: op_outputs(plan), plan.query.device)
    fia_kit.backends.register_backend("spy", prepare, summary="records its plan")
    return seen


def _call(**extra):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, s, 16, generator=g) for s in (5, 7, 7))
    return parse_call("v1", q, k, v, {"num_heads": 2, "input_layout": "BNSD", "scale": 0.25,
                                      "actual_seq_lengths": [3, 5], "softmax_lse_flag": True, **extra})


def test_compare_validates_once(validations, spy_backend):
    table = fia_kit.compare(_call(), ["reference", "spy"], repeat=2)
    assert len(validations) == 1 and table.passed
    assert len(spy_backend) == 1 and spy_backend[0].call is not None


def test_compare_of_a_case_validates_once(validations):
    fia_kit.compare(Case(), ["reference"])
    assert len(validations) == 1
    table = fia_kit.compare(Case())  # the default peers (off an NPU: the independent backend)
    assert len(validations) == 2 and table.rows and table.passed


def test_the_look_alike_op_validates_its_own_inputs_as_an_op_does(validations):
    """compiled runs a real custom op: the kit plans once, and the op checks its arguments on each of its calls."""
    fia_kit.compare(_call(), ["compiled"], repeat=1)  # the op runs twice: first call + one timed repeat
    assert len(validations) == 1 + 2


def test_run_of_a_plan_does_not_validate_again(validations, spy_backend):
    plan = fia_kit.plan(_call())
    assert len(validations) == 1
    fia_kit.run(plan, "reference", repeat=3)
    fia_kit.run(plan, "spy")
    assert len(validations) == 1 and spy_backend == [plan]


def test_registered_backend_is_listed_everywhere(spy_backend):
    assert "spy" in backend_names() and backend_names()[:4] == ("reference", "compiled", "npu", "npu-graph")
    assert detect().backends()["spy"] == (True, "always available")
    with pytest.raises(FIAArgumentError, match="spy"):
        fia_kit.run(_call(), "no-such-backend")


def _sdpa_packed(case: Case, built) -> torch.Tensor:
    """float64 attention with sinks over a TND call, written from spec 13 here: softmax over [scores, sink]."""
    q, k, v = (t.double() for t in (built.query, built.key, built.value))
    sink = built.kwargs["learnable_sink"].double()
    group = case.heads // case.kv_heads
    outs, q0, k0 = [], 0, 0
    for lq, lk in zip(case.q_lens, case.kv_lens, strict=True):
        qb = q[q0:q0 + lq].transpose(0, 1)                                  # (N, Lq, D)
        kb = k[k0:k0 + lk].transpose(0, 1).repeat_interleave(group, 0)      # (N, Lk, D)
        vb = v[k0:k0 + lk].transpose(0, 1).repeat_interleave(group, 0)
        s = qb @ kb.transpose(-1, -2) * case.softmax_scale
        full = torch.cat([s, sink.view(-1, 1, 1).expand(-1, lq, 1)], dim=-1).softmax(-1)
        outs.append((full[..., :-1] @ vb).transpose(0, 1))
        q0, k0 = q0 + lq, k0 + lk
    return torch.cat(outs)


def test_v2_only_case_goes_through_plan_run_and_compare():
    assert V2_ONLY.natural_form == "v2"
    assert fia_kit.plan(V2_ONLY).form == "v2" and fia_kit.plan(V2_ONLY).learnable_sink is not None
    result = fia_kit.run(V2_ONLY, "reference")
    expected = _sdpa_packed(V2_ONLY, V2_ONLY.build())
    torch.testing.assert_close(result.attention_out.double(), expected, atol=1e-5, rtol=1e-5)
    assert fia_kit.compare(V2_ONLY, ["reference", "compiled"]).passed


def test_as_call_builds_the_form_asked_for():
    assert as_call(Case(), "v2").form == "v2" and as_call(Case()).form == "v1"
    assert "num_query_heads" in as_call(Case(), "v2").keywords()
    assert fia_kit.plan(Case(), form="torchair-v2").form == "v2"
    with pytest.raises(FIAArgumentError, match="learnable_sink is v2-only"):
        fia_kit.plan(V2_ONLY, form="v1")


@pytest.mark.parametrize("make", [
    lambda: Case(form="v3"),
    lambda: Case().build("v3"),
    lambda: fia_kit.plan("v3", *(torch.zeros(1, 1, 1, 16),) * 3, input_layout="BNSD"),
    lambda: fia_kit.plan(Case(), form="v3"),
    lambda: parse_call("torch_npu.v1", *(torch.zeros(1, 1, 1, 16),) * 3, {}),
])
def test_a_bad_form_is_an_argument_error_naming_it(make):
    with pytest.raises(FIAArgumentError, match=r"form.*v3|form.*torch_npu\.v1") as info:
        make()
    assert info.value.parameter == "form"


@pytest.mark.parametrize("form", ["torchair-v1", "torchair-v2"])
def test_torchair_form_calls_go_through_run_and_compare(form):
    built = Case(q_lens=(4, 2), kv_lens=(6, 9), layout="TND", sparse_mode=3).build(form)
    assert isinstance(built.kwargs[("actual_seq_lengths" if form.endswith("v1") else "actual_seq_qlen")],
                      torch.Tensor)
    call = parse_call(form, built.query, built.key, built.value, built.kwargs)
    plain = Case(q_lens=(4, 2), kv_lens=(6, 9), layout="TND", sparse_mode=3).build(form[-2:])
    expected = fia_kit.run(plain, "reference").attention_out
    torch.testing.assert_close(fia_kit.run(call, "reference").attention_out, expected, atol=0, rtol=0)
    assert fia_kit.compare(call, ["reference", "compiled"]).passed


def test_v2_only_case_and_torchair_call_go_through_the_explorer(validations):
    from fia_kit import explorer

    outcome = explorer.compute(V2_ONLY, "compiled")
    assert outcome.error is None and outcome.call.form == "v2" and outcome.problem.learnable_sink is not None
    built = Case(q_lens=(4, 2), kv_lens=(6, 9), layout="TND", sparse_mode=3).build("torchair-v2")
    call = parse_call("torchair-v2", built.query, built.key, built.value, built.kwargs)
    case = Case.from_call(call)
    validations.clear()
    outcome = explorer.compute(case, "reference")
    assert outcome.error is None and len(validations) == 1
    torch.testing.assert_close(outcome.result.attention_out, fia_kit.run(call, "reference").attention_out)
