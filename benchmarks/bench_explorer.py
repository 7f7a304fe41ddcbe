"""How long the explorer takes to redraw after a control change, at the default case size (target: median < 150 ms).

Drives the widget's observers headlessly: setting a control's ``.value`` runs the call and redraws the visibility
map and the selected tab synchronously, as a user's edit does in a notebook. Prints median and p90 per control and
overall, and the share of the time the call itself takes (``explorer.compute`` alone, the peer in this process).

    .venv/bin/python benchmarks/bench_explorer.py [--repeats 10] [--tab probabilities]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from fia_kit import explorer as E

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="cycles through every control's values")
    parser.add_argument("--tab", default="probabilities", choices=E.TABS, help="the tab shown under the map")
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


if __name__ == "__main__":
    main()
