"""Time the kit's reference FIA op against torch SDPA on the same inputs, in one process (issue 2).

    python benchmarks/bench_reference.py [--repeats 7] [--warmup 2] [--no-memory] [--json PATH]

Cases (bf16 and fp16 inputs each):
  prefill  BNSD, B=1, N=8, S=2048, D=128, causal. FIA: sparse_mode=3 with the compressed 2048x2048 mask;
           SDPA: is_causal=True (same band, since S_q == S_kv). Targets: time <= 1.25x SDPA, peak memory < 300 MiB.
  decode   B=16, N_q=32, N_kv=8, KV=4096, D=128, one query token. FIA: rank-4 paged cache (num_blocks, N_kv,
           block_size=128, D) read through a shuffled block_table; SDPA: the same keys/values held contiguously
           (B, N_kv, KV, D) with enable_gqa=True. Target: time <= 1.3x SDPA. Also the memory-bandwidth bound:
           bytes of K+V over this machine's copy bandwidth (read + written bytes per second of a large copy),
           measured in this process (``fia_kit.roofline.measure_cpu_peaks``).

Timing: ``warmup`` untimed calls of each, then ``repeats`` rounds that time FIA and SDPA alternately
(time.perf_counter around one call), so slow drifts of the machine hit both; the median of each is reported.
Both run on the same input tensors; SDPA computes in the input dtype (bf16/fp16, its CPU flash kernel accumulates
in float32), the reference upcasts to float32 (the op's high-precision path) and casts the output back (P·V in
bf16/fp16 only with FIA_KIT_HALF_PV=on, or =auto where the CPU multiplies it in hardware; docs section 3.6).

Peak memory: torch's CPU allocator hands large blocks straight to the OS and keeps no statistics, and tracemalloc
does not see it, so each measurement runs in a fresh child process: the child builds the inputs, runs one warm-up
call, resets the kernel's peak-RSS mark (writes 5 to /proc/self/clear_refs, Linux), reads VmRSS, runs the call
once and reads VmHWM. "peak" = VmHWM - VmRSS before the call: the memory the call itself made resident (its
temporaries and its output), without torch's import and the inputs. glibc keeps freed heap memory resident and
would hand it back unseen, so the child runs with MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 128 KiB:
every buffer above 128 KiB is its own mapping, returned to the OS when freed, and the peak counts it. Smaller
buffers may still be reused unseen (a lower bound, off by at most a few MiB). The measurement is
``fia_kit.profiling.peak_memory``; without clear_refs the peak is reported as unmeasurable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fia_kit import cpu_features
from fia_kit.call import FIACall, parse_call
from fia_kit.kernel import HALF_PV_ENV
from fia_kit.masks import compressed_causal_mask
from fia_kit.profiling import atomic_write_json, peak_memory
from fia_kit.reference import npu_fused_infer_attention_score
from fia_kit.roofline import call_cost, measure_cpu_peaks

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CASES = ("prefill", "decode")
TIME_TARGETS = {"prefill": 1.25, "decode": 1.3}  # FIA median time / SDPA median time, at most
MEMORY_TARGETS = {"prefill": 300 * 2**20}  # bytes of FIA peak, under
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def prefill_case(dtype: torch.dtype, seed: int = 0) -> tuple[FIACall, Callable[[], Any]]:
    """(FIA call, SDPA callable) for the causal prefill case, sharing (1, 8, 2048, 128) q/k/v."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 8, 2048, 128, generator=g).to(dtype) for _ in range(3))
    call = parse_call("v1", q, k, v, dict(num_heads=8, input_layout="BNSD", atten_mask=compressed_causal_mask(),
                                          sparse_mode=3))
    return call, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def decode_case(dtype: torch.dtype, seed: int = 0) -> tuple[FIACall, Callable[[], Any]]:
    """(FIA call, SDPA callable) for paged decode: q (16, 32, 1, 128); the same K/V paged for FIA (rank-4 cache,
    shuffled block_table) and contiguous (16, 8, 4096, 128) for SDPA."""
    batch, n_q, n_kv, kv_len, block_size, dim = 16, 32, 8, 4096, 128, 128
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, 1, dim, generator=g).to(dtype)
    k, v = (torch.randn(batch, n_kv, kv_len, dim, generator=g).to(dtype) for _ in range(2))
    per_seq = kv_len // block_size
    block_table = torch.randperm(batch * per_seq, generator=g).view(batch, per_seq).to(torch.int32)
    k_cache, v_cache = (torch.empty(batch * per_seq, n_kv, block_size, dim, dtype=dtype) for _ in range(2))
    for cache, dense in ((k_cache, k), (v_cache, v)):
        # block i of sequence b holds tokens [i*bs, (i+1)*bs) of that sequence, stored at block_table[b, i]
        blocks = dense.view(batch, n_kv, per_seq, block_size, dim).permute(0, 2, 1, 3, 4)
        cache[block_table.view(-1).long()] = blocks.reshape(batch * per_seq, n_kv, block_size, dim)
    call = parse_call("v1", q, k_cache, v_cache, dict(num_heads=n_q, num_key_value_heads=n_kv, input_layout="BNSD",
                                                      block_table=block_table, block_size=block_size,
                                                      actual_seq_lengths_kv=[kv_len] * batch))
    return call, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


CASE_BUILDERS = {"prefill": prefill_case, "decode": decode_case}


def runners(case: str, dtype: str) -> tuple[FIACall, Callable[[], Any], Callable[[], Any]]:
    """(call, fia, sdpa): zero-argument callables of the reference op and SDPA on the same inputs."""
    call, sdpa = CASE_BUILDERS[case](DTYPES[dtype])
    keywords = call.keywords()
    return call, (lambda: npu_fused_infer_attention_score(call.query, call.key, call.value, **keywords)), sdpa


@dataclass
class BenchRow:
    """One case x dtype. Times in seconds, memory in bytes (None when not measured)."""

    case: str
    dtype: str
    fia_s: float
    sdpa_s: float
    ratio: float
    target: float
    fia_peak_bytes: int | None
    sdpa_peak_bytes: int | None
    memory_target_bytes: int | None
    flops: int  # of the call, fia_kit.roofline (in-band pairs only)
    bound_s: float | None = None  # decode: K+V bytes / measured copy bandwidth (the memory-bandwidth bound)

    @property
    def fia_flops_per_s(self) -> float:
        return self.flops / self.fia_s

    @property
    def time_ok(self) -> bool:
        return self.ratio <= self.target

    @property
    def memory_ok(self) -> bool | None:
        if self.memory_target_bytes is None or self.fia_peak_bytes is None:
            return None
        return self.fia_peak_bytes < self.memory_target_bytes


def time_pair(fia: Callable[[], Any], sdpa: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of fia and sdpa, timed alternately after ``warmup`` calls of each."""
    for _ in range(warmup):
        fia()
        sdpa()
    fia_times, sdpa_times = [], []
    for _ in range(repeats):
        for fn, times in ((fia, fia_times), (sdpa, sdpa_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(fia_times), statistics.median(sdpa_times)


def child_peak_bytes(case: str, dtype: str, impl: str) -> dict[str, Any]:
    """Run in the fresh child: build the inputs, then measure the peak RSS one call adds (see module docstring)."""
    _, fia, sdpa = runners(case, dtype)
    fn = fia if impl == "fia" else sdpa
    fn()  # warm-up: lazy initialisation (thread pools, kernels' first-use buffers) is not the call's memory
    peak, method = peak_memory(fn, torch.device("cpu"))
    return {"peak_bytes": peak, "method": method or "unmeasurable here (no /proc/self/clear_refs)"}


def measure_peak(case: str, dtype: str, impl: str) -> tuple[int, str]:
    """Peak bytes one call of ``impl`` adds, measured in a fresh child process, and the method used."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **CHILD_MALLOC_ENV}
    out = subprocess.run([sys.executable, __file__, "--memory-child", case, dtype, impl], check=True,
                         capture_output=True, text=True, env=env)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return int(found["peak_bytes"]), str(found["method"])


def run(cases: tuple[str, ...] = CASES, dtypes: tuple[str, ...] = tuple(DTYPES), warmup: int = 2,
        repeats: int = 7, memory: bool = True) -> tuple[list[BenchRow], str | None]:
    """Benchmark each case x dtype; returns the rows and the memory method (None without memory)."""
    rows, method = [], None
    copy_bytes_per_s = measure_cpu_peaks(repeats=3).bytes_per_s if "decode" in cases else None
    for case in cases:
        for dtype in dtypes:
            call, fia, sdpa = runners(case, dtype)
            fia_s, sdpa_s = time_pair(fia, sdpa, warmup, repeats)
            flops = call_cost(call).flops
            bound = kv_bytes(call) / copy_bytes_per_s if case == "decode" and copy_bytes_per_s else None
            del call, fia, sdpa
            fia_peak = sdpa_peak = None
            if memory:
                fia_peak, method = measure_peak(case, dtype, "fia")
                sdpa_peak, _ = measure_peak(case, dtype, "sdpa")
            rows.append(BenchRow(case, dtype, fia_s, sdpa_s, fia_s / sdpa_s, TIME_TARGETS[case], fia_peak,
                                 sdpa_peak, MEMORY_TARGETS.get(case), flops, bound))
    return rows, method


def kv_bytes(call: FIACall) -> int:
    """Bytes of the keys and values the call reads: its actual KV lengths x N_kv x D x element size, K and V."""
    lengths = call.options["actual_seq_lengths_kv"]
    n_kv = call.options.get("num_key_value_heads") or call.options["num_heads"]
    per_token = n_kv * (call.key.shape[-1] * call.key.element_size() + call.value.shape[-1] * call.value.element_size())
    return int(sum(lengths)) * per_token


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def table(rows: list[BenchRow]) -> str:
    """Text table: times, ratio vs target, PASS/MISS for time and (where targeted) memory."""
    head = (f"{'case':<8} {'dtype':<5} {'FIA ms':>9} {'SDPA ms':>9} {'ratio':>6} {'target':>7} {'time':>5}  "
            f"{'FIA peak':>10} {'SDPA peak':>10} {'mem target':>10} {'mem':>4} {'FIA GFLOP/s':>11}  "
            "bandwidth bound (FIA / bound)")
    lines = [head, "-" * len(head)]
    for r in rows:
        mem = {None: "-", True: "PASS", False: "MISS"}[r.memory_ok]
        lines.append(f"{r.case:<8} {r.dtype:<5} {r.fia_s * 1e3:>9.1f} {r.sdpa_s * 1e3:>9.1f} {r.ratio:>6.2f} "
                     f"{'<= ' + format(r.target, 'g'):>7} {'PASS' if r.time_ok else 'MISS':>5}  "
                     f"{_mib(r.fia_peak_bytes):>10} {_mib(r.sdpa_peak_bytes):>10} "
                     f"{_mib(r.memory_target_bytes):>10} {mem:>4} {r.fia_flops_per_s / 1e9:>11.1f}  "
                     + ("-" if r.bound_s is None else f"{r.bound_s * 1e3:.1f} ms ({r.fia_s / r.bound_s:.1f}x)"))
    return "\n".join(lines)


def cpu_description() -> str:
    """This CPU's model and the vector/matrix extensions that decide SDPA's and the reference's speed (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "CPU unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    have = [name for name, flag in (("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512", "avx512f"),
                                    ("AVX-512 BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if flag in flags]
    lacks = [name for name, flag in (("AVX-512", "avx512f"), ("AMX", "amx_bf16")) if flag not in flags]
    return f"{model} ({', '.join(have) or 'no AVX2'}" + (f"; no {', no '.join(lacks)}" if lacks else "") + ")"


def header(repeats: int, warmup: int) -> str:
    """What the numbers were measured with, including the machine's load (other processes skew CPU ratios)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    half = [name for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
            if cpu_features.multiplies_in_hardware(dtype)]
    capable = f"this CPU multiplies {'/'.join(half)} in hardware" if half else "no AMX / AVX-512 BF16/FP16 here"
    pv = f"{HALF_PV_ENV}={os.environ.get(HALF_PV_ENV, '')!r} (off by default; auto / on; {capable})"
    return (f"{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads on "
            f"{os.cpu_count()} CPUs, load average {load}; the reference's P·V of half inputs: {pv}; median of "
            f"{repeats} alternating runs after {warmup} warm-up; ratio = FIA / SDPA (lower is better)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 resists a busy machine")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-call peak-memory subprocesses")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--memory-child", nargs=3, metavar=("CASE", "DTYPE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(child_peak_bytes(*args.memory_child)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, method = run(tuple(args.cases), tuple(args.dtypes), args.warmup, args.repeats, not args.no_memory)
    print(header(args.repeats, args.warmup))
    print("SDPA computes in the input dtype (its CPU flash kernel accumulates in float32); "
          "the reference computes Q K^T and the softmax in float32 (P·V as the header says).")
    print(table(rows))
    if method:
        print(f"peak = extra resident memory of one call: {method}.")
    if args.json:
        atomic_write_json(args.json, [asdict(r) | {"time_ok": r.time_ok, "memory_ok": r.memory_ok}
                                      for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
