"""The host route where a user looks at a call: ``Case.describe``, lint's ``Findings.route``, ``fia-kit lint``'s
table (``fia_kit.rules.route_note``); the explorer's route line is tested in tests/test_explorer.py.

The look-alike calls and the routes expected for them are read off the kernel's router at ops-transformer 5778144
(paths under attention/fused_infer_attention_score/op_host/):

* a float16 BSND decode step, MHA, D 128: ``RouteToFia`` (arch22/fused_infer_attention_score_tiling_v3.cpp:1371)
  takes it -> "fia";
* the same step with D 256 and no paging: ``IsLegacyTemplatePreferred`` (v3.cpp:1363) keeps it off the FIA route,
  ``IsUsingIFA`` (fused_infer_attention_score_tiling.cpp:1844) takes it -> "legacy-ifa";
* the same step packed as TND (one token per sequence, sparse_mode 0, no mask, MHA): ``CheckSpecConditions``
  (v3.cpp:1208) holds, so it is not the FIA route's, and ``IsUsingFAI`` (tiling.cpp:1607) takes it -> "split-fuse";
* 128 query heads on 1 KV head with float K/V -> "fia", which has no group cap; the same with int8 K/V never takes
  the FIA route on A2/A3 (``RouteToFia`` needs K's dtype to be Q's) -> "legacy-ifa", whose
  incre_flash_attention_tiling_check.cpp:326 refuses G = 128 > 64.
"""

from __future__ import annotations

import torch

import fia_kit
from fia_kit.case import Case
from fia_kit.cli import main as cli_main
from fia_kit.rules import RULES
from fia_kit.rules.route_note import ROUTE_WORDS, route_note

# batch 0 has no keys: its LSE is the route's sentinel; batch 1 has 40
DECODE = Case(q_lens=(1, 1), kv_lens=(0, 40), heads=4, kv_heads=4, head_dim=128, dtype=torch.float16, layout="BSND")
LOOK_ALIKES = {
    "fia": DECODE,
    "legacy-ifa": DECODE.replace(head_dim=256),
    "split-fuse": DECODE.replace(layout="TND"),
}


def test_each_look_alike_takes_the_route_the_kernels_router_gives():
    assert {route: fia_kit.plan(case).route for route, case in LOOK_ALIKES.items()} == {r: r for r in LOOK_ALIKES}


def test_the_note_states_the_lse_the_reference_writes_for_a_batch_without_keys():
    for case in LOOK_ALIKES.values():
        plan = fia_kit.plan(case)
        lse = fia_kit.run(plan, "reference").softmax_lse
        no_keys = lse[0] if plan.layout.name != "TND" else lse[:1]  # BSND: (B, N, S, 1); TND: (T, N, 1)
        assert torch.all(no_keys == route_note(plan).empty_row_lse), (plan.route, no_keys.flatten()[:2])
    # three look-alike decode steps, three values (spec 25.1): the FIA kernel's float32(-3.4e38) (FLOAT_MIN,
    # fia_kernel_nonquant.h:112), the legacy IFA kernel's -FLT_MAX, and +inf where the split-fuse path computes it
    expected = {"fia": float(torch.tensor(-3.4e38, dtype=torch.float32)), "legacy-ifa": -3.4028234663852886e38,
                "split-fuse": float("inf")}
    assert {r: route_note(fia_kit.plan(c)).empty_row_lse for r, c in LOOK_ALIKES.items()} == expected


def test_the_note_lists_the_enforced_rules_of_its_route_alone():
    note = route_note(fia_kit.plan(LOOK_ALIKES["legacy-ifa"]))
    assert "IFA-GQA-001" in note.only_here
    book = {r.id: r for r in RULES}
    assert all(book[i].routes == ("legacy-ifa",) and book[i].status == "enforced" for i in note.only_here)
    assert note.words == ROUTE_WORDS["legacy-ifa"] and str(note).startswith("route legacy-ifa (")
    assert note.with_rules().startswith(f"{note}; rules of this route only: {len(note.only_here)} (IFA-")


def test_describe_ends_with_the_route_line():
    for route, case in LOOK_ALIKES.items():
        last = case.describe().splitlines()[-1]
        assert last.startswith(f"route {route} (") and "a row without keys gets LSE" in last
    refused = DECODE.replace(heads=128, kv_heads=1, kv_quant="tensor")
    assert refused.describe().splitlines()[-1].startswith("route: none, the kit refuses the call")
    assert "IFA-GQA-001" in refused.route_line()


def test_lint_gives_the_route_of_a_clean_call_and_none_for_a_refused_one():
    for route, case in LOOK_ALIKES.items():
        found = fia_kit.lint(case)  # TND's cumulative kv lengths [0, 40] get a warning, not an error
        assert all(f.severity == "warning" for f in found) and found.route == route
    gqa = DECODE.replace(heads=128, kv_heads=1)
    assert fia_kit.lint(gqa).route == "fia" and fia_kit.lint(gqa) == []  # no G cap on the FIA route
    refused = fia_kit.lint(gqa.replace(kv_quant="tensor"))
    assert [f.severity for f in refused] == ["error"] and refused.route is None
    assert "legacy-ifa route" in refused[0].message


def test_the_lint_command_prints_each_calls_host_route(tmp_path, capsys):
    path = tmp_path / "calls.fiacap"
    with fia_kit.capture(path):
        for case in LOOK_ALIKES.values():
            case.build("v1").call(fia_kit.npu_fused_infer_attention_score)
    assert cli_main(["lint", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1]
    assert header.split()[-2:] == ["host", "route"]
    assert [line.split()[-1] for line in lines[3:]] == list(LOOK_ALIKES)
