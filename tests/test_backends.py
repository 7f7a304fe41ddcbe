"""fia_kit.run / fia_kit.compare / the reproducer, off the box (reference, compiled) and with stand-in modules."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import runpy
import subprocess
import sys
import types

import pytest
import torch

from fia_kit.backends import Comparison, compare, founding_example, run
from fia_kit.call import parse_call
from fia_kit.cli import main
from fia_kit.environment import detect
from fia_kit.errors import FIAArgumentError
from fia_kit.reference import npu_fused_infer_attention_score
from fia_kit.repro import to_script

NO_NPU = not detect().backends()["npu"][0]


def _tensors(dtype=torch.float32, s_q=5):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(2, 2, s, 16, generator=g).to(dtype) for s in (s_q, 7, 7))


def _call(dtype=torch.float32, **extra):
    return parse_call("v1", *_tensors(dtype), {"num_heads": 2, "input_layout": "BNSD", "scale": 0.25,
                                               "actual_seq_lengths": [3, 5], "softmax_lse_flag": True, **extra})


def _sdpa_rows(call, batch, rows):
    """Independent reference: torch SDPA on batch ``batch``'s first ``rows`` query rows."""
    q, k, v = (t[batch:batch + 1, :, :rows].double() if t is call.query else t[batch:batch + 1].double()
               for t in (call.query, call.key, call.value))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25)[0]


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_run_matches_sdpa_and_zeroes_padding(backend):
    call = _call()
    result = run(call, backend, repeat=2)
    assert result.backend == backend and set(result.timings) == {"first", "median"}
    assert all(t > 0 for t in result.timings.values())
    out = result.attention_out
    torch.testing.assert_close(out[0, :, :3].double(), _sdpa_rows(call, 0, 3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :, :5].double(), _sdpa_rows(call, 1, 5), atol=1e-5, rtol=1e-5)
    assert out[0, :, 3:].abs().max() == 0
    scores = call.query[1].double() @ call.key[1].double().transpose(-1, -2) * 0.25
    torch.testing.assert_close(result.softmax_lse[1, :, :5, 0].double(), torch.logsumexp(scores, -1)[:, :5],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not NO_NPU, reason="checks the fallback without an NPU")
def test_auto_is_reference_without_npu_and_npu_backend_explains():
    assert run(_call(), "auto").backend == "reference"
    with pytest.raises(RuntimeError, match="torch_npu"):
        run(_call(), "npu")


def test_bad_backend_and_bad_call_fail_before_compiling():
    with pytest.raises(FIAArgumentError, match="backend"):
        run(_call(), "gpu")
    with pytest.raises(FIAArgumentError, match="atten_mask"):
        run(_call(sparse_mode=3), "compiled")


def _stand_in(perturb):
    """A torch_npu stand-in returning the reference's outputs passed through ``perturb(out)``."""
    def op(query, key, value, **kwargs):
        out, lse = npu_fused_infer_attention_score(query, key, value, **kwargs)
        return perturb(out.clone()), lse
    op.__name__ = "npu_fused_infer_attention_score"
    return types.SimpleNamespace(npu_fused_infer_attention_score=op)


def _set(index, delta):
    def perturb(out):
        out[index] += delta
        return out
    return perturb


def test_compare_ignores_padding_rows_and_flags_computed_ones():
    call = _call(torch.float16)
    garbage_in_padding = _stand_in(_set((0, slice(None), slice(3, None)), 5.0))  # batch 0 rows 3.. are padding
    table = compare(call, ["npu", "compiled"], torch_npu=garbage_in_padding, device="cpu")
    assert isinstance(table, Comparison) and table.passed
    assert (table.computed_rows, table.total_rows) == (8, 10)
    assert [r.backend for r in table.rows] == ["npu", "compiled"]
    assert table.rows[0].out_abs == 0 and table.rows[0].lse_abs == 0
    off_in_computed = _stand_in(_set((1, 0, 4, 0), 0.05))
    table = compare(call, ["npu"], torch_npu=off_in_computed, device="cpu")
    row = table.rows[0]
    assert not table.passed and not row.within_tolerance and not row.within_golden
    assert row.out_abs == pytest.approx(0.05, rel=0.05) and row.golden_ratio > 10
    # the unit a reader sees: that one error over its own tolerance, fp16 atol = rtol = 1e-3
    ref = npu_fused_infer_attention_score(call.query, call.key, call.value, **call.keywords())[0][1, 0, 4, 0]
    assert row.out_tolerance == pytest.approx(row.out_abs / (1e-3 + 1e-3 * abs(float(ref))), rel=1e-6)
    assert row.out_tolerance > 1 and row.lse_tolerance == 0
    assert "FAIL" in table.table() and "<table>" in table._repr_html_() and "x tolerance" in table.table()


def test_golden_scheme_accepts_an_equally_good_computation():
    """flex, an independent computation as accurate as the reference (float32, rounded to bf16), is within 1.1x of
    the reference's error against the float64 golden."""
    call = _call(torch.bfloat16)
    table = compare(call, ["flex"])
    assert table.rows[0].backend == "flex" and table.rows[0].within_golden
    assert table.rows[0].golden_ratio == pytest.approx(1.0, abs=0.1)


def test_lse_is_compared_only_when_requested():
    table = compare(_call(softmax_lse_flag=False), ["compiled"])
    assert table.rows[0].lse_abs is None and table.passed


def test_reproducer_runs_standalone(tmp_path):
    call = _call(torch.float16, atten_mask=torch.zeros(2, 1, 5, 7, dtype=torch.bool),
                 actual_seq_lengths_kv=torch.tensor([6, 7]))
    script = to_script(call, tmp_path / "fia_repro.py")
    assert (tmp_path / "fia_repro.pt").exists()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    if NO_NPU:
        assert "running fia_kit's reference instead" in lines[0]
    assert "eager attention_out (2, 2, 5, 16) torch.float16 softmax_lse (2, 2, 5, 1)" in lines
    assert "graph attention_out (2, 2, 5, 16) torch.float16 softmax_lse (2, 2, 5, 1)" in lines
    assert lines[-1] == "max |eager - graph| attention_out: 0"
    assert "actual_seq_lengths_kv': [6, 7]" in script.read_text()


def test_founding_example_matches_sdpa_over_prefix_then_keys():
    call = founding_example("v1", torch.float32)
    out = run(call, "compiled").attention_out
    keys = torch.cat([call["key_shared_prefix"][:, :, :50], call.key[:, :, :512]], dim=2)
    values = torch.cat([call["value_shared_prefix"][:, :, :50], call.value[:, :, :512]], dim=2)
    expected = torch.nn.functional.scaled_dot_product_attention(call.query[:, :, :50], keys, values,
                                                                scale=128 ** -0.5)
    torch.testing.assert_close(out[:, :, :50], expected, atol=1e-5, rtol=1e-5)
    assert out[:, :, 50:].abs().max() == 0


def test_cli_check_prints_the_comparison(capsys):
    """Off an NPU, ``fia-kit check`` compares the reference with flex, an independent computation."""
    assert main(["check", "--form", "v2"]) == 0
    text = capsys.readouterr().out
    assert "50/164 query rows compared" in text and "FAIL" not in text
    if NO_NPU:
        assert text.splitlines()[-1].startswith("flex ")


def _run_script(script, monkeypatch, *args):
    """Run a generated script in this process (as ``python script args``), returning its stdout lines."""
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    return out.getvalue().splitlines()


def test_reproducer_calls_torch_npu_and_torchair_when_they_import(tmp_path, monkeypatch):
    """The script's real path, with tests/fake_npu's stand-ins installed as torch_npu and torchair."""
    import fake_npu.torch_npu
    import fake_npu.torchair
    import fake_npu.torchair.configs.compiler_config

    for name, module in (("torch_npu", fake_npu.torch_npu), ("torchair", fake_npu.torchair),
                         ("torchair.configs", fake_npu.torchair.configs),
                         ("torchair.configs.compiler_config", fake_npu.torchair.configs.compiler_config)):
        monkeypatch.setitem(sys.modules, name, module)
    calls = len(fake_npu.CALLS)
    lines = _run_script(to_script(_call(torch.float16), tmp_path / "fia_repro.py"), monkeypatch, "--device", "cpu")
    assert not any("reference instead" in line for line in lines)
    assert lines[-1] == "max |eager - graph| attention_out: 0"
    assert [c.schema for c in fake_npu.CALLS[calls:]] == ["torch_npu.v1", "torchair.v1"]


@dataclasses.dataclass(frozen=True)
class SeededCase:
    """A stand-in for the builders' case: rebuilt from its repr, built per form."""

    seed: int
    kv_len: int

    def build(self, form):
        g = torch.Generator().manual_seed(self.seed)
        q, k, v = (torch.randn(1, 2, s, 8, generator=g) for s in (1, 6, 6))
        kwargs = {"num_heads" if form == "v1" else "num_query_heads": 2, "input_layout": "BNSD",
                  "actual_seq_lengths_kv" if form == "v1" else "actual_seq_kvlen": [self.kv_len]}
        return types.SimpleNamespace(query=q, key=k, value=v, kwargs=kwargs,
                                     to_fia_call=lambda: parse_call(form, q, k, v, kwargs))


def test_cases_run_and_reproduce_from_their_repr(tmp_path, monkeypatch):
    case = SeededCase(seed=3, kv_len=4)
    result = run(case, "compiled", form="v2")
    call = case.build("v2").to_fia_call()
    expected = torch.nn.functional.scaled_dot_product_attention(call.query, call.key[:, :, :4], call.value[:, :, :4],
                                                                scale=1.0)  # the op's default scale is 1
    torch.testing.assert_close(result.attention_out, expected, atol=1e-5, rtol=1e-5)
    script = to_script(case, tmp_path / "case_repro.py", form="v2")
    assert "case = SeededCase(seed=3, kv_len=4)" in script.read_text()
    assert not (tmp_path / "case_repro.pt").exists()
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # the fallback path, even on an Ascend box
    lines = _run_script(script, monkeypatch)
    assert "running fia_kit's reference instead" in lines[0]
    assert "eager attention_out (1, 2, 1, 8) torch.float32 softmax_lse (0,)" in lines
