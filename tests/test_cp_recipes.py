"""The recipes' per-rank calls are normal kit calls: another backend runs them, a capture records them, lint reads
them; and the recipes refuse what they cannot do, with FIAArgumentError."""

from __future__ import annotations

import pytest
import torch

import fia_kit
from fia_kit import cp


def test_another_backend_runs_each_ranks_call() -> None:
    # flex_attention computes the per-rank FIA calls independently of the reference; the merge is the twin
    reports = cp.run_in_process(lambda group: cp.scenarios.dcp_decode_case(group, backend="flex"), 2)
    assert all(r.ok for r in reports), [r.row() for r in reports]
    assert reports[1].sentinels["+inf"] > 0


def test_a_capture_records_every_rank_and_lint_reads_the_calls(tmp_path) -> None:
    path = tmp_path / "dcp.fiacap"
    with fia_kit.capture(path, flush_seconds=0):
        cp.run_in_process(cp.scenarios.dcp_decode_case, 2)
    calls = fia_kit.load_capture(path)
    fia_calls = [c for c in calls if c.form == "v1"]
    updates = [c for c in calls if c.form == "update"]
    assert len(fia_calls) == 2 and sum(c.count for c in updates) == 2  # one FIA call and one update per rank
    assert {tuple(c.value("actual_seq_lengths_kv")) for c in fia_calls} == {(1, 4, 18), (0, 2, 17)}
    for call in fia_calls:
        assert isinstance(fia_kit.lint(call), list)
        out, lse = fia_kit.npu_fused_infer_attention_score(*call.args()[:3], **call.args()[3])
        assert out.shape == (3, 4, 32) and lse.shape == (3, 4, 1)
    lses, outs, update_type = updates[0].update_args()
    assert update_type == 0 and len(lses) == 2 and outs[0].shape == (6, 32)


def test_recipes_refuse_what_they_cannot_do() -> None:
    with pytest.raises(fia_kit.FIAArgumentError):
        cp.run_in_process(lambda group: cp.scenarios.dcp_decode_case(group, merge="psum"), 2)
    with pytest.raises(fia_kit.FIAArgumentError):
        cp.recipes.attention_update_merge(torch.zeros(3, 4, 10), head_size=8, world_size=2)
    group = cp.InProcessGroup(0, cp.groups._Exchange(2, 1.0))
    with pytest.raises(fia_kit.FIAArgumentError):
        group.reduce_scatter(torch.zeros(3), dim=0)


def test_vllm_merge_is_nan_free_where_the_kernel_gives_nan() -> None:
    # a row empty on both ranks (+inf and -inf): npu_attention_update gives NaN, vLLM's correct_attn_out gives 0
    lse = torch.tensor([[float("inf")], [0.3]])
    outs = torch.ones(2, 1, 8)

    def both(group):
        mine = torch.tensor([[float("inf") if group.rank == 0 else float("-inf")], [0.3]])
        return cp.merge_ag_rs(group, outs.repeat(1, 2, 1), mine.repeat(1, 2))

    merged = cp.run_in_process(both, 2)
    assert torch.equal(merged[0][0], torch.zeros(1, 8)) and torch.allclose(merged[0][1], torch.ones(1, 8))
    kernel, _ = fia_kit.npu_attention_update([lse[:, 0], torch.tensor([float("-inf"), 0.3])],
                                             [outs[:, 0], outs[:, 0]])
    assert torch.isnan(kernel[0]).all()
