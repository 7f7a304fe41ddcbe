"""Write the ILLUSTRATION profiles under examples/ascend_profile/ (nothing here was measured on an NPU).

    python examples/ascend_profile/make_example.py [OUT]   # (re)writes OUT/decode_{baseline,new}_ascend_pt/

Two small torch_npu profiler folders in the layout and column names torch_npu 2.13.0's profiler writes
(``torch_npu/profiler/analysis``: ``_csv_headers.py``, ``prof_view/_kernel_view_parser.py``,
``_trace_view_parser.py``, ``prof_bean/_op_statistic_bean.py``) and an msprof ``op_summary_*.csv`` inside ``PROF_*``,
for a made-up graph-mode decode: 6 profiler steps, 2 layers, one FIA call per layer with a BNSD key of 1024, 2048 or
4096 tokens (two steps each), a MatMul between them, a Dequeue bubble and an EventWait task before each FIA kernel.
Durations are a line in KV length plus seeded noise; the "new" run is 12 % slower at 4096 only, so that the
regression gate (``fia_kit.profiling.compare_runs``) has something to find. Every file says it is an illustration.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTE = "ILLUSTRATION written by examples/ascend_profile/make_example.py: synthetic, not measured"
BASE_US = 1764547200000000.0  # 2025-12-01 00:00 UTC in microseconds, as the profiler's local-time stamps
FIA_NAME = "aclnnFusedInferAttentionScoreV3_FusedInferAttentionScore_FusedInferAttentionScore"
FIA_API = "aclnnFusedInferAttentionScoreV3"
KERNEL_HEAD = ["Step Id", "Device_id", "Name", "Type", "Accelerator Core", "Start Time(us)", "Duration(us)",
               "Wait Time(us)", "Block Num", "Mix Block Num", "Input Shapes", "Input Data Types", "Input Formats",
               "Output Shapes", "Output Data Types", "Output Formats"]
SUMMARY_HEAD = ["Device_id", "Model ID", "Task ID", "Stream ID", "Op Name", "OP Type", "OP State", "Task Type",
                "Task Start Time(us)", "Task Duration(us)", "Task Wait Time(us)", "Block Num", "Mix Block Num",
                "HF32 Eligible", "Input Shapes", "Input Data Types", "Input Formats", "Output Shapes",
                "Output Data Types", "Output Formats"]
METRICS = ["aicore_time(us)", "aic_total_cycles", "aic_mac_ratio", "aic_mte2_ratio", "aiv_vec_ratio",
           "aiv_mte2_ratio", "memory_bound", "cube_utilization(%)"]
KV_BY_STEP = {1: 1024, 2: 1024, 3: 2048, 4: 2048, 5: 4096, 6: 4096}


def us(t: float) -> str:
    return f"{t:.3f}"


def build(slowdown_at_4096: float, seed: int) -> dict:
    """Rows and events of one run (times in us)."""
    rng = random.Random(seed)
    kernels, trace = [], []
    t = BASE_US
    meta = [("process_name", 1, 0, "Python"), ("thread_name", 1, 100, "Thread 100"),
            ("thread_name", 1, 101, "Thread 101"), ("process_name", 2, 0, "CANN"),
            ("thread_name", 2, 101, "Thread 101"), ("process_name", 3, 0, "Ascend Hardware"),
            ("thread_name", 3, 2, "Stream 2")]
    trace += [{"ph": "M", "name": n, "pid": pid, "tid": tid, "args": {"name": a}} for n, pid, tid, a in meta]
    for step, kv in KV_BY_STEP.items():
        step_start = t
        for layer in range(2):
            host = t + 20
            trace.append({"ph": "X", "name": "npu_fused_infer_attention_score", "pid": 1, "tid": 100,
                          "ts": us(host), "dur": 38.0, "cat": "cpu_op", "args": {"Sequence number": -1}})
            trace.append({"ph": "X", "name": f"Enqueue@{FIA_API}", "pid": 1, "tid": 100, "ts": us(host + 30),
                          "dur": 4.0, "cat": "enqueue", "args": {"correlation_id": step * 10 + layer}})
            bubble = 60 + rng.uniform(0, 40)  # the dequeue thread picks the task up late
            dq = host + 34 + bubble
            trace.append({"ph": "X", "name": f"Dequeue@{FIA_API}", "pid": 1, "tid": 101, "ts": us(dq),
                          "dur": 55.0, "cat": "dequeue", "args": {"correlation_id": step * 10 + layer}})
            trace.append({"ph": "X", "name": f"AscendCL@{FIA_API}", "pid": 2, "tid": 101, "ts": us(dq + 5),
                          "dur": 45.0, "args": {"Thread Id": 101, "Mode": "ACL_OP", "level": "acl"}})
            wait_start = dq + 52
            wait = 8 + rng.uniform(0, 20)
            trace.append({"ph": "X", "name": "EVENT_WAIT_SQE", "pid": 3, "tid": 2, "ts": us(wait_start),
                          "dur": round(wait, 3), "args": {"Task Type": "EVENT_WAIT_SQE", "Stream Id": 2}})
            start = wait_start + wait + 1.5
            duration = (9.0 + 0.011 * kv) * (1 + rng.uniform(-0.02, 0.02))
            if kv == 4096:
                duration *= 1 + slowdown_at_4096
            trace.append({"ph": "X", "name": FIA_NAME, "pid": 3, "tid": 2, "ts": us(start), "dur": round(duration, 3),
                          "args": {"Task Type": "MIX_AIC", "Stream Id": 2, "Block Num": 24}})
            trace.append({"ph": "s", "bp": "e", "name": "torch_to_npu", "id": us(start), "pid": 1, "tid": 100,
                          "ts": us(host), "cat": "async_npu"})
            trace.append({"ph": "f", "bp": "e", "name": "torch_to_npu", "id": us(start), "pid": 3, "tid": 2,
                          "ts": us(start), "cat": "async_npu"})
            shapes = f"1,32,1,128;1,8,{kv},128;1,8,{kv},128;;;1"
            kernels.append({"step": step, "name": FIA_NAME, "type": "FusedInferAttentionScore", "core": "MIX_AIC",
                            "start": start, "duration": duration, "wait": wait + 1.5, "block": 24, "mix": 48,
                            "in": shapes, "in_types": "FLOAT16;FLOAT16;FLOAT16;;;INT64",
                            "in_formats": "ND;ND;ND;;;ND", "out": "1,32,1,128;1,32,1,1",
                            "out_types": "FLOAT16;FLOAT", "out_formats": "ND;ND", "kv": kv})
            mm_start = start + duration + 3
            mm = 14 + rng.uniform(0, 1)
            trace.append({"ph": "X", "name": "MatMul", "pid": 3, "tid": 2, "ts": us(mm_start), "dur": round(mm, 3),
                          "args": {"Task Type": "AI_CORE", "Stream Id": 2}})
            kernels.append({"step": step, "name": "MatMul", "type": "MatMul", "core": "AI_CORE", "start": mm_start,
                            "duration": mm, "wait": 3.0, "block": 20, "mix": 0, "in": "1,4096;4096,4096",
                            "in_types": "FLOAT16;FLOAT16", "in_formats": "ND;ND", "out": "1,4096",
                            "out_types": "FLOAT16", "out_formats": "ND", "kv": 0})
            t = mm_start + mm + 30
        trace.append({"ph": "X", "name": f"ProfilerStep#{step}", "pid": 1, "tid": 100, "ts": us(step_start),
                      "dur": round(t - step_start, 3), "cat": "cpu_op", "args": {}})
        t += 200
    return {"kernels": kernels, "trace": trace}


def metrics(row: dict, rng: random.Random) -> list[str]:
    if row["type"] != "FusedInferAttentionScore":
        return [f"{row['duration'] * 0.9:.3f}", str(int(row["duration"] * 1800)), "0.71", "0.22", "0.05", "0.0",
                "0", "62.0"]
    mte2 = min(0.95, 0.55 + row["kv"] / 16384 + rng.uniform(0, 0.02))  # decode reads the cache: MTE2-bound
    return [f"{row['duration'] * 0.93:.3f}", str(int(row["duration"] * 1850)), f"{0.18 + rng.uniform(0, .02):.3f}",
            f"{mte2:.3f}", f"{0.21 + rng.uniform(0, .02):.3f}", f"{0.35 + rng.uniform(0, .02):.3f}", "1",
            f"{9 + rng.uniform(0, 2):.2f}"]


def write_run(folder: Path, run: dict, seed: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    out = folder / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True)
    (folder / "ILLUSTRATION.txt").write_text(NOTE + "\n")
    rng = random.Random(seed + 1)
    rows = [(r, metrics(r, rng)) for r in run["kernels"]]
    with open(out / "kernel_details.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(KERNEL_HEAD + METRICS)
        for r, m in rows:  # torch_npu writes times with a trailing tab (kept from op_summary): the reader strips it
            w.writerow([r["step"], 0, r["name"], r["type"], r["core"], us(r["start"]) + "\t", f"{r['duration']:.3f}",
                        f"{r['wait']:.3f}", r["block"], r["mix"], r["in"], r["in_types"], r["in_formats"], r["out"],
                        r["out_types"], r["out_formats"], *m])
    (out / "trace_view.json").write_text(json.dumps(run["trace"], separators=(",", ":")))
    stats: dict[str, list[float]] = {}
    for r, _ in rows:
        stats.setdefault(r["type"], []).append(r["duration"])
    total = sum(sum(v) for v in stats.values())
    with open(out / "op_statistic.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["OP Type", "Core Type", "Count", "Total Time(us)", "Min Time(us)", "Avg Time(us)",
                    "Max Time(us)", "Ratio(%)"])
        for op, d in stats.items():
            core = "MIX_AIC" if op == "FusedInferAttentionScore" else "AI_CORE"
            w.writerow([op, core, len(d), f"{sum(d):.3f}", f"{min(d):.3f}", f"{sum(d) / len(d):.3f}",
                        f"{max(d):.3f}", f"{100 * sum(d) / total:.2f}"])
    summary = folder / "PROF_000001_20251201000000000_ILLUSTRATION" / "mindstudio_profiler_output"
    summary.mkdir(parents=True)
    with open(summary / "op_summary_20251201000000.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(SUMMARY_HEAD + METRICS)
        for n, (r, m) in enumerate(rows):
            w.writerow([0, 4294967295, n + 10, 2, r["name"], r["type"], "dynamic", r["core"], us(r["start"]) + "\t",
                        f"{r['duration']:.3f}", f"{r['wait']:.3f}", r["block"], r["mix"], "NO", r["in"],
                        r["in_types"], r["in_formats"], r["out"], r["out_types"], r["out_formats"], *m])


def main(out: Path = HERE) -> None:
    write_run(out / "decode_baseline_ascend_pt", build(0.0, seed=7), seed=7)
    write_run(out / "decode_new_ascend_pt", build(0.12, seed=8), seed=8)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
