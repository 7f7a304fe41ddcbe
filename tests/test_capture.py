"""fia_kit.capture / load_capture: every route into the op, exact replay, counts, size caps, atomic writes, bad files.

The stand-in torch_npu and torchair of tests/fake_npu play the real modules (installed in sys.modules); a
test-only torch.library namespace plays ``torch.ops.npu`` with the wheel's ``.out`` / ``_get_max_workspace`` /
``_infer_output`` schemas (written from fake_npu's schema strings, not the kit's).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types

import fake_npu
import pytest
import torch
from fake_npu import torch_npu as fake_torch_npu
from fake_npu import torchair as fake_torchair
from safetensors.torch import save_file

import fia_kit
from fia_kit.backends import lookalike
from fia_kit.capture import CaptureFileError, capture, load_capture, seal
from fia_kit.case import Case
from fia_kit.cli import main as cli_main
from fia_kit.reference import npu_fused_infer_attention_score as early_v1  # imported before any capture
from fia_kit.reference import npu_fused_infer_attention_score_v2 as early_v2
from fia_kit.signatures import keyword_defaults

NAMESPACE = "capture_test_npu"
_V1 = fake_npu.SCHEMAS["torch_npu.v1"]
_lib = torch.library.Library(NAMESPACE, "DEF")
for _key in ("torch_npu.v1", "torch_npu.v1.out", "torch_npu.v1.get_max_workspace", "torch_npu.v1.infer_output"):
    _lib.define(fake_npu.SCHEMAS[_key])  # the wheel's schemas (tests/test_wheel_ground_truth.py checks them)


def _given(kwargs):
    defaults = keyword_defaults("v1")
    return {n: v for n, v in kwargs.items() if n in defaults and not (
        v is None or (not isinstance(v, torch.Tensor) and v == defaults[n]))}


def _op(q, k, v, **kw):
    return tuple(t.contiguous() for t in fia_kit.npu_fused_infer_attention_score(q, k, v, **_given(kw)))


def _op_out(q, k, v, *, workspace=None, attention_out, softmax_lse, **kw):
    out, lse = _op(q, k, v, **kw)
    attention_out.copy_(out)
    softmax_lse.resize_(lse.shape).copy_(lse)
    return attention_out, softmax_lse


_lib.impl("npu_fused_infer_attention_score", _op, "CPU")
_lib.impl("npu_fused_infer_attention_score.out", _op_out, "CPU")
_lib.impl("_npu_fused_infer_attention_score_get_max_workspace", lambda q, k, v, **kw: torch.zeros(64), "CPU")
_lib.impl("_npu_fused_infer_attention_score_infer_output",
          lambda q, v, **kw: (torch.empty_like(q), torch.empty(0)), "CPU")


@pytest.fixture
def npu_modules(monkeypatch):
    """The stand-ins installed as torch_npu and torchair."""
    monkeypatch.setitem(sys.modules, "torch_npu", fake_torch_npu)
    monkeypatch.setitem(sys.modules, "torchair", fake_torchair)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "calls.fiacap"


def _case_args(**changes):
    built = Case(**{"dtype": torch.float32, **changes}).build("v1")  # byte caps below count 4-byte elements
    return built.query, built.key, built.value, dict(built.kwargs)


def test_every_route_is_recorded_once(npu_modules, path):
    q, k, v, kw = _case_args()
    tensor_lengths = {n: torch.tensor(x) if n.startswith("actual") else x for n, x in kw.items()}
    expected = [
        ("fia_kit.reference.npu_fused_infer_attention_score", "v1", "op", False),
        ("torch_npu.npu_fused_infer_attention_score", "v1", "op", False),
        ("tng.ops.npu_fused_infer_attention_score", "v1", "op", True),
        (f"torch.ops.{NAMESPACE}.npu_fused_infer_attention_score.default", "v1", "op", False),
        (f"torch.ops.{NAMESPACE}.npu_fused_infer_attention_score.out", "v1", "out", False),
        (f"torch.ops.{NAMESPACE}._npu_fused_infer_attention_score_get_max_workspace.default", "v1",
         "get_max_workspace", False),
        (f"torch.ops.{NAMESPACE}._npu_fused_infer_attention_score_infer_output.default", "v1", "infer_output", False),
        ("torch.ops.fia_kit.npu_fused_infer_attention_score.default", "v1", "op", False),
        ("torch.ops.fia_kit.air_npu_fused_infer_attention_score.default", "v1", "op", True),
        ("fia_kit.reference.npu_fused_infer_attention_score_v2", "v2", "op", False),
    ]
    ops = getattr(torch.ops, NAMESPACE)
    with capture(path) as recorder:
        early_v1(q, k, v, **kw)
        fake_torch_npu.npu_fused_infer_attention_score(q, k, v, **kw)  # calls the reference: recorded once
        with pytest.raises(NotImplementedError):  # TorchAir's eager kernel refuses: the call is still recorded
            fake_torchair.ops.npu_fused_infer_attention_score(q, k, v, **tensor_lengths)
        ops.npu_fused_infer_attention_score(q, k, v, **kw)
        out = torch.empty(2, 2, 6, 16)
        ops.npu_fused_infer_attention_score.out(q, k, v, **kw, attention_out=out, softmax_lse=torch.empty(0))
        ops._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
        ops._npu_fused_infer_attention_score_infer_output(q, v, input_layout="BNSD", num_heads=2)
        lookalike.op("torch_npu.v1")(q, k, v, **kw)
        lookalike.op("torchair.v1")(q, k, v, **tensor_lengths)
        early_v2(q, k, v, num_query_heads=2, num_key_value_heads=1, input_layout="BNSD", softmax_scale=0.25)
    assert recorder.total == len(expected) == recorder.distinct
    calls = load_capture(path)
    assert [(c.entry, c.form, c.kind, c.graph) for c in calls] == expected
    assert "NotImplementedError" in calls[2].error and calls[0].error is None
    assert calls[4].arguments["attention_out"]["role"] == "output" and calls[4].arguments["attention_out"]["data"] \
        is None
    assert "attention_out" not in calls[4].args()[3] and fia_kit.run(calls[4], "reference").attention_out.shape == \
        out.shape  # .out replays as the op
    assert not calls[6].replayable and fia_kit.lint(calls[6]) == []


def test_patch_sees_a_name_imported_from_torch_npu(npu_modules, path):
    model = types.ModuleType("model")
    model.npu_fused_infer_attention_score = fake_torch_npu.npu_fused_infer_attention_score  # `from torch_npu import`
    q, k, v, kw = _case_args()
    with capture(path, patch=[model]):
        model.npu_fused_infer_attention_score(q, k, v, **kw)
    assert model.npu_fused_infer_attention_score is fake_torch_npu.npu_fused_infer_attention_score  # restored
    assert [c.entry for c in load_capture(path)] == ["model.npu_fused_infer_attention_score"]


def test_a_compiled_graph_is_recorded_when_it_runs(path):
    q, k, v, kw = _case_args()
    keywords = {n: torch.tensor(x) if n.startswith("actual") else x for n, x in kw.items()}
    op = lookalike.op("torchair.v1")

    def step(query, key, value, lengths):
        return op(query, key, value, **{**keywords, "actual_seq_lengths_kv": lengths})

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
    with capture(path):
        compiled(q, k, v, torch.tensor([9, 12]))
        compiled(q, k, v, torch.tensor([8, 12]))
    calls = load_capture(path)
    assert [c.entry for c in calls] == ["torch.ops.fia_kit.air_npu_fused_infer_attention_score.default"] * 2
    assert [c.value("actual_seq_lengths_kv").tolist() for c in calls] == [[9, 12], [8, 12]]


def test_exact_replay_with_strides_and_length_types(path):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 2, 16, generator=g).transpose(1, 2)  # a BNSD view with BSND strides
    k = torch.randn(2, 1, 12, 16, generator=g, dtype=torch.float16)
    v = torch.randn(2, 1, 12, 16, generator=g, dtype=torch.float16)
    q = q.to(torch.float16)
    kw = {"num_heads": 2, "num_key_value_heads": 1, "input_layout": "BNSD", "scale": 0.25,
          "actual_seq_lengths": (6, 3), "actual_seq_lengths_kv": [12, 7], "softmax_lse_flag": True,
          "atten_mask": torch.ones(6, 12, dtype=torch.bool).triu(7).expand(2, 1, 6, 12)}
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    with capture(path, tensors="all"):
        out, lse = early_v1(q, k, v, **kw)
    [call] = load_capture(path)
    assert call.exact and call.count == 1
    rq, rk, rv, rkw = call.args()
    assert torch.equal(rq, q) and rq.stride() == q.stride() and torch.equal(rk, k) and rk.dtype == torch.float16
    assert rkw["actual_seq_lengths"] == (6, 3) and rkw["actual_seq_lengths_kv"] == [12, 7]
    assert torch.equal(rkw["atten_mask"], kw["atten_mask"])
    replay = fia_kit.run(call, "reference")
    assert torch.equal(replay.attention_out, out) and torch.equal(replay.softmax_lse, lse)
    assert fia_kit.plan(call).batch == 2


def test_numpy_lengths_come_back_as_numpy(path):
    import numpy

    q, k, v, kw = _case_args()
    with capture(path), contextlib.suppress(fia_kit.FIAArgumentError):  # sglang passes np.cumsum(...)
        early_v1(q, k, v, **{**kw, "actual_seq_lengths_kv": numpy.array([9, 12])})
    value = load_capture(path)[0].value("actual_seq_lengths_kv")
    assert isinstance(value, numpy.ndarray) and value.tolist() == [9, 12]


def test_identical_signatures_are_counted_not_stored_twice(path):
    q, k, v, kw = _case_args()
    with capture(path) as recorder:
        for _ in range(3):
            early_v1(q, k, v, **kw)
        early_v1(q + 1, k, v, **kw)  # same signature: float contents are not part of it
        early_v1(q, k, v, **{**kw, "actual_seq_lengths_kv": [8, 12]})  # new lengths: a new call
        early_v1(q, k, v, **{**kw, "atten_mask": torch.zeros(2, 1, 6, 12, dtype=torch.bool)})
        early_v1(q, k, v, **{**kw, "atten_mask": torch.ones(6, 12, dtype=torch.bool).triu(7).expand(2, 1, 6, 12)})
    calls = load_capture(path)
    assert recorder.total == 7 and calls.total_calls == 7
    assert [c.count for c in calls] == [4, 1, 1, 1]  # the two masks differ in content: two calls
    assert torch.equal(calls[0].value("query"), q)  # the first occurrence's tensors are kept
    stored = calls.info["distinct_calls"]
    assert stored == 4


def test_auto_keeps_small_tensors_and_stats_of_large_ones(path):
    q, k, v, kw = _case_args(q_lens=(6, 4), kv_lens=(3, 4))
    with capture(path, max_tensor_bytes=q.numel() * 4 - 1) as recorder:  # the query just over the cap
        early_v1(q, k, v, **kw)
    [call] = load_capture(path)
    assert set(call.regenerated) == {"query"} and not call.exact and recorder.left_out == 1
    stats = call.arguments["query"]["stats"]
    assert stats["min"] == pytest.approx(float(q.min())) and stats["max"] == pytest.approx(float(q.max()))
    regenerated = call.value("query")
    assert regenerated.shape == q.shape and regenerated.dtype == q.dtype
    assert float(regenerated.min()) >= stats["min"] and float(regenerated.max()) <= stats["max"]
    assert torch.equal(call.value("key"), k) and "LEFT OUT" in call.describe()
    assert fia_kit.run(call, "reference").attention_out.shape == (2, 2, 6, 16)  # replayable with made-up values
    assert "query" in load_capture(path).table()


def test_total_cap_and_all(path, tmp_path):
    q, k, v, kw = _case_args()
    with capture(path, max_total_bytes=q.numel() * 4) as recorder:  # room for the query only
        early_v1(q, k, v, **kw)
    assert set(load_capture(path)[0].regenerated) == {"key", "value"} and recorder.left_out == 2
    with capture(tmp_path / "all.fiacap", tensors="all", max_tensor_bytes=0, max_total_bytes=0):
        early_v1(q, k, v, **kw)
    assert load_capture(tmp_path / "all.fiacap")[0].exact
    with pytest.raises(fia_kit.FIAArgumentError, match="tensors"):
        with capture(path, tensors="some"):
            pass


def test_the_file_is_whole_after_every_new_call_and_after_a_crash(path, monkeypatch):
    q, k, v, kw = _case_args()
    with capture(path, flush_seconds=0):
        assert len(load_capture(path)) == 0  # valid from the start
        early_v1(q, k, v, **kw)
        assert len(load_capture(path)) == 1  # written right after the new call
        module = sys.modules["fia_kit.capture"]
        real_replace = os.replace

        def crash(src, dst):
            raise OSError("disk full")  # the write dies before the rename

        monkeypatch.setattr(module.os, "replace", crash)
        with pytest.warns(RuntimeWarning, match="disk full"):  # the model's call is not broken by the recorder
            early_v1(q, k, v, **{**kw, "actual_seq_lengths_kv": [3, 4]})
        monkeypatch.setattr(module.os, "replace", real_replace)
        assert len(load_capture(path)) == 1  # the last good file, whole
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(load_capture(path)) == 2  # written again on exit


def test_an_exception_in_the_model_still_leaves_the_calls(path):
    q, k, v, kw = _case_args()
    with pytest.raises(RuntimeError, match="model broke"):
        with capture(path):
            early_v1(q, k, v, **kw)
            raise RuntimeError("model broke")
    assert len(load_capture(path)) == 1
    assert fia_kit.npu_fused_infer_attention_score(q, k, v, **kw)  # the hooks are gone: nothing to record


def test_a_refused_call_is_recorded_with_its_error(path):
    q, k, v, kw = _case_args()
    with capture(path), pytest.raises(fia_kit.FIAArgumentError):
        early_v1(q, k, v, **{**kw, "sparse_mode": 7})
    [call] = load_capture(path)
    assert "sparse_mode" in call.error
    assert [f.parameter for f in fia_kit.lint(call)] == ["sparse_mode"]


def _good_file(path):
    q, k, v, kw = _case_args()
    with capture(path):
        early_v1(q, k, v, **kw)
    return path.read_bytes()


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[: len(b) // 2], "not a readable safetensors file"),
    (lambda b: b"PK\x03\x04 a zip, not a capture", "not a readable safetensors file"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "corrupt"),
    (lambda b: b"", "not a readable safetensors file"),
])
def test_damaged_files_name_the_file_and_the_problem(path, damage, problem):
    path.write_bytes(damage(_good_file(path)))
    with pytest.raises(CaptureFileError, match=problem) as info:
        load_capture(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def _rewrite_index(path, edit):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    index = json.loads(meta["fia_kit.capture"])
    meta["fia_kit.capture"] = edit(index)
    save_file(tensors, str(path), metadata=meta)
    seal(path)  # a well-formed file around the edited index: the index's own checks must find the problem


@pytest.mark.parametrize("edit, problem", [
    (lambda i: "{not json", "not valid JSON"),
    (lambda i: json.dumps({**i, "version": 99}), "version 99"),
    (lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "form": "v3"}]}), "form 'v3'"),
    (lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "query": {"kind": "tensor"}}}]}), "argument query: shape"),
    (lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "query": {**i["calls"][0]["arguments"]["query"], "data": "f" * 32}}}]}),
     "does not hold"),
    (lambda i: json.dumps({**i, "calls": [{**i["calls"][0], "arguments": {
        **i["calls"][0]["arguments"], "query": {**i["calls"][0]["arguments"]["query"], "shape": [1, 2, 3, 4]}}}]}),
     "the index says"),
])
def test_malformed_index(path, edit, problem):
    _good_file(path)
    _rewrite_index(path, edit)
    with pytest.raises(CaptureFileError, match=problem):
        load_capture(path)


def test_foreign_and_missing_files(path, tmp_path):
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CaptureFileError, match="not a fia-kit capture"):
        load_capture(path)
    with pytest.raises(CaptureFileError, match="no such file"):
        load_capture(tmp_path / "missing.fiacap")


def test_the_file_is_safetensors_with_a_json_index(path):
    data = _good_file(path)
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + header_len])
    index = json.loads(header["__metadata__"]["fia_kit.capture"])
    assert index["format"] == "fia-kit-capture" and index["calls"][0]["arguments"]["query"]["shape"] == [2, 2, 6, 16]


def test_a_captured_call_works_with_the_kit(path, tmp_path):
    q, k, v, kw = _case_args(paged=True, layout="TND", sparse_mode=3)
    with capture(path):
        out, _ = early_v1(q, k, v, **kw)
    [call] = load_capture(path)
    case = Case.from_call(call)
    assert case.paged and case.layout == "TND" and case.q_lens == (6, 4) and case.mask == "compressed"
    assert torch.equal(case.build("v1").query, q)  # its own tensors
    assert torch.equal(fia_kit.run(case).attention_out, out)
    assert fia_kit.compare(call, ["reference"]).passed
    from fia_kit.repro import to_script

    script = to_script(call, tmp_path / "repro.py")
    assert script.exists() and script.with_suffix(".pt").exists()
    assert fia_kit.lint(call) == []
    explorer = fia_kit.explore(call)
    assert explorer.outcome.ok and torch.equal(explorer.outcome.call.query, q)  # the explorer shows its own tensors


def test_cli_lint_prints_one_row_per_distinct_call(path, capsys):
    q, k, v, kw = _case_args()
    with capture(path):
        early_v1(q, k, v, **kw)
        early_v1(q, k, v, **kw)
        early_v1(q, k, v, **{**kw, "scale": 1.0})
    assert cli_main(["lint", str(path), "--messages"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line[:1].isdigit()]
    assert len(rows) == 2 and rows[0].split()[1] == "2" and "scale-one" in rows[1] and "scale-one" not in rows[0]
    assert "spec 18.5" in text
    with capture(path):
        with pytest.raises(fia_kit.FIAArgumentError):
            early_v1(q, k, v, **{**kw, "sparse_mode": 7})
    assert cli_main(["lint", str(path)]) == 1
    path.write_bytes(b"garbage")
    assert cli_main(["lint", str(path)]) == 2 and str(path) in capsys.readouterr().err


def test_a_torchair_graph_is_seen_at_trace_time_as_metadata(npu_modules, path):
    call = Case().to_fia_call("v1")
    with capture(path) as recorder:
        fia_kit.run(call, "npu-graph", torch_npu=fake_torch_npu, torchair=fake_torchair, device="cpu")
    calls = load_capture(path)
    traced = [c for c in calls if c.entry.startswith("graph trace:")]
    assert [c.entry for c in traced] == ["graph trace: torch.ops.fake_air.npu_fused_infer_attention_score.default"]
    [trace] = traced
    assert trace.graph and not trace.replayable and trace.arguments["query"]["role"] == "fake"
    assert trace.arguments["query"]["shape"] == list(call.query.shape) and trace.arguments["num_heads"]["value"] == 2
    assert [f.rule for f in fia_kit.lint(trace)] == ["not-checked"] and recorder.total >= 1


def test_an_out_attribute_and_torch_npus_out_list_are_recorded(path):
    def out_op(q, k, v, *, out, **kw):  # torch_npu's Python binding: op.out(..., out=[attention_out, lse])
        result = early_v1(q, k, v, **kw)
        out[0].copy_(result[0])
        return tuple(out)

    def op(q, k, v, **kw):
        return early_v1(q, k, v, **kw)

    op.out = out_op
    module = types.SimpleNamespace(__name__="npu_like", npu_fused_infer_attention_score=op)
    q, k, v, kw = _case_args()
    with capture(path, patch=[module]):
        module.npu_fused_infer_attention_score.out(q, k, v, **kw, out=[torch.empty(2, 2, 6, 16), torch.empty(1)])
    [call] = load_capture(path)
    assert (call.entry, call.kind) == ("npu_like.npu_fused_infer_attention_score.out", "out")
    assert call.arguments["attention_out"]["role"] == "output" and "out" not in call.arguments
    assert torch.equal(fia_kit.run(call, "reference").attention_out, early_v1(q, k, v, **kw)[0])


def test_a_change_is_written_within_flush_seconds_without_further_calls(path):
    import time

    q, k, v, kw = _case_args()
    with capture(path, flush_seconds=0.3):
        early_v1(q, k, v, **kw)
        early_v1(q, k, v, **{**kw, "actual_seq_lengths_kv": [3, 4]})
        deadline = time.monotonic() + 10
        while len(load_capture(path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(load_capture(path)) == 2  # the timer wrote it while the model kept running


def test_the_companions_of_the_stand_in_the_look_alikes_and_the_reference(npu_modules, path):
    from fia_kit import reference

    q, k, v, kw = _case_args()
    out = lambda: [torch.empty(2, 2, 6, 16), torch.empty(2, 2, 6, 1)]  # noqa: E731
    with capture(path):
        fake_torch_npu.npu_fused_infer_attention_score.out(q, k, v, **kw, out=out())
        fake_torch_npu._npu_fused_infer_attention_score_get_max_workspace(q, k, v, **kw)
        fake_torch_npu._npu_fused_infer_attention_score_infer_output(q, v, input_layout="BNSD", num_heads=2)
        attention_out, lse = out()
        lookalike.companion("torch_npu.v1.out")(q, k, v, **kw, attention_out=attention_out, softmax_lse=lse)
        lookalike.companion("torch_npu.v2.get_max_workspace")(q, k, v, num_query_heads=2, num_key_value_heads=1,
                                                              input_layout="BNSD", softmax_scale=0.25)
        reference.npu_fused_infer_attention_score_out(q, k, v, **kw, out=out())
        reference.npu_fused_infer_attention_score_v2_infer_output(q, v, input_layout="BNSD", num_query_heads=2)
    calls = load_capture(path)
    assert [(c.entry, c.form, c.kind) for c in calls] == [
        ("torch_npu.npu_fused_infer_attention_score.out", "v1", "out"),
        ("torch_npu._npu_fused_infer_attention_score_get_max_workspace", "v1", "get_max_workspace"),
        ("torch_npu._npu_fused_infer_attention_score_infer_output", "v1", "infer_output"),
        ("torch.ops.fia_kit.npu_fused_infer_attention_score.out", "v1", "out"),
        ("torch.ops.fia_kit._npu_fused_infer_attention_score_v2_get_max_workspace.default", "v2",
         "get_max_workspace"),
        ("fia_kit.reference.npu_fused_infer_attention_score_out", "v1", "out"),
        ("fia_kit.reference.npu_fused_infer_attention_score_v2_infer_output", "v2", "infer_output"),
    ]
    expected = early_v1(q, k, v, **kw)[0]
    for call in calls:
        if call.kind == "out":
            assert call.arguments["attention_out"]["role"] == "output"
            assert torch.equal(fia_kit.run(call, "reference").attention_out, expected)
