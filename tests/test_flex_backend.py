"""flex as a registered backend: run, compare (the default peer off an NPU), profile."""

from __future__ import annotations

import torch

import fia_kit
from fia_kit import flex
from fia_kit.backends import backend_names, compare, default_peers, run
from fia_kit.environment import detect
from fia_kit.profiling import variants


def _call():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, s, 16, generator=gen).to(torch.float16) for s in (5, 7, 7))
    return fia_kit.plan("v1", q, k, v, num_heads=2, input_layout="BNSD", scale=0.25, softmax_lse_flag=True,
                        actual_seq_lengths=[5, 3], actual_seq_lengths_kv=[7, 4])


def test_flex_is_registered_and_usable_here():
    assert "flex" in backend_names()
    usable, reason = detect().backends()["flex"]
    assert usable and "flex_attention" in reason


def test_run_on_flex_gives_the_flex_outputs():
    p = _call()
    result = run(p, "flex", repeat=1)
    out, lse = flex.run_plan(p)
    assert result.backend == "flex"
    assert torch.equal(result.attention_out, out) and torch.equal(result.softmax_lse, lse)


def test_compare_defaults_to_flex_without_an_npu():
    if detect().backends()["npu"][0]:
        assert default_peers() == ["npu", "npu-graph"]
        return
    assert default_peers() == ["flex"]
    table = compare(_call())
    assert [r.backend for r in table.rows] == ["flex"] and table.passed


def test_profile_variants_include_flex():
    runners = variants(_call(), ["reference", "flex"])
    out_ref, _ = runners["reference"][0]()
    out_flex, _ = runners["flex"][0]()
    torch.testing.assert_close(out_flex.double(), out_ref.double(), atol=1e-3, rtol=1e-3)


def test_the_backend_keeps_the_flex_mode_it_was_prepared_in(monkeypatch):
    seen = []
    monkeypatch.setattr("fia_kit.backends.flex.run_plan", lambda plan, mode: seen.append(mode) or (None, None))
    with flex.flex_mode("eager"):
        fia_kit.backends.prepare(_call(), "flex").fn()
    assert seen == ["eager"]


def test_auto_mode_keeps_small_cpu_calls_eager(monkeypatch):
    """Compiling costs ~10 s a shape on CPU: "auto" runs small calls (the explorer's) eager."""
    def no_compile(device_type):
        raise AssertionError("auto mode compiled a small CPU call")
    monkeypatch.setattr(flex, "_compiled", no_compile)
    with flex.flex_mode("auto"):
        out, _ = flex.run_plan(_call())
    assert out.shape == (2, 2, 5, 16)
