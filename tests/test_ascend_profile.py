"""fia_kit.ascend_profile: kernel_details.csv, msprof op_summary, trace_view.json, op_statistic.csv and folder
layouts, read from hand-written fixtures whose headers come from the real torch_npu 2.13.0 wheel; foreign and
malformed files; the shipped illustration; and the regression gate on both kinds of run."""

from __future__ import annotations

import csv
import filecmp
import importlib.util
import json
from pathlib import Path

import pytest
from npu_wheel import wheel_text

from fia_kit.ascend_profile import ProfileFormatError, read_ascend, read_trace
from fia_kit.profiling import ProfileResult, ProfileRow, compare_runs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ascend_profile"
BASELINE, NEW = EXAMPLES / "decode_baseline_ascend_pt", EXAMPLES / "decode_new_ascend_pt"
FIA = "FusedInferAttentionScore"


@pytest.fixture(scope="module")
def headers():
    """torch_npu 2.13.0's CsvHeaders, executed from the wheel's _csv_headers.py."""
    namespace: dict = {}
    exec(wheel_text("torch_npu/profiler/analysis/prof_common_func/_csv_headers.py"), namespace)  # noqa: S102
    return namespace["CsvHeaders"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SHAPE_A = "2,8,1,64;2,2,512,64;2,2,512,64"
SHAPE_B = "2,8,1,64;2,2,1024,64;2,2,1024,64"
# (name, type, start, duration, wait, block, shapes, aic_mte2_ratio)
ROWS = [
    ("fia_0", FIA, "1000.5\t", 10.0, 5.0, 24, SHAPE_A, "0.61"),
    ("MatMul_1", "MatMul", "1020.0\t", 3.0, 0.0, 20, "1,64;64,64", "0.2"),
    ("fia_2", FIA, "1100.0\t", 20.0, 0.0, 24, SHAPE_A, "N/A"),
    ("fia_3", FIA, "1200.0\t", 40.0, 5.0, 24, SHAPE_A, "0.70"),
    ("fia_4", FIA, "1300.0\t", 7.0, 7.0, 12, SHAPE_B, "0.80"),
]


def kernel_details(tmp_path: Path, headers, folder: str = "ASCEND_PROFILER_OUTPUT") -> Path:
    header = ["Step Id", *headers.OP_SUMMARY_KERNEL_BASE_HEADERS, "Input Shapes", "aic_mte2_ratio"]
    rows = [[1, 0, n, t, "MIX_AIC", s, d, w, b, sh, m] for n, t, s, d, w, b, sh, m in ROWS]
    return write_csv(tmp_path / folder / "kernel_details.csv", header, rows)


def test_kernel_details_by_hand(tmp_path, headers):
    path = kernel_details(tmp_path, headers)
    prof = read_ascend(path)
    assert prof.kind == "kernel_details" and [k.name for k in prof.kernels] == ["fia_0", "fia_2", "fia_3", "fia_4"]
    first = prof.kernels[0]
    assert (first.start_us, first.duration_us, first.wait_us, first.block_num, first.step) == (1000.5, 10, 5, 24, 1)
    assert first.input_shapes == ((2, 8, 1, 64), (2, 2, 512, 64), (2, 2, 512, 64))
    assert first.metrics == {"aic_mte2_ratio": 0.61} and prof.kernels[1].metrics == {}  # "N/A": not collected
    a, b = prof.shape_table()
    # A: durations 10, 20, 40 -> median 20, p90 = 20 + 0.8 * 20 = 36; waits 10 of 70 + 10
    assert (a.shapes, a.count, a.median_us, a.p90_us, a.kv_length) == (SHAPE_A, 3, 20.0, 36.0, 512)
    assert a.wait_share == pytest.approx(10 / 80)
    assert (b.count, b.median_us, b.p90_us, b.wait_share, b.kv_length) == (1, 7.0, 7.0, 0.5, 1024)
    assert "median us" in prof.table() and "<table>" in prof._repr_html_()
    assert read_ascend(path, layout="BSH").shape_table()[0].kv_length == 2  # BSH reads axis 1
    assert read_ascend(tmp_path).kernels == prof.kernels  # the folder above ASCEND_PROFILER_OUTPUT


def test_msprof_op_summary_by_hand(tmp_path, headers):
    header = [*headers.OP_SUMMARY_SHOW_HEADERS, "Input Shapes", "aicore_time(us)", "cube_utilization(%)"]
    rows = [[0, n, t, "AI_CORE", s, d, w, b, sh, d * 0.9, 12.5] for n, t, s, d, w, b, sh, _ in ROWS]
    path = write_csv(tmp_path / "PROF_1" / "mindstudio_profiler_output" / "op_summary_0_1.csv", header, rows)
    prof = read_ascend(path)
    assert prof.kind == "op_summary" and len(prof.kernels) == 4
    assert prof.kernels[2].duration_us == 40 and prof.kernels[2].metrics == {"aicore_time(us)": 36.0,
                                                                             "cube_utilization(%)": 12.5}
    assert read_ascend(tmp_path).kind == "op_summary"  # found under PROF_*/ when there is no kernel_details
    older = write_csv(tmp_path / "old.csv", [h.replace("Block Num", "Block Dim") for h in header], rows)
    assert read_ascend(older).kernels[3].block_num == 12  # older CANN spells it Block Dim


def trace_events():
    """torch_npu-style events: string ts in us, process / thread names as metadata events."""
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "Python"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Thread 7"}},
            {"ph": "M", "name": "process_name", "pid": 9, "tid": 0, "args": {"name": "Ascend Hardware"}}]
    x = lambda name, pid, ts, dur, tid=7: {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts,  # noqa: E731
                                           "dur": dur, "cat": "cpu_op", "args": {}}
    return meta + [
        x("ProfilerStep#1", 1, "900.0", 500.0),
        x("Dequeue@aclnnFusedInferAttentionScoreV3", 1, "960.0", 30.0),
        x("AscendCL@aclnnFusedInferAttentionScoreV3", 1, "965.0", 20.0),
        x("EVENT_WAIT_SQE", 9, "990.0", 10.0, tid=2),
        x("fia_kernel_on_device", 9, "1000.5", 10.0, tid=2),
        x("aten::add", 1, "1010.0", 2.0),
        x("Dequeue@aclnnFusedInferAttentionScoreV3", 1, "1250.0", 30.0),
        {"ph": "f", "name": "torch_to_npu", "pid": 9, "tid": 2, "ts": "1000.5", "id": "1000.5"},
    ]


def test_trace_view_events_are_attached_to_their_kernels(tmp_path, headers):
    folder = kernel_details(tmp_path, headers).parent
    (folder / "trace_view.json").write_text(json.dumps(trace_events()))
    host, device = read_trace(folder / "trace_view.json")
    assert [e.kind for e in host] == ["step", "dequeue", "launch", "dequeue"]
    assert [(e.name, e.process) for e in device] == [("EVENT_WAIT_SQE", "Ascend Hardware")]
    assert host[1].start_us == 960.0 and host[1].thread == "Thread 7"
    prof = read_ascend(tmp_path)
    near_first = [(h.kind, h.start_us) for h in prof.kernels[0].host]
    assert near_first == [("dequeue", 960.0), ("launch", 965.0), ("event_wait", 990.0)]
    # the second Dequeue (1250) belongs to fia_4 (1300), after fia_3 ended (1240)
    assert [h.start_us for h in prof.kernels[3].host] == [1250.0]
    assert prof.step_window(1) == (900.0, 1400.0)
    figure = prof.timeline_figure(1)
    assert {t.name for t in figure.data} >= {"kernel", "wait", "dequeue", "launch", "event_wait"}
    kv = prof.kv_figure()
    assert list(kv.data[0].x) == [512, 512, 512, 1024] and list(kv.data[0].y) == [10, 20, 40, 7]
    (folder / "trace_view.json").write_text(json.dumps({"traceEvents": trace_events()}))  # dict form also read
    assert len(read_trace(folder / "trace_view.json")[0]) == 4


def test_op_statistic_is_read_when_present(tmp_path, headers):
    folder = kernel_details(tmp_path, headers).parent
    write_csv(folder / "op_statistic.csv", ["OP Type", "Core Type", "Count", "Total Time(us)", "Min Time(us)",
                                            "Avg Time(us)", "Max Time(us)", "Ratio(%)"],
              [[FIA, "MIX_AIC", 4, 77, 7, 19.25, 40, 96.25]])
    prof = read_ascend(tmp_path)
    assert prof.op_statistic == [{"OP Type": FIA, "Core Type": "MIX_AIC", "Count": "4", "Total Time(us)": "77",
                                  "Min Time(us)": "7", "Avg Time(us)": "19.25", "Max Time(us)": "40",
                                  "Ratio(%)": "96.25"}]
    write_csv(folder / "op_statistic.csv", ["OP Type", "Count"], [[FIA, 4]])
    with pytest.raises(ProfileFormatError, match=r"op_statistic\.csv: missing column 'Total Time\(us\)'"):
        read_ascend(tmp_path)


def test_foreign_and_malformed_files_name_the_file_and_the_problem(tmp_path, headers):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("date,price\n2026-01-01,3\n")
    with pytest.raises(ProfileFormatError, match=r"foreign\.csv: missing column 'Name'") as err:
        read_ascend(foreign)
    assert isinstance(err.value, ValueError) and err.value.file.endswith("foreign.csv")
    base = list(headers.OP_SUMMARY_KERNEL_BASE_HEADERS)
    no_duration = write_csv(tmp_path / "a" / "kernel_details.csv", [h for h in base if h != "Duration(us)"],
                            [[0, "fia", FIA, "MIX_AIC", 1.0, 0.0, 24]])
    with pytest.raises(ProfileFormatError, match=r"kernel_details\.csv: missing column 'Duration\(us\)'"):
        read_ascend(no_duration)
    bad_number = write_csv(tmp_path / "b" / "kernel_details.csv", base, [[0, "fia", FIA, "MIX_AIC", 1, "fast", 0, 24]])
    with pytest.raises(ProfileFormatError, match=r"row 2: column 'Duration\(us\)' is 'fast', not a number"):
        read_ascend(bad_number)
    empty = tmp_path / "c" / "kernel_details.csv"
    empty.parent.mkdir()
    empty.write_text("")
    with pytest.raises(ProfileFormatError, match="empty file"):
        read_ascend(empty)
    folder = kernel_details(tmp_path / "d", headers).parent
    (folder / "trace_view.json").write_text('[{"ph": "X", "name": "Dequeue@x"')
    with pytest.raises(ProfileFormatError, match=r"trace_view\.json: not JSON"):
        read_ascend(folder)
    (folder / "trace_view.json").write_text('{"events": 3}')
    with pytest.raises(ProfileFormatError, match="not a Chrome trace"):
        read_ascend(folder)
    (folder / "trace_view.json").write_text('[{"ph": "X", "name": "Dequeue@x", "ts": "soon"}]')
    with pytest.raises(ProfileFormatError, match=r"event 0 \('Dequeue@x'\): missing or non-numeric"):
        read_ascend(folder)
    with pytest.raises(ProfileFormatError, match="no ASCEND_PROFILER_OUTPUT"):
        (tmp_path / "e").mkdir()
        read_ascend(tmp_path / "e")  # a folder with neither layout
    with pytest.raises(ProfileFormatError, match="no such file"):
        read_ascend(tmp_path / "missing")
    with pytest.raises(ProfileFormatError, match="a trace alone"):
        read_ascend(folder / "trace_view.json")
    two = tmp_path / "two"
    for run in ("r1_ascend_pt", "r2_ascend_pt"):
        kernel_details(two / run, headers)
    with pytest.raises(ProfileFormatError, match="2 profiler runs inside"):
        read_ascend(two)
    assert len(read_ascend(two / "r1_ascend_pt").kernels) == 4


def test_shipped_illustration_reads_and_is_what_its_script_writes(tmp_path, headers):
    for run in (BASELINE, NEW):
        assert "ILLUSTRATION" in (run / "ILLUSTRATION.txt").read_text()
        header = (run / "ASCEND_PROFILER_OUTPUT" / "kernel_details.csv").read_text().splitlines()[0].split(",")
        assert header[:9] == ["Step Id", *headers.OP_SUMMARY_KERNEL_BASE_HEADERS]
    prof = read_ascend(BASELINE)
    assert len(prof.kernels) == 12 and prof.steps() == [1, 2, 3, 4, 5, 6]
    assert [r.kv_length for r in prof.shape_table()] == [1024, 2048, 4096]
    assert {h.kind for k in prof.kernels for h in k.host} >= {"dequeue", "event_wait", "launch", "enqueue"}
    assert "aic_mte2_ratio" in prof.metrics() and prof.op_statistic[0]["OP Type"] == FIA
    summary = next(BASELINE.glob("PROF_*/mindstudio_profiler_output/op_summary_*.csv"))
    assert [k.duration_us for k in read_ascend(summary).kernels] == [k.duration_us for k in prof.kernels]
    assert sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file()) < 200_000
    spec = importlib.util.spec_from_file_location("make_example", EXAMPLES / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for run in (BASELINE, NEW):
        for shipped in run.rglob("*"):
            if shipped.is_file():
                assert filecmp.cmp(shipped, tmp_path / run.name / shipped.relative_to(run), shallow=False), shipped


def test_gate_on_ascend_profiles_finds_the_slower_shape():
    gate = compare_runs(BASELINE, read_ascend(NEW))
    verdicts = {r.key.split(";")[1]: r.verdict for r in gate.rows}
    assert verdicts == {"1,8,1024,128": "ok", "1,8,2048,128": "ok", "1,8,4096,128": "regressed"}
    assert not gate.passed and len(gate.regressions) == 1
    assert 0.10 < gate.regressions[0].change < 0.14  # the illustration's 4096 shape is made 12 % slower
    assert compare_runs(BASELINE, NEW, threshold=0.2).passed
    assert "FAIL (1 regressed)" in gate.table() and "<table>" in gate._repr_html_()


def row(name: str, median_s: float) -> ProfileRow:
    return ProfileRow(name, "cpu", 5, median_s, median_s, median_s, 0.0, median_s, median_s, median_s, 0, None, None)


def test_gate_on_profile_results_and_their_json(tmp_path):
    call = {"query": [2, 4, 1, 16], "key": [2, 2, 32, 16], "dtype": "float16"}
    base = ProfileResult([row("a", 1e-3), row("b", 1e-3), row("c", 1e-3), row("gone", 1e-3)], {"call": call})
    new = ProfileResult([row("a", 1.0799e-3), row("b", 1.0801e-3), row("c", 0.9e-3), row("added", 1e-3)],
                        {"call": call})
    base.save_json(tmp_path / "base.json")
    for baseline in (base, tmp_path / "base.json", base.to_dict()):
        gate = compare_runs(baseline, new)
        assert [(r.key.split()[0], r.verdict) for r in gate.rows] == [
            ("a", "ok"), ("b", "regressed"), ("c", "faster"), ("gone", "only in baseline"), ("added", "only in new")]
    assert gate.rows[0].key == "a q[2, 4, 1, 16] k[2, 2, 32, 16] float16"
    assert gate.rows[1].baseline_us == pytest.approx(1000) and gate.rows[1].new_us == pytest.approx(1080.1)
    with pytest.raises(ValueError, match="like with like"):
        compare_runs(base, BASELINE)
    with pytest.raises(ValueError, match="threshold"):
        compare_runs(base, new, threshold=0)
