"""fia_kit.profiling on CPU: result structure and units, compiles counted, atomic JSON, traces and stderr hygiene.

No speed is asserted: timings only have to be in seconds (a sleep of 2 ms takes at least 2e-3 s).
"""

from __future__ import annotations

import json
import os
import time

import fake_npu
import pytest
import torch
from fake_npu import torch_npu as fake_torch_npu
from fake_npu import torchair as fake_torchair
from isolation import in_child

from fia_kit.call import parse_call
from fia_kit.environment import detect
from fia_kit.profiling import (
    ProfileResult,
    Progress,
    peak_memory,
    profile,
    recompiles,
    silenced_fd2,
    variants,
)

requires_npu = pytest.mark.skipif(not detect().backends()["npu"][0], reason="needs a usable NPU (torch_npu)")


def decode_call(kv_lengths=(24, 9)):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k = torch.randn(2, 2, 32, 16, generator=g)
    return parse_call("v1", q, k, k.clone(), dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD",
                                                  actual_seq_lengths_kv=list(kv_lengths)))


def test_named_callables_give_seconds_and_ordered_quantiles():
    result = profile({"short": lambda: time.sleep(0.002), "long": lambda: time.sleep(0.02)}, warmup=1,
                     repeats=5, memory=False)
    assert [r.name for r in result.rows] == ["short", "long"]
    short, long = result.row("short"), result.row("long")
    assert 0.002 <= short.median_s < 1.0 and short.repeats == 5
    assert long.median_s > short.median_s  # 20 ms of sleep vs 2 ms: seconds, not milliseconds
    for r in result.rows:
        assert r.min_s <= r.p10_s <= r.median_s <= r.p90_s <= r.max_s and r.iqr_s >= 0
        assert r.device == "cpu" and r.graphs_compiled == 0 and r.peak_bytes is None
    assert result.meta["units"] == {"time": "s", "memory": "bytes"}
    assert result.ratios("short")["long"] == pytest.approx(long.median_s / short.median_s)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_cpu_peak_memory_is_in_bytes():
    """In a child process: the peak RSS it reads counts only this measurement (tests/isolation.py)."""
    in_child(measure_64_mib_and_nothing)


def measure_64_mib_and_nothing() -> None:
    size = 64 * 2**20

    def allocate():
        return torch.ones(size // 4, dtype=torch.float32)  # 64 MiB, touched

    peak, method = peak_memory(allocate, torch.device("cpu"))
    assert peak >= 0.9 * size and "VmHWM" in method
    idle, _ = peak_memory(lambda: None, torch.device("cpu"))
    assert idle < size // 8


def test_call_on_reference_and_compiled_backends():
    torch._dynamo.reset()  # other tests' compiles of the same module code must not count towards its cache limit
    call = decode_call()
    result = profile(call, ["reference", "compiled", "compiled-list"], warmup=2, repeats=3)
    assert [r.name for r in result.rows] == ["reference", "compiled", "compiled-list"]
    reference, compiled, as_list = result.rows
    assert reference.graphs_compiled == 0
    # one compile in the first call, none in the steady calls that follow (same lengths)
    assert compiled.graphs_compiled == 1 and as_list.graphs_compiled == 1
    assert all(r.first_s >= 0 and r.one_off_s >= 0 and isinstance(r.peak_bytes, int) for r in result.rows)
    assert result.meta["call"]["query"] == [2, 4, 1, 16]
    text = result.table()
    assert "compiled-list" in text and "median ms" in text
    assert "<table>" in result._repr_html_()
    fig = result.figure()
    assert list(fig.data[0].y) == ["reference", "compiled", "compiled-list"]


def test_recompiles_list_lengths_each_time_tensor_lengths_once():
    sweep = [[24, 9], [20, 9], [24, 3]]
    assert recompiles(decode_call(), sweep) == {"list": 3, "tensor": 1}


def test_npu_variants_with_stand_in_modules():
    fake_npu.CALLS.clear()
    made = variants(decode_call(), ["npu", "npu-graph", "npu-graph-tiling"], torch_npu=fake_torch_npu,
                    torchair=fake_torchair, npu_device="cpu")
    assert list(made) == ["npu", "npu-graph", "npu-graph-tiling"]
    for fn, device in made.values():
        out, _ = fn()
        assert out.shape == (2, 4, 1, 16) and device.type == "cpu"
    kinds = [c.schema for c in fake_npu.CALLS]
    assert not any(c.problems for c in fake_npu.CALLS)
    assert "torch_npu.v1" in kinds and "torchair.v1" in kinds
    with pytest.raises(ValueError, match="unknown backend"):
        variants(decode_call(), ["gpu"])


def test_save_json_round_trip_and_failed_writes_keep_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    first = profile({"a": lambda: None}, warmup=1, repeats=2, memory=False)
    first.save_json(path)
    assert ProfileResult.load_json(path).rows == first.rows
    before = path.read_text()
    second = profile({"b": lambda: None}, warmup=1, repeats=2, memory=False)

    def dump_half_then_fail(data, handle, **kw):
        handle.write('{"meta": {"partial": ')
        raise RuntimeError("interrupted")

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        second.save_json(path)
    monkeypatch.undo()
    assert path.read_text() == before

    def no_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk gone"):
        second.save_json(path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.json"]  # no temp file left behind
    second.save_json(path)
    assert ProfileResult.load_json(path).rows[0].name == "b"


def test_trace_is_written_and_fd2_noise_is_silenced(tmp_path, capfd):
    result = profile({"mm": lambda: torch.mm(torch.ones(8, 8), torch.ones(8, 8))}, warmup=1, repeats=1,
                     memory=False, trace_dir=tmp_path)
    trace = result.row("mm").trace
    assert trace is not None and json.loads(open(trace).read())["traceEvents"]
    with silenced_fd2():
        os.write(2, b"USDT: probe noise\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "after" in err


def test_progress_is_silent_unless_asked(capfd):
    profile({"a": lambda: None}, warmup=1, repeats=2, memory=False)
    assert capfd.readouterr().err == ""
    with Progress(2, enabled=True) as bar:
        bar.step()
        bar.step()
    assert "2/2" in capfd.readouterr().err


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="repeats"):
        profile({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="backends"):
        profile({"a": lambda: None}, ["reference"])


@pytest.mark.npu
@requires_npu
def test_npu_eager_graph_and_tiling_profile(tmp_path):
    result = profile(decode_call(), ["npu", "npu-graph", "npu-graph-tiling"], warmup=2, repeats=5,
                     trace_dir=tmp_path)
    assert [r.device.split(":")[0] for r in result.rows] == ["npu"] * 3
    assert all(r.peak_bytes is not None and r.memory_method.startswith("torch.npu") for r in result.rows)
    assert all(r.trace and os.path.isdir(r.trace) for r in result.rows)


def test_profile_and_roofline_take_a_plan():
    import fia_kit
    from fia_kit.roofline import call_cost

    plan = fia_kit.plan(decode_call())
    result = profile(plan, ["reference"], warmup=1, repeats=2, memory=False)
    assert [r.name for r in result.rows] == ["reference"] and result.meta["call"]["query"] == [2, 4, 1, 16]
    assert call_cost(plan).flops == 2 * 4 * (24 + 9) * (16 + 16)  # N_q * in-band pairs * (D_q + D_v), by hand
