"""Context parallel on real gloo process groups (2 and 4 ranks on 127.0.0.1) and on the in-process group.

Each world size starts its processes once and runs every worked case (``fia_kit.cp.scenarios.all_cases``): DCP
decode GQA and MLA, vLLM's AG+RS merge, the chunked-prefill context merge as vllm-ascend writes it and fixed, the
MTP mask as vllm-ascend builds it and fixed, ring prefill. Each rank compares its merged output with float64 SDPA
over the whole cache (``fia_kit.cp.validation``). Every run is bounded: ``launch`` has a deadline and kills
stragglers, and pytest-timeout stops the test.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import torch.distributed as dist

from fia_kit import cp
from fia_kit.cp import scenarios

LAUNCH_TIMEOUT = 50  # seconds for a whole run, process start included


def _everything(group: cp.Group) -> dict:
    """One rank: where it is bound, and every case's report."""
    return {"master": os.environ["MASTER_ADDR"], "ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
            "backend": dist.get_backend(), "world": group.world_size, "reports": scenarios.all_cases(group)}


def _fails_on_rank_0(group: cp.Group) -> None:
    if group.rank == 0:
        raise ValueError("rank 0 gives up")
    group.all_reduce(scenarios.torch.ones(1))  # rank 1 waits in a collective that never completes


def _by_case(results: list) -> dict[str, list[cp.Report]]:
    cases: dict[str, list[cp.Report]] = {}
    for reports in results:
        for r in reports:
            cases.setdefault(r.name, []).append(r)
    return cases


def _check(cases: dict[str, list[cp.Report]], world_size: int) -> None:
    for name in ("DCP decode GQA", "DCP decode MLA", "DCP decode GQA (vLLM AG+RS)",
                 "chunked prefill context (+inf -> -inf)", "MTP under DCP (row masked)", "ring prefill (zigzag)"):
        assert [r.rank for r in cases[name]] == list(range(world_size))
        assert all(r.ok and r.nan_rows == 0 for r in cases[name]), [r.row() for r in cases[name]]
    # ranks without keys of the short requests wrote each route's sentinel, and the merges still agree
    # (TND decode and MLA both run on routes whose no-key value is +inf: fia_kit.lse, Plan.route)
    assert all(r.sentinels["+inf"] > 0 for r in cases["DCP decode GQA"][1:])
    assert all(r.sentinels["+inf"] > 0 for r in cases["DCP decode MLA"][1:])
    # vllm-ascend's torch logsumexp turns another rank's +inf into NaN rows, on every rank (request 0's tokens)
    broken = cases["chunked prefill context (torch logsumexp)"]
    assert all(r.nan_rows > 0 and r.bad_tokens == (0, 1) for r in broken)
    # vllm-ascend's MTP mask leaves a row open on a rank with no earlier key: it attends to later tokens
    leaky = cases["MTP under DCP (vllm-ascend mask)"]
    assert any(r.bad_rows for r in leaky) and all(r.nan_rows == 0 for r in leaky)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 4])
def test_cases_on_gloo_ranks(world_size: int) -> None:
    start = time.monotonic()
    results = cp.launch(_everything, world_size, timeout=LAUNCH_TIMEOUT)
    assert time.monotonic() - start < LAUNCH_TIMEOUT
    assert {(r["master"], r["ifname"], r["backend"], r["world"]) for r in results} == {
        ("127.0.0.1", "lo", "gloo", world_size)}
    gloo = _by_case([r["reports"] for r in results])
    _check(gloo, world_size)
    # the in-process group delivers the same tensors: the same verdicts, row for row
    threads = _by_case(cp.run_in_process(scenarios.all_cases, world_size, timeout=LAUNCH_TIMEOUT))
    _check(threads, world_size)
    for name, reports in gloo.items():
        for a, b in zip(reports, threads[name], strict=True):
            assert (a.bad_rows, a.nan_rows, a.sentinels, a.bad_tokens) == (b.bad_rows, b.nan_rows, b.sentinels,
                                                                           b.bad_tokens)
            assert a.worst == pytest.approx(b.worst, rel=1e-3) or a.nan_rows


@pytest.mark.timeout(60)
def test_a_failing_rank_is_reported_and_the_others_are_stopped() -> None:
    start = time.monotonic()
    with pytest.raises(cp.RankError, match="rank 0 of 2 failed(.|\n)*rank 0 gives up"):
        cp.launch(_fails_on_rank_0, 2, timeout=LAUNCH_TIMEOUT)
    assert time.monotonic() - start < LAUNCH_TIMEOUT


@pytest.mark.timeout(30)
def test_in_process_group_is_bounded_too() -> None:
    with pytest.raises(ValueError, match="rank 0 gives up") as info:  # the rank's own exception, rank noted
        cp.run_in_process(_fails_on_rank_0, 2, timeout=5)
    assert "in-process rank 0 of 2" in str(info.value.__notes__)
    start = time.monotonic()
    with pytest.raises(cp.RankError):  # a rank that never joins the collective: the barrier times out
        cp.run_in_process(lambda g: g.all_reduce(scenarios.torch.ones(1)) if g.rank else time.sleep(3), 2,
                          timeout=1)
    assert time.monotonic() - start < 10


@pytest.mark.timeout(150)
def test_torchrun_starts_the_same_ranks() -> None:
    """``torchrun -m fia_kit.cp module:function``: each process joins the group from torchrun's environment."""
    import subprocess
    import sys

    port = cp.groups.free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "fia_kit.cp", "fia_kit.cp.scenarios:summary"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ("8 cases on 2 ranks; beyond tolerance: chunked prefill context (torch logsumexp) (4 rows, NaN); "
                "MTP under DCP (vllm-ascend mask) (2 rows)")
    # both ranks write to one pipe: a rank's text and its newline can reach it apart, so lines may run together
    ranks = re.findall(r"rank (\d+): " + re.escape(expected), done.stdout)
    assert sorted(ranks) == ["0", "1"], done.stdout[-3000:]
