"""A/B of the reference kernel: this checkout's ``fia_kit/kernel.py`` against the one at a git revision, in one
process, on bench_reference's cases, next to SDPA and the K+V copy bound (issue 24).

    python benchmarks/ab_kernel.py --base 1e112d2 [--cases decode] [--dtypes bf16 fp16] [--repeats 7] [--threads 1]

The base kernel is read with ``git show REV:fia_kit/kernel.py`` and loaded as a second module that shares every
other module (planning, paged, quant, ...) with this checkout, so a revision whose kernel needs other modules'
older versions cannot be compared this way. Both kernels run ``run_plan`` on the same plan (the parse and
validation are outside the timing). Each round times base, new, SDPA and a 256 MiB copy in a shuffled order; the
ratios are per round, reported as median [min-max], so a machine shared with other work (the dev container) skews
both sides alike. Also prints max |new - base| of the outputs (summation-order differences show as one unit in the
last place of bf16/fp16).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from fia_kit import kernel
from fia_kit.planning import build_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reference as br  # noqa: E402

COPY_BYTES = 256 * 2**20


def load_kernel(revision: str) -> ModuleType:
    """fia_kit/kernel.py at ``revision`` as the module ``fia_kit.kernel_at_<rev>`` (relative imports: this fia_kit)."""
    source = subprocess.run(["git", "show", f"{revision}:fia_kit/kernel.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent).stdout
    name = f"fia_kit.kernel_at_{revision.replace('-', '_').replace('/', '_').replace('.', '_')}"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(name, handle.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    os.unlink(handle.name)
    return module


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.2f} [{ordered[0]:.2f}-{ordered[-1]:.2f}]"


def compare(base: ModuleType, case: str, dtype: str, repeats: int) -> str:
    """One line: median times, per-round ratios new/base, each/SDPA and (decode) each/K+V bound."""
    call, _, sdpa = br.runners(case, dtype)
    plan = build_plan(call)
    src = torch.empty(COPY_BYTES, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    runs: dict[str, Callable[[], Any]] = {"base": lambda: base.run_plan(plan), "new": lambda: kernel.run_plan(plan),
                                          "sdpa": sdpa, "copy": lambda: dst.copy_(src)}
    differs = float((base.run_plan(plan).attention_out.double() - kernel.run_plan(plan).attention_out.double())
                    .abs().max())
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        order = list(runs)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    per = {name: [a / b for a, b in zip(times[name], times["sdpa"], strict=True)] for name in ("base", "new")}
    line = (f"{case:<7} {dtype:<4}  base {med['base']:7.1f}  new {med['new']:7.1f}  SDPA {med['sdpa']:7.1f} ms | "
            f"new/base {spread([a / b for a, b in zip(times['new'], times['base'], strict=True)])} | "
            f"base/SDPA {spread(per['base'])}  new/SDPA {spread(per['new'])}")
    if case == "decode":
        bound = [br.kv_bytes(call) / (2 * COPY_BYTES / c) for c in times["copy"]]
        over = {name: spread([a / b for a, b in zip(times[name], bound, strict=True)]) for name in ("base", "new")}
        line += f" | bound {statistics.median(bound) * 1e3:.1f} ms: base {over['base']}  new {over['new']}"
    return line + f" | max|new-base| {differs:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision of the base kernel.py")
    parser.add_argument("--cases", nargs="+", choices=br.CASES, default=list(br.CASES))
    parser.add_argument("--dtypes", nargs="+", choices=list(br.DTYPES), default=list(br.DTYPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_kernel(args.base)
    print(f"{br.header(args.repeats, 1)}\nbase kernel: {args.base}; new: this checkout")
    for case in args.cases:
        for dtype in args.dtypes:
            print(compare(base, case, dtype, args.repeats), f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
