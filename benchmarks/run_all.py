"""Run the kit's benchmarks behind one command (``make bench``) and print one summary table.

    python benchmarks/run_all.py [--quick] [--no-explorer] [--no-notebooks] [--json PATH]

1. bench_reference: the reference FIA op vs torch SDPA (time ratios, peak memory), plus the reference's achieved
   FLOP/s as a fraction of this CPU's measured float32 matmul FLOP/s (fia_kit.roofline).
   bench_flex: flex eager and compiled next to the reference and SDPA on the same cases (``--no-flex`` skips it).
2. bench_explorer (if present): the explorer's redraw time after a control change, run as its own process.
3. notebooks/*.ipynb (if any): each executed top to bottom with nbclient in this environment's kernel, timed.

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bench_reference

from fia_kit.profiling import atomic_write_json
from fia_kit.roofline import measure_cpu_peaks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class SummaryRow:
    """One number of the summary: ``value`` in ``unit``; ``verdict`` PASS/MISS where a target exists."""

    source: str
    measure: str
    value: float
    unit: str
    target: str = "-"
    verdict: str = "-"


def reference_rows(quick: bool) -> list[SummaryRow]:
    repeats, warmup = (3, 1) if quick else (7, 2)
    rows, method = bench_reference.run(repeats=repeats, warmup=warmup)
    print(bench_reference.header(repeats, warmup))
    print(bench_reference.table(rows))
    if method:
        print(f"peak = extra resident memory of one call: {method}.")
    peaks = measure_cpu_peaks(repeats=3 if quick else 5)
    print(f"this CPU: {peaks.flops_per_s / 1e9:.1f} GFLOP/s float32 matmul, {peaks.bytes_per_s / 1e9:.1f} GB/s copy")
    out = []
    for r in rows:
        name = f"{r.case} {r.dtype}"
        out.append(SummaryRow("reference", f"{name}: FIA / SDPA time", r.ratio, "x", f"<= {r.target:g}",
                              "PASS" if r.time_ok else "MISS"))
        if r.fia_peak_bytes is not None:
            target = "-" if r.memory_target_bytes is None else f"< {r.memory_target_bytes / 2**20:.0f}"
            verdict = {None: "-", True: "PASS", False: "MISS"}[r.memory_ok]
            out.append(SummaryRow("reference", f"{name}: FIA peak memory", r.fia_peak_bytes / 2**20, "MiB", target,
                                  verdict))
        out.append(SummaryRow("reference", f"{name}: FIA FLOP/s / CPU matmul FLOP/s",
                              r.fia_flops_per_s / peaks.flops_per_s, "x"))
    return out


def flex_rows(quick: bool) -> list[SummaryRow]:
    import bench_flex

    rows = bench_flex.run(repeats=3 if quick else 5, warmup=1, compiled=not quick)
    print(bench_flex.table(rows))
    return [SummaryRow("flex", f"{r.case} {r.dtype}: {r.backend} / SDPA time", r.vs_sdpa, "x")
            for r in rows if r.backend.startswith("flex")]


def explorer_rows(quick: bool) -> list[SummaryRow]:
    script = HERE / "bench_explorer.py"
    if not script.exists():
        return []
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), "--repeats", "3" if quick else "10"], cwd=ROOT,
                          capture_output=True, text=True)
    print(done.stdout + done.stderr)
    if done.returncode:
        return [SummaryRow("explorer", "bench_explorer.py failed (see above)", done.returncode, "exit code",
                           verdict="MISS")]
    found = re.search(r"^all changes\s+([\d.]+)\s+([\d.]+).*?target median < ([\d.]+) ms", done.stdout, re.M)
    if not found:
        return [SummaryRow("explorer", "bench_explorer.py ran (summary line not found: see above)",
                           time.perf_counter() - start, "s")]
    median, p90, target = (float(x) for x in found.groups())
    return [SummaryRow("explorer", "redraw after a control change, median", median, "ms", f"< {target:g}",
                       "PASS" if median < target else "MISS"),
            SummaryRow("explorer", "redraw after a control change, p90", p90, "ms")]


def notebook_rows() -> list[SummaryRow]:
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        return []
    import nbformat
    from nbclient import NotebookClient

    rows, total = [], 0.0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        status = "PASS"
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except Exception as exc:  # a failing cell: report it, keep timing the others
            status = "MISS"
            print(f"{path.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        seconds = time.perf_counter() - start
        total += seconds
        rows.append(SummaryRow("notebooks", f"{path.name} runs", seconds, "s", "runs", status))
    rows.append(SummaryRow("notebooks", f"all {len(paths)} notebooks", total, "s"))
    return rows


def summary_table(rows: list[SummaryRow]) -> str:
    head = ["source", "measure", "value", "unit", "target", "verdict"]
    body = [[r.source, r.measure, f"{r.value:.3g}", r.unit, r.target, r.verdict] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier numbers)")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--no-explorer", action="store_true")
    parser.add_argument("--no-notebooks", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the summary rows as JSON (atomically)")
    args = parser.parse_args(argv)
    print("== reference vs SDPA ==")
    rows = reference_rows(args.quick)
    if not args.no_flex:
        print("== flex vs reference vs SDPA ==")
        rows += flex_rows(args.quick)
    if not args.no_explorer:
        print("== explorer ==")
        rows += explorer_rows(args.quick)
    if not args.no_notebooks:
        print("== notebooks ==")
        rows += notebook_rows()
    print("== summary ==")
    print(summary_table(rows))
    if args.json:
        atomic_write_json(args.json, [vars(r) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
