"""Two arguments of a valid call mutated at once, on every path: refused with FIAArgumentError, or computed finite.

Each example draws a path (``fuzz_calls.PATHS``: dense, paged ranks 3/4/5, TND/NTD, int8 and int4 K/V, int8 output,
full quant, MLA rope, tree mask, shared prefix, left padding, sinks, pse), two distinct arguments of its call (the
positional tensors, its keywords, or keywords it lacks) and one mutation for each (wrong dtype, shape, device
"meta", kind, range, NaN/inf contents, None, ...); in half the examples both mutations keep the argument's type
and shape (values, strides, a length moved by one), so that more calls are accepted and reach compute.
``fuzz_calls.outcome`` checks the contract.

Profiles (hypothesis settings): "ci" (default; derandomised, so a failure reproduces, ``FIA_FUZZ_EXAMPLES``
examples per path, 20 unless set) and "long" (``FIA_FUZZ=long``: random, 400 examples per path). With
``FIA_FUZZ_REPORT=path.json`` the counts (drawn, accepted, refused per path) are written there at the end.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from fuzz_calls import ADDABLE, PATHS, gentle_mutations_for, mutations_for, outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

settings.register_profile("fia-fuzz-ci", derandomize=True, deadline=None, database=None,
                          max_examples=int(os.environ.get("FIA_FUZZ_EXAMPLES", "20")),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fia-fuzz-long", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = "fia-fuzz-long" if os.environ.get("FIA_FUZZ") == "long" else "fia-fuzz-ci"
COUNTS: dict[str, Counter] = {name: Counter() for name in PATHS}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    report = {name: dict(c) for name, c in COUNTS.items()}
    totals = sum((c for c in COUNTS.values()), Counter())
    print(f"\nfuzz ({PROFILE}): {dict(totals)}")
    for name, counts in report.items():
        print(f"  {name:22s} {counts}")
    if os.environ.get("FIA_FUZZ_REPORT"):
        Path(os.environ["FIA_FUZZ_REPORT"]).write_text(json.dumps({"profile": PROFILE, "paths": report,
                                                                   "total": dict(totals)}, indent=1))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", list(PATHS))
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_two_mutated_arguments_are_refused_or_computed(path: str, data: st.DataObject) -> None:
    form, q, k, v, kwargs = PATHS[path]()
    arguments = {"query": q, "key": k, "value": v, **kwargs}
    version = "v2" if form.endswith("v2") else "v1"
    names = sorted(arguments) + [n for n in ADDABLE[version] if n not in arguments]
    gentle = data.draw(st.booleans(), label="gentle")  # half the calls keep types and shapes: more reach compute
    if gentle:
        names = [n for n in sorted(arguments) if gentle_mutations_for(arguments[n])]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True), label="arguments")
    for name in chosen:
        present = name in arguments
        choices = gentle_mutations_for(arguments[name]) if gentle else mutations_for(arguments.get(name), present)
        label, mutate = data.draw(st.sampled_from(choices), label=name)
        arguments[name] = mutate(arguments.get(name))
    q, k, v = (arguments.pop(n) for n in ("query", "key", "value"))
    COUNTS[path]["drawn"] += 1
    result = outcome(form, q, k, v, arguments)
    COUNTS[path][result.verdict] += 1


def test_every_path_is_a_valid_call_the_reference_computes() -> None:
    """The unmutated calls are accepted: the fuzz starts from valid calls."""
    for name, build in PATHS.items():
        form, q, k, v, kwargs = build()
        assert outcome(form, q, k, v, kwargs).verdict == "accepted", name


def test_the_contract_catches_what_it_must() -> None:
    """A NaN output, a foreign exception and an oversized allocation each break the contract (planted defects)."""
    import fia_kit.reference as reference

    form, q, k, v, kwargs = PATHS["dense BNSD"]()
    original = reference.op_outputs
    planted = {
        "nan output": lambda plan: (torch.full_like(original(plan)[0], float("nan")), original(plan)[1]),
        "index error": lambda plan: [][1],
        "huge allocation": lambda plan: (torch.zeros(1 << 27, dtype=torch.uint8), original(plan))[1],
    }
    import fuzz_calls

    for defect in planted.values():
        fuzz_calls.op_outputs = defect
        try:
            with pytest.raises(AssertionError):
                outcome(form, q, k, v, kwargs)
        finally:
            fuzz_calls.op_outputs = original
