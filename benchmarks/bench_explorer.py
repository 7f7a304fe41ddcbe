"""How long the explorer takes to redraw after a control change, at the default case size (target: median < 150 ms).

Drives the widget's observers headlessly: setting a control's ``.value`` runs the call and redraws the visibility
map and the selected tab synchronously, as a user's edit does in a notebook. Prints median and p90 per control and
overall, and the share of the time the call itself takes (``explorer.compute`` alone, the peer in this process).

    .venv/bin/python benchmarks/bench_explorer.py [--repeats 10] [--tab probabilities] [--user-sizes]

``--user-sizes`` also times, at issue 16's user sizes (causal fp16, head_dim 64, one batch), what a redraw of the
visibility map and the probabilities tab computes: the plan, the pooled visibility map
(``figures.pooled_visibility_codes``, built row tile by row tile), the row status without attention
(``kernel.batch_row_status``) and the probabilities figure of the first head group
(``figures.probabilities_figure``: only the shown heads, pooled as they go, rows sampled above
``figures.SAMPLE_ROWS_ABOVE``); and the full call (``kernel.run_plan``) where it is small enough to run at once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fia_kit import explorer as E
from fia_kit import figures, kernel
from fia_kit.case import Case
from fia_kit.planning import plan as make_plan

USER_SIZES = ((512, 2048, 8), (2048, 8192, 32), (8192, 8192, 32))  # (L_q, L_kv, query heads)
FULL_CALL_UP_TO = 2**31  # score cells (heads x L_q x L_kv) up to which the full call is timed too

# Each control cycles through values that all give valid calls from the default case.
CHANGES: dict[str, list[object]] = {
    "sparse_mode": [3, 2, 0],
    "q_lens": ["12, 8", "6, 4", "24, 16"],
    "next_tokens": [8, 16, 2147483647],
    "inner_precise": [2, 0],
    "layout": ["BSND", "BSH", "BNSD"],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def user_sizes(repeats: int) -> None:
    """Time the pieces of a redraw at issue 16's sizes (see the module docstring)."""
    print(f"{'L_q x L_kv, heads':<22} {'plan ms':>9} {'visibility ms':>14} {'row status ms':>14} {'probabilities ms':>17} "
          f"{'full call ms':>13}")
    for q_len, kv_len, heads in USER_SIZES:
        case = Case(q_lens=(q_len,), kv_lens=(kv_len,), heads=heads, kv_heads=max(1, heads // 4), head_dim=64,
                    dtype=torch.float16, sparse_mode=3)
        problem = make_plan(case)
        plan_ms = median_ms(lambda: make_plan(case), repeats)  # noqa: B023
        vis_ms = median_ms(lambda: figures.pooled_visibility_codes(problem, 0), repeats)  # noqa: B023
        status_ms = median_ms(lambda: kernel.batch_row_status(problem, 0), repeats)  # noqa: B023
        probs_ms = median_ms(lambda: figures.probabilities_figure(problem, 0), repeats)  # noqa: B023
        full = "on request"
        if heads * q_len * kv_len <= FULL_CALL_UP_TO:
            full = f"{median_ms(lambda: kernel.run_plan(problem), max(1, repeats // 3)):.0f}"  # noqa: B023
        print(f"{f'{q_len} x {kv_len}, {heads}':<22} {plan_ms:>9.1f} {vis_ms:>14.1f} {status_ms:>14.1f} {probs_ms:>17.1f} "
              f"{full:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="cycles through every control's values")
    parser.add_argument("--tab", default="probabilities", choices=E.TABS, help="the tab shown under the map")
    parser.add_argument("--user-sizes", action="store_true", help="also time a redraw's pieces at issue 16's sizes")
    args = parser.parse_args()

    explorer = E.explore()
    explorer.tabs.selected_index = E.TABS.index(args.tab)
    print(f"default case: {explorer.case}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    timings: dict[str, list[float]] = {name: [] for name in CHANGES}
    for _ in range(args.repeats):
        for name, values in CHANGES.items():
            for value in values:
                start = time.perf_counter()
                explorer.controls[name].value = value
                timings[name].append(time.perf_counter() - start)
                if explorer.error.value:
                    raise SystemExit(f"{name}={value!r} was rejected: {explorer.error.value}")
    compute_times = []
    for _ in range(args.repeats * 5):
        start = time.perf_counter()
        E.compute(explorer.case, explorer.backend)
        compute_times.append(time.perf_counter() - start)

    every = [t for ts in timings.values() for t in ts]
    print(f"{'control':<14} {'median ms':>10} {'p90 ms':>10}")
    for name, ts in timings.items():
        print(f"{name:<14} {1e3 * statistics.median(ts):>10.1f} {1e3 * percentile(ts, 0.9):>10.1f}")
    median = statistics.median(every)
    print(f"{'all changes':<14} {1e3 * median:>10.1f} {1e3 * percentile(every, 0.9):>10.1f}  "
          f"(target median < 150 ms: {'met' if median < 0.150 else 'NOT met'})")
    call = statistics.median(compute_times)
    print(f"the call alone (compute): median {1e3 * call:.1f} ms = {call / median:.0%} of a redraw")
    if args.user_sizes:
        user_sizes(max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
