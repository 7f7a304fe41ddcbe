"""One prepared GPU check: flex vs the reference (accuracy) and vs SDPA (speed) over a sweep of sizes.

    python benchmarks/cuda_check.py [--quick] [--json PATH]      # writes $OUT/cuda_check.json when $OUT is set

On a CUDA machine: for each case (causal prefill, paged decode, GQA, pse, masks, sinks) and dtype it runs the
reference, flex (compiled, float32 compute and the inputs' own dtype) and SDPA where SDPA can express the call, on
the GPU, and reports max |flex - reference| over computed rows (per-dtype tolerance verdict) and the median
times. Without CUDA it runs the same sweep at small sizes on the CPU with eager flex (a check of the script itself,
not of a GPU), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bench_flex
import torch

from fia_kit import flex, plan, reference
from fia_kit.backends import TOLERANCES
from fia_kit.masks import compressed_causal_mask

GPU_SIZES = {"prefill": [dict(seq=512), dict(seq=2048), dict(seq=4096)],
             "decode": [dict(batch=16, kv_len=1024), dict(batch=16, kv_len=4096), dict(batch=64, kv_len=8192)]}
CPU_SIZES = {"prefill": [dict(seq=64, heads=2, dim=32)],
             "decode": [dict(batch=2, heads=4, kv_heads=2, kv_len=160, dim=32, block_size=16)]}


@dataclass
class CheckRow:
    case: str
    dtype: str
    size: str
    max_abs: float
    within_tolerance: bool
    sdpa_ms: float | None
    reference_ms: float
    flex_ms: float
    flex_native_ms: float | None


def feature_calls(device: str, dtype: torch.dtype, small: bool):
    """(name, plan, sdpa or None) for feature cases SDPA cannot all express: pse, user mask, band, sink."""
    g = torch.Generator().manual_seed(1)
    b, n, s, d = (2, 4, 96, 64) if small else (4, 16, 1024, 128)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    q, k, v = t(b, n, s, d), t(b, n // 2, s, d), t(b, n // 2, s, d)
    common = dict(num_heads=n, num_key_value_heads=n // 2, input_layout="BNSD", scale=d ** -0.5)
    mask = (torch.rand(b, 1, s, s, generator=g) < 0.3).to(device)
    yield "pse+mask", plan("v1", q, k, v, **common, pse_shift=t(b, n, s, s), atten_mask=mask), None
    yield "band", plan("v1", q, k, v, **common, sparse_mode=4, pre_tokens=s // 4, next_tokens=0,
                       atten_mask=compressed_causal_mask(device=device), actual_seq_lengths_kv=[s - 7] + [s] * (b - 1)), None
    tq = t(b * s // 2, n, d)
    tk, tv = t(b * s // 2, n // 2, d), t(b * s // 2, n // 2, d)
    cum = [s // 2 * (i + 1) for i in range(b)]
    yield "sink", plan("v2", tq, tk, tv, num_query_heads=n, num_key_value_heads=n // 2, input_layout="TND",
                       softmax_scale=d ** -0.5, sparse_mode=3, atten_mask=compressed_causal_mask(device=device),
                       actual_seq_qlen=cum, actual_seq_kvlen=cum, return_softmax_lse=True,
                       learnable_sink=t(n).to(torch.bfloat16 if dtype != torch.float32 else dtype)), None


def _reference_op(p):
    return reference.npu_fused_infer_attention_score if p.form == "v1" else \
        reference.npu_fused_infer_attention_score_v2


def max_error(p, out: torch.Tensor) -> tuple[float, bool]:
    ref_out, _ = _reference_op(p)(p.call.query, p.call.key, p.call.value, **p.keywords())
    diff = (out.double() - ref_out.double()).abs()
    atol, rtol = TOLERANCES[ref_out.dtype]
    return float(diff.max()) if diff.numel() else 0.0, bool((diff <= atol + rtol * ref_out.double().abs()).all())


def check(p, sdpa, device: str, repeats: int, compiled: bool) -> tuple[float, bool, float | None, float, float,
                                                                           float | None]:
    mode = "compiled" if compiled else "eager"
    out, _ = flex.run_plan(p, mode=mode)
    err, ok = max_error(p, out)
    form_op = _reference_op(p)
    keywords = p.keywords()

    def ms(fn) -> float:
        return bench_flex.timed(fn, device, 1, repeats)[1] * 1e3
    ref_ms = ms(lambda: form_op(p.call.query, p.call.key, p.call.value, **keywords))
    flex_ms = ms(lambda: flex.run_plan(p, mode=mode))
    native = None
    if compiled and p.query.dtype != torch.float32:
        native = ms(lambda: flex.run_plan(p, mode=mode, compute_dtype=p.query.dtype))
    return err, ok, (ms(sdpa) if sdpa is not None else None), ref_ms, flex_ms, native


def sweep(device: str, quick: bool) -> list[CheckRow]:
    gpu = device.startswith("cuda")
    sizes = GPU_SIZES if gpu else CPU_SIZES
    dtypes = ("fp32", "bf16") if gpu else ("fp32",)
    repeats = 3 if quick or not gpu else 10
    rows = []
    for dtype in dtypes:
        for case, grid in sizes.items():
            for size in grid[:1] if quick else grid:
                p, sdpa = bench_flex.CASES[case](bench_flex.DTYPES[dtype], device, **size)
                rows.append(CheckRow(case, dtype, json.dumps(size), *check(p, sdpa, device, repeats, gpu)))
        for name, p, sdpa in feature_calls(device, bench_flex.DTYPES[dtype], not gpu or quick):
            rows.append(CheckRow(name, dtype, "-", *check(p, sdpa, device, repeats, gpu)))
    return rows


def table(rows: list[CheckRow]) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    head = ["case", "dtype", "size", "max|flex-ref|", "tol", "sdpa ms", "ref ms", "flex ms", "flex native ms"]
    body = [[r.case, r.dtype, r.size, fmt(r.max_abs), "pass" if r.within_tolerance else "FAIL", fmt(r.sdpa_ms),
             fmt(r.reference_ms), fmt(r.flex_ms), fmt(r.flex_native_ms)] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first size of each case only")
    parser.add_argument("--json", type=Path, help="where to write the rows (default $OUT/cuda_check.json)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    rows = sweep(device, args.quick)
    name = torch.cuda.get_device_name() if device == "cuda" else "no CUDA device: CPU run of the script, eager flex"
    print(f"{name}; torch {torch.__version__}; {time.perf_counter() - start:.0f} s")
    print(table(rows))
    target = args.json or (Path(os.environ["OUT"]) / "cuda_check.json" if os.environ.get("OUT") else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": [asdict(r) for r in rows]},
                                     indent=1))
    return 0 if all(r.within_tolerance for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
