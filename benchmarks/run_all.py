"""Run the kit's benchmarks behind one command (``make bench``) and print one summary table.

    python benchmarks/run_all.py [--quick] [--no-explorer] [--no-notebooks] [--json PATH]

    python benchmarks/run_all.py --threads 1     # torch threads (default: torch's); 1 resists a busy machine

1. bench_reference: the reference FIA op vs torch SDPA (time ratios, peak memory), plus the reference's achieved
   FLOP/s as a fraction of this CPU's measured float32 matmul FLOP/s (fia_kit.roofline).
   bench_flex: flex eager and compiled next to the reference and SDPA on the same cases (``--no-flex`` skips it;
   ``--quick`` skips compiled flex).
   Then one side-by-side table: per case and dtype, SDPA, the reference, flex eager and flex compiled (ms and
   x SDPA), the reference's target and peak memory, and for decode the memory-bandwidth bound (bytes of K and V
   over this machine's copy bandwidth) with the reference's distance to it.
2. bench_explorer (if present): the explorer's redraw time after a control change, run as its own process.
3. notebooks/*.ipynb (if any): each executed top to bottom with nbclient in this environment's kernel, timed.

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_reference
import torch

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
    side_by_side: bool = False  # also in the side-by-side table, so not printed again in the summary


def reference_rows(rows: list[bench_reference.BenchRow], quick: bool) -> list[SummaryRow]:
    peaks = measure_cpu_peaks(repeats=3 if quick else 5)
    print(f"this CPU: {peaks.flops_per_s / 1e9:.1f} GFLOP/s float32 matmul, {peaks.bytes_per_s / 1e9:.1f} GB/s copy")
    out = []
    for r in rows:
        name = f"{r.case} {r.dtype}"
        out.append(SummaryRow("reference", f"{name}: FIA / SDPA time", r.ratio, "x", f"<= {r.target:g}",
                              "PASS" if r.time_ok else "MISS", side_by_side=True))
        if r.fia_peak_bytes is not None:
            target = "-" if r.memory_target_bytes is None else f"< {r.memory_target_bytes / 2**20:.0f}"
            verdict = {None: "-", True: "PASS", False: "MISS"}[r.memory_ok]
            out.append(SummaryRow("reference", f"{name}: FIA peak memory", r.fia_peak_bytes / 2**20, "MiB", target,
                                  verdict, side_by_side=True))
        out.append(SummaryRow("reference", f"{name}: FIA FLOP/s / CPU matmul FLOP/s",
                              r.fia_flops_per_s / peaks.flops_per_s, "x"))
        if r.bound_s is not None:
            out.append(SummaryRow("reference", f"{name}: FIA / K+V bandwidth bound time", r.fia_s / r.bound_s, "x",
                                  side_by_side=True))
    return out


def flex_summary(rows: list[Any]) -> list[SummaryRow]:
    return [SummaryRow("flex", f"{r.case} {r.dtype}: {r.backend} / SDPA time", r.vs_sdpa, "x", side_by_side=True)
            for r in rows if r.backend.startswith("flex")]


def _peak_cell(r: bench_reference.BenchRow) -> str:
    if r.fia_peak_bytes is None:
        return "-"
    cell = f"{r.fia_peak_bytes / 2**20:.0f} MiB"
    if r.memory_target_bytes is None:
        return cell
    return f"{cell} (< {r.memory_target_bytes / 2**20:.0f}: {'PASS' if r.memory_ok else 'MISS'})"


def side_by_side(reference: list[bench_reference.BenchRow], flex_rows: list[Any], compiled: bool) -> str:
    """One row per case and dtype: SDPA, the reference, flex eager and compiled (ms and x SDPA), the reference's
    target and peak memory (with its target), and for decode the K+V bandwidth bound and the reference's time over it.

    The reference's and SDPA's times are bench_reference's (timed alternately); flex's are bench_flex's, as a
    ratio to the SDPA of its own run (each ratio's peer is timed in the same process, minutes apart).
    """
    flex = {(r.case, r.dtype, r.backend): r for r in flex_rows}
    missing = "not run (--no-flex)" if not flex_rows else "-"

    def flex_cell(r: bench_reference.BenchRow, backend: str) -> str:
        if backend == "flex compiled" and flex_rows and not compiled:
            return "skipped (--quick)"
        found = flex.get((r.case, r.dtype, backend))
        return missing if found is None else f"{found.median_s * 1e3:.0f} ({found.vs_sdpa:.1f}x)"

    head = ["case", "dtype", "SDPA ms", "reference ms", "x SDPA", "target", "verdict", "ref peak",
            "flex eager ms (x SDPA)", "flex compiled ms (x SDPA)", "K+V bound ms", "ref / bound"]
    body = [[r.case, r.dtype, f"{r.sdpa_s * 1e3:.1f}", f"{r.fia_s * 1e3:.1f}", f"{r.ratio:.2f}",
             f"<= {r.target:g}", "PASS" if r.time_ok else "MISS",
             _peak_cell(r),
             flex_cell(r, "flex eager"), flex_cell(r, "flex compiled"),
             "-" if r.bound_s is None else f"{r.bound_s * 1e3:.1f}",
             "-" if r.bound_s is None else f"{r.fia_s / r.bound_s:.1f}x"] for r in reference]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [head, *body])


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
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 resists a busy machine")
    parser.add_argument("--json", type=Path, help="also write the summary rows as JSON (atomically)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the explorer's process and the notebooks' kernels
    print("== reference vs SDPA ==")
    repeats, warmup = (3, 1) if args.quick else (7, 2)
    reference, method = bench_reference.run(repeats=repeats, warmup=warmup)
    print(bench_reference.header(repeats, warmup))
    print(bench_reference.table(reference))
    if method:
        print(f"peak = extra resident memory of one call: {method}.")
    rows = reference_rows(reference, args.quick)
    flex_rows: list[Any] = []
    if not args.no_flex:
        import bench_flex

        print("== flex vs reference vs SDPA ==")
        flex_rows = bench_flex.run(repeats=3 if args.quick else 5, warmup=1, compiled=not args.quick)
        print(bench_flex.table(flex_rows))
        rows += flex_summary(flex_rows)
    print("== side by side (times: medians; x SDPA: ratio to SDPA in the same process) ==")
    print(side_by_side(reference, flex_rows, compiled=not args.quick))
    if not args.no_explorer:
        print("== explorer ==")
        rows += explorer_rows(args.quick)
    if not args.no_notebooks:
        print("== notebooks ==")
        rows += notebook_rows()
    print("== summary (the rest; --json writes every row, those of the side-by-side table too) ==")
    print(summary_table([r for r in rows if not r.side_by_side]))
    if args.json:
        atomic_write_json(args.json, [vars(r) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
