"""Time the flex backend (eager and compiled) next to the reference and torch SDPA, on the same inputs, in one process.

    python benchmarks/bench_flex.py [--repeats 5] [--warmup 1] [--no-compiled] [--device cpu|cuda] [--json PATH]

Cases (float32 and bfloat16 inputs each; sizes of issue 15):
  prefill  BNSD (1, 8, 2048, 128), sparse_mode=3 with the compressed mask; SDPA: is_causal=True.
  decode   q (16, 32, 1, 128), N_kv = 8, KV = 4096: rank-4 paged cache (blocks of 128) through a shuffled
           block_table; SDPA: the same K/V contiguous (16, 8, 4096, 128) with enable_gqa=True.

Rows: backend "sdpa", "reference", "flex eager", "flex compiled"; "first s" is the first call (compile time for
compiled flex), "median ms" the median of ``repeats`` timed calls after ``warmup``, "x SDPA" the ratio of medians.
flex computes in float32 (the op's high-precision path) unless ``--native`` (its inputs' dtype, e.g. bf16 on CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fia_kit import flex, plan, reference
from fia_kit.masks import compressed_causal_mask
from fia_kit.planning import Plan
from fia_kit.profiling import atomic_write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prefill_case(dtype: torch.dtype, device: str, batch: int = 1, heads: int = 8, seq: int = 2048,
                 dim: int = 128) -> tuple[Plan, Callable[[], Any]]:
    """(plan, SDPA callable): causal prefill on shared (B, N, S, D) q/k/v."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    p = plan("v1", q, k, v, num_heads=heads, input_layout="BNSD", scale=dim ** -0.5, sparse_mode=3,
             atten_mask=compressed_causal_mask(device=device))
    return p, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dim ** -0.5)


def decode_case(dtype: torch.dtype, device: str, batch: int = 16, heads: int = 32, kv_heads: int = 8,
                kv_len: int = 4096, dim: int = 128, block_size: int = 128) -> tuple[Plan, Callable[[], Any]]:
    """(plan, SDPA callable): paged decode (rank-4 cache, shuffled table) and SDPA on the contiguous K/V."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, 1, dim, generator=g).to(device=device, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, kv_len, dim, generator=g).to(device=device, dtype=dtype) for _ in "kv")
    per_seq = -(-kv_len // block_size)
    table = torch.randperm(batch * per_seq, generator=g).view(batch, per_seq).to(torch.int32)
    caches = []
    for dense in (k, v):
        cache = torch.zeros(batch * per_seq, kv_heads, block_size, dim, dtype=dtype, device=device)
        padded = F.pad(dense, (0, 0, 0, per_seq * block_size - kv_len))
        blocks = padded.view(batch, kv_heads, per_seq, block_size, dim).permute(0, 2, 1, 3, 4)
        cache[table.view(-1).long().to(device)] = blocks.reshape(-1, kv_heads, block_size, dim)
        caches.append(cache)
    p = plan("v1", q, caches[0], caches[1], num_heads=heads, num_key_value_heads=kv_heads, input_layout="BNSD",
             scale=dim ** -0.5, block_table=table.to(device), block_size=block_size,
             actual_seq_lengths_kv=[kv_len] * batch)
    return p, lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=dim ** -0.5)


CASES = {"prefill": prefill_case, "decode": decode_case}


@dataclass
class FlexRow:
    case: str
    dtype: str
    backend: str
    first_s: float
    median_s: float
    vs_sdpa: float


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> tuple[float, float]:
    """(first-call seconds, median seconds of ``repeats`` calls after ``warmup`` more)."""
    def once() -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start
    first = once()
    for _ in range(warmup):
        once()
    return first, statistics.median(once() for _ in range(repeats))


def backends(p: Plan, sdpa: Callable[[], Any], compiled: bool, native: bool) -> dict[str, Callable[[], Any]]:
    compute = p.query.dtype if native else None
    keywords = p.keywords()
    fns = {"sdpa": sdpa,
           "reference": lambda: reference.npu_fused_infer_attention_score(p.call.query,
                                                                         p.call.key, p.call.value, **keywords),
           "flex eager": lambda: flex.run_plan(p, mode="eager", compute_dtype=compute)}
    if compiled:
        fns["flex compiled"] = lambda: flex.run_plan(p, mode="compiled", compute_dtype=compute)
    return fns


def run(repeats: int = 5, warmup: int = 1, compiled: bool = True, device: str = "cpu", native: bool = False,
        cases: tuple[str, ...] = tuple(CASES), dtypes: tuple[str, ...] = tuple(DTYPES),
        sizes: dict[str, Any] | None = None) -> list[FlexRow]:
    rows = []
    for case in cases:
        for dtype in dtypes:
            p, sdpa = CASES[case](DTYPES[dtype], device, **(sizes or {}).get(case, {}))
            times = {name: timed(fn, device, warmup, repeats)
                     for name, fn in backends(p, sdpa, compiled, native).items()}
            base = times["sdpa"][1]
            rows += [FlexRow(case, dtype, name, first, median, median / base)
                     for name, (first, median) in times.items()]
    return rows


def table(rows: list[FlexRow]) -> str:
    head = ["case", "dtype", "backend", "first s", "median ms", "x SDPA"]
    body = [[r.case, r.dtype, r.backend, f"{r.first_s:.2f}", f"{r.median_s * 1e3:.1f}", f"{r.vs_sdpa:.2f}"]
            for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-compiled", action="store_true", help="skip compiled flex (CPU compiles ~10-30 s)")
    parser.add_argument("--native", action="store_true", help="flex computes in the inputs' dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = run(args.repeats, args.warmup, not args.no_compiled, args.device, args.native)
    print(f"flex vs reference vs SDPA on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table(rows))
    if args.json:
        atomic_write_json(args.json, [asdict(r) for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
