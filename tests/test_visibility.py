"""The visibility rule in one object: hand-worked maps, mask_mod agrees with the dense maps, flex_attention with
``mask_mod`` gives the reference's outputs on computed rows."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import fia_kit
from fia_kit.case import Case
from fia_kit.kernel import RowStatus, run_plan

F32 = torch.float32  # the flex comparison below uses float32 tolerances
CASES = {
    "right-down causal": Case(q_lens=(3, 4), kv_lens=(5, 4), sparse_mode=3, dtype=F32),
    "band": Case(q_lens=(6,), kv_lens=(9,), sparse_mode=4, pre_tokens=2, next_tokens=1, dtype=F32),
    "padding mask": Case(q_lens=(4, 2), kv_lens=(3, 6), sparse_mode=1, dtype=F32),
    "explicit causal + prefix": Case(q_lens=(4, 3), kv_lens=(5, 6), mask="causal", prefix_len=2, dtype=F32),
    "decode with mask": Case(q_lens=(1, 1), kv_lens=(7, 4), sparse_mode=1, dtype=F32),
    "paged causal": Case(q_lens=(3, 2), kv_lens=(40, 9), sparse_mode=3, paged=True, block_size=16, dtype=F32),
    "TND sinks": Case(q_lens=(5, 3), kv_lens=(9, 6), heads=4, kv_heads=2, sinks=True, sparse_mode=3, dtype=F32),
}


def test_right_down_causal_by_hand():
    vis = fia_kit.plan(Case(q_lens=(3,), kv_lens=(5,), sparse_mode=3)).visibility
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # j <= i + 2
    assert torch.equal(vis.dense(0), expected)
    assert vis.computed_rows(0).all()


def test_band_by_hand_and_rows_without_keys():
    # mode 4, L_q = 4, L_kv = 2: delta = -2, keys j with -2 - 0 <= j - i <= -2 + 0: only j = i - 2
    vis = fia_kit.plan(Case(q_lens=(4,), kv_lens=(2,), sparse_mode=4, pre_tokens=0, next_tokens=0)).visibility
    expected = torch.zeros(4, 2, dtype=torch.bool)
    expected[2, 0] = expected[3, 1] = True
    assert torch.equal(vis.dense(0), expected)
    assert vis.computed_rows(0).tolist() == [False, False, True, True] == vis.band_rows(0).tolist()


def test_user_mask_hides_keys_and_rows_it_fully_masks():
    mask = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = True  # row 1 sees nothing
    mask[0, 0, 0, 2] = True
    vis = fia_kit.plan(Case(q_lens=(3,), kv_lens=(4,), mask=mask)).visibility
    assert vis.dense(0).tolist() == [[True, True, False, True], [False] * 4, [True] * 4]
    assert vis.computed_rows(0).tolist() == [True, False, True] and vis.band_rows(0).all()


@pytest.mark.parametrize("name", CASES)
def test_mask_mod_agrees_with_dense_maps_and_the_kernel(name):
    plan = fia_kit.plan(CASES[name])
    vis = plan.visibility
    status = run_plan(plan).row_status
    for b, batch in enumerate(plan.batches):
        rows, keys = vis.num_rows(b), vis.num_keys(b)
        i = torch.arange(rows + 2).view(-1, 1)  # two rows and keys beyond the batch: never visible
        j = torch.arange(keys + 3).view(1, -1)
        got = vis.mask_mod(torch.tensor(b), torch.tensor(0), i, j)
        assert not got[rows:].any() and not got[:, keys:].any()
        assert torch.equal(got[:rows, :keys], vis.dense(b))
        computed = status[batch.q_index, batch.q_start:batch.q_start + rows] == int(RowStatus.COMPUTED)
        assert torch.equal(computed, vis.computed_rows(b))


@pytest.mark.parametrize("name", ["right-down causal", "band", "explicit causal + prefix", "padding mask"])
def test_flex_attention_with_mask_mod_gives_the_reference(name):
    """Per batch: flex_attention over the batch's own rows and keys (prefix first) with ``mask_mod``."""
    case = CASES[name]
    plan = fia_kit.plan(case)
    vis = plan.visibility
    result = run_plan(plan)
    for b, batch in enumerate(plan.batches):
        q = plan.query[batch.q_index:batch.q_index + 1, :, batch.q_start:batch.q_start + batch.q_len].double()
        k = plan.key[batch.kv_index:batch.kv_index + 1, :, batch.kv_start:batch.kv_start + batch.kv_len].double()
        v = plan.value[batch.kv_index:batch.kv_index + 1, :, batch.kv_start:batch.kv_start + batch.kv_len].double()
        if plan.prefix_key is not None:
            k = torch.cat([plan.prefix_key[:, :, :plan.prefix_len].double(), k], dim=2)
            v = torch.cat([plan.prefix_value[:, :, :plan.prefix_len].double(), v], dim=2)
        def mask_mod(_, h, q_idx, kv_idx, b=b):
            return vis.mask_mod(torch.full_like(q_idx, b), h, q_idx, kv_idx)
        block = create_block_mask(mask_mod, 1, None, q.shape[2], k.shape[2], device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = flex_attention(q, k, v, block_mask=block, scale=plan.scale, enable_gqa=True)
        computed = vis.computed_rows(b)
        out = result.attention_out[batch.q_index, :, batch.q_start:batch.q_start + batch.q_len]
        torch.testing.assert_close(out[:, computed].double(), expected[0][:, computed], atol=1e-5, rtol=1e-5)
