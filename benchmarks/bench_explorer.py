"""How long the explorer takes to redraw after a control change: at the default case and at issue 16's user sizes.

Drives the widget's observers headlessly: setting a control's ``.value`` validates the new case and redraws the
visibility map and the selected tab synchronously, as a user's edit does in a notebook (no browser: the figure
widgets' messages go nowhere). Prints median and p90 per control and over all changes, with the load average.

    .venv/bin/python benchmarks/bench_explorer.py [--repeats 10] [--tab probabilities]
    .venv/bin/python benchmarks/bench_explorer.py --user-sizes [--sizes 8192x8192x32] [--repeats 3]

Default case: the controls of ``CHANGES`` (target: median < 150 ms), and the full call alone (``explorer.compute``,
the peer in this process) as a multiple of a redraw.

``--user-sizes``: per size of ``USER_SIZES`` (causal fp16, head_dim 64, one batch, N_kv = N_q / 4; goal at
8192 x 8192 with 32 heads: median < 300 ms), the time to open the explorer (``explore(case)`` plus its display
bundle), then each control of ``user_controls`` set to each of its values (median and p90 per control, and over
all), and as the peer the full call once, on request (``Explorer.run_full_call``: the reference's tile loop behind
the output, LSE and difference tabs, which the explorer ran on every change before): "redraw / full call" is the
ratio of the two in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from fia_kit import explorer as E
from fia_kit.case import Case
from fia_kit.masks import INT_MAX

USER_SIZES = ((512, 2048, 8), (2048, 8192, 32), (8192, 8192, 32))  # (L_q, L_kv, query heads)
USER_GOAL_MS = 300.0

# Default case: each control cycles through values that all give valid calls from the default case.
CHANGES: dict[str, list[object]] = {
    "sparse_mode": [3, 2, 0],
    "q_lens": ["12, 8", "6, 4", "24, 16"],
    "next_tokens": [8, 16, 2147483647],
    "inner_precise": [2, 0],
    "layout": ["BSND", "BSH", "BNSD"],
}


def user_case(q_len: int, kv_len: int, heads: int) -> Case:
    """Issue 16's user size: one batch, causal (sparse_mode 3), fp16, head_dim 64, N_kv = N_q / 4."""
    return Case(q_lens=(q_len,), kv_lens=(kv_len,), heads=heads, kv_heads=max(1, heads // 4), head_dim=64,
                dtype=torch.float16, sparse_mode=3)


def user_controls(q_len: int, kv_len: int, heads: int) -> dict[str, tuple[dict[str, object], list[object]]]:
    """control -> (settings made first, untimed; the values timed in turn), all valid at this size.

    "tab" selects each tab in turn; "batch_shown" 1 clamps to the one batch (nothing to redraw).
    """
    return {
        "sparse_mode": ({}, [2, 4, 0, 3]),
        "pre_tokens": ({"sparse_mode": 4}, [q_len // 4, q_len // 2, INT_MAX]),
        "next_tokens": ({"sparse_mode": 4}, [0, q_len // 8, INT_MAX]),
        "q_lens": ({}, [str(q_len // 2), str(q_len)]),
        "kv_lens": ({}, [str(kv_len * 3 // 4), str(kv_len)]),
        "heads": ({}, [heads // 2, heads]),
        "mask": ({"sparse_mode": 0}, ["padding", "causal", "none"]),
        "batch_shown": ({}, [1, 0]),
        "tab": ({}, [*E.TABS[1:], E.TABS[0]]),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def set_control(explorer: E.Explorer, name: str, value: object) -> None:
    if name == "tab":
        explorer.tabs.selected_index = E.TABS.index(value)
    else:
        explorer.controls[name].value = value
    if explorer.error.value:
        raise SystemExit(f"{name}={value!r} was rejected: {explorer.error.value}")


def print_table(timings: dict[str, list[float]], goal_ms: float, indent: str = "  ") -> float:
    """Median and p90 per control and over all changes; the last line is what run_all.py reads (no indent)."""
    every = [t for ts in timings.values() for t in ts]
    print(f"{indent}{'control':<14} {'median ms':>10} {'p90 ms':>10}")
    for name, ts in timings.items():
        print(f"{indent}{name:<14} {1e3 * statistics.median(ts):>10.1f} {1e3 * percentile(ts, 0.9):>10.1f}")
    median = statistics.median(every)
    print(f"{indent}{'all changes':<14} {1e3 * median:>10.1f} {1e3 * percentile(every, 0.9):>10.1f}  "
          f"(target median < {goal_ms:.0f} ms: {'met' if 1e3 * median < goal_ms else 'NOT met'})")
    return median


def default_case(repeats: int, tab: str) -> None:
    explorer = E.explore()
    explorer.tabs.selected_index = E.TABS.index(tab)
    print(f"default case: {explorer.case}")
    print(f"load average (1, 5, 15 min): {load()}")
    timings: dict[str, list[float]] = {name: [] for name in CHANGES}
    for _ in range(repeats):
        for name, values in CHANGES.items():
            for value in values:
                timings[name].append(timed(lambda: set_control(explorer, name, value)))  # noqa: B023
    median = print_table(timings, 150.0, indent="")
    call = statistics.median(timed(lambda: E.compute(explorer.case, explorer.backend)) for _ in range(repeats * 5))
    print(f"  the full call alone (compute; a redraw runs it only for the output, LSE and difference tabs): "
          f"median {1e3 * call:.1f} ms = {call / median:.2f} x a redraw")


def user_size(q_len: int, kv_len: int, heads: int, repeats: int) -> None:
    case = user_case(q_len, kv_len, heads)
    print(f"\n{q_len} x {kv_len}, {heads} query heads / {case.kv_heads} KV heads, fp16, causal; "
          f"load before: {load()}")
    holder: dict[str, E.Explorer] = {}
    opened = timed(lambda: holder.update(ex=E.explore(case)) or holder["ex"]._repr_mimebundle_())
    explorer = holder["ex"]
    print(f"  open (explore + display bundle, not the first explorer): {1e3 * opened:.0f} ms")
    timings: dict[str, list[float]] = {}
    for name, (setup, values) in user_controls(q_len, kv_len, heads).items():
        base = {k: explorer.controls[k].value for k in setup}
        own = E.TABS[explorer.tabs.selected_index] if name == "tab" else explorer.controls[name].value
        for k, v in setup.items():
            set_control(explorer, k, v)
        timings[name] = [timed(lambda: set_control(explorer, name, value))  # noqa: B023
                         for _ in range(repeats) for value in values]
        for k, v in [(name, own), *base.items()]:  # back to the base case, untimed
            set_control(explorer, k, v)
    median = print_table(timings, USER_GOAL_MS)
    set_control(explorer, "tab", "output")
    scores = E.in_band_scores(explorer.good.problem)
    if explorer.good.ran:
        print(f"  full call: ran at once ({scores:.3g} in-band scores <= {E.FULL_CALL_AT_ONCE:.3g})")
        return
    updates = []
    explorer.progress.observe(lambda change: updates.append(change["new"]), names="value")
    full = timed(explorer.run_full_call)
    print(f"  full call on request ({scores:.3g} in-band scores): {full:.1f} s, {len(updates)} progress updates; "
          f"redraw / full call = {median / full:.3f}; load after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="cycles through every control's values "
                        "(default 10; 2 with --user-sizes)")
    parser.add_argument("--tab", default="probabilities", choices=E.TABS, help="the tab shown (default case)")
    parser.add_argument("--user-sizes", action="store_true", help="time the explorer at issue 16's sizes")
    parser.add_argument("--sizes", nargs="*", default=None, help="L_qxL_kvxheads, e.g. 8192x8192x32")
    args = parser.parse_args()
    if not args.user_sizes:
        default_case(args.repeats or 10, args.tab)
        return
    sizes = USER_SIZES if not args.sizes else [tuple(int(x) for x in s.split("x")) for s in args.sizes]
    print(f"torch threads: {torch.get_num_threads()}; load average (1, 5, 15 min): {load()}")
    print(f"first explorer of this process (default case: widget and plotly set-up): "
          f"{1e3 * timed(lambda: E.explore()._repr_mimebundle_()):.0f} ms")
    for q_len, kv_len, heads in sizes:
        user_size(q_len, kv_len, heads, args.repeats or 2)


if __name__ == "__main__":
    main()
