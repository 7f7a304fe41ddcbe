"""The explorer, driven headlessly: setting a control's value fires its observers synchronously (no kernel)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import fia_kit.reference as reference
from fia_kit import explorer as E
from fia_kit.case import Case
from fia_kit.errors import FIAArgumentError

VISIBLE = 3


def small_case(**changes) -> Case:
    base = Case().replace(layout="BNSD", q_lens=(4,), kv_lens=(10,), heads=2, kv_heads=1, head_dim=16,
                          dtype=torch.float32, sparse_mode=0, paged=False, prefix_len=0, sinks=False)
    return base.replace(**changes)


def visible_counts(z) -> list[int]:
    return [int((np.asarray(row) == VISIBLE).sum()) for row in z]


def spec_mode3_counts(q_len: int, kv_len: int) -> list[int]:
    """Spec 6.3, mode 3: query i sees keys j <= i + (L_kv - L_q), counted with plain loops."""
    delta = kv_len - q_len
    return [sum(1 for j in range(kv_len) if j <= i + delta) for i in range(q_len)]


@pytest.fixture()
def explorer():
    return E.explore(small_case())


def test_sparse_mode_3_shifts_the_diagonal_by_skv_minus_sq(explorer):
    vis = explorer.figures["visibility"]
    assert visible_counts(vis.data[0].z) == [10, 10, 10, 10]  # mode 0 without a mask: every key
    explorer.controls["sparse_mode"].value = 3
    assert explorer.error.value == ""
    assert visible_counts(vis.data[0].z) == spec_mode3_counts(4, 10) == [7, 8, 9, 10]
    assert any(t.name == "right-down diagonal j = i + 6" for t in vis.data)
    explorer.controls["kv_lens"].value = "7"
    assert visible_counts(vis.data[0].z)[:4] == spec_mode3_counts(4, 7)


def test_pre_next_tokens_move_the_band_edges_in_mode_4(explorer):
    explorer.controls["sparse_mode"].value = 4
    explorer.controls["pre_tokens"].value = 1
    explorer.controls["next_tokens"].value = 0
    z = np.asarray(explorer.figures["visibility"].data[0].z)
    delta = 6
    for i in range(4):
        expected = [j for j in range(10) if i + delta - 1 <= j <= i + delta]
        assert np.flatnonzero(z[i] == VISIBLE).tolist() == expected


def test_invalid_length_text_shows_an_error_and_keeps_the_last_good_figure(explorer):
    explorer.controls["sparse_mode"].value = 3
    before = np.asarray(explorer.figures["visibility"].data[0].z).copy()
    explorer.controls["q_lens"].value = "4, x"  # must not raise
    assert "query lengths" in explorer.error.value and "last valid call" in explorer.error.value
    np.testing.assert_array_equal(np.asarray(explorer.figures["visibility"].data[0].z), before)
    assert not explorer.outcome.ok and explorer.good.ok
    explorer.controls["q_lens"].value = "3"
    assert explorer.error.value == ""
    assert visible_counts(explorer.figures["visibility"].data[0].z)[:3] == spec_mode3_counts(3, 10)


def test_a_rejected_combination_shows_the_fia_error_inline(explorer):
    title = explorer.figures["visibility"].layout.title.text
    explorer.controls["prefix_len"].value = 2
    assert explorer.error.value == "" and "prefix P=2" in explorer.figures["visibility"].layout.title.text
    title = explorer.figures["visibility"].layout.title.text
    explorer.controls["layout"].value = "TND"  # a shared prefix cannot be packed (spec 14)
    assert "key_shared_prefix + input_layout" in explorer.error.value
    assert explorer.figures["visibility"].layout.title.text == title
    explorer.controls["heads"].value = 3  # kv_heads 1 divides 3; 2 does not (spec 10)
    explorer.controls["kv_heads"].value = 2
    assert "kv_heads" in explorer.error.value and "divide" in explorer.error.value
    assert explorer.figures["visibility"].layout.title.text == title


def test_hidden_tabs_redraw_when_selected(explorer):
    explorer.controls["batch_shown"].value = 0
    explorer.tabs.selected_index = E.TABS.index("output")
    out = explorer.figures["output"]
    assert out.data and "attention_out, batch 0" in out.layout.title.text
    explorer.controls["kv_lens"].value = "10, 10"
    explorer.controls["q_lens"].value = "4, 2"
    explorer.controls["batch_shown"].value = 1
    assert "attention_out, batch 1" in out.layout.title.text
    z = np.asarray(out.data[0].z, dtype=float)
    assert z.shape[0] == 4 and (z[2:] == 0).all() and (z[:2] != 0).any()  # rows >= L_q are written as 0


@pytest.mark.parametrize("text", ["", "5 7", "-1", "1e3", "5, 7)", "__import__('os')", "4,,5"])
def test_parse_lengths_is_strict(text):
    with pytest.raises(FIAArgumentError, match="query lengths"):
        E.parse_lengths(text, "query lengths")


def test_parse_lengths_accepts_comma_lists():
    assert E.parse_lengths(" 5, 7 ", "x") == (5, 7)
    assert E.parse_lengths("12", "x") == (12,)


def test_compute_returns_the_error_instead_of_raising():
    outcome = E.compute(small_case(sparse_mode=4, pre_tokens=-3, next_tokens=1))
    assert not outcome.ok and "pre_tokens + next_tokens" in outcome.error
    with pytest.raises(ValueError):
        E.build_figures(outcome)


def _run_code(code: str, call) -> tuple[torch.Tensor, torch.Tensor]:
    """Execute generated code with the reference standing in for torch_npu / tng.ops."""
    names = {"torch": torch, "torch_npu": reference, "tng": types.SimpleNamespace(ops=reference),
             "query": call.query, "key": call.key, "value": call.value}
    names.update({k: v for k, v in call.options.items() if isinstance(v, torch.Tensor)})
    exec(code, names)  # the test executes code the explorer generated from a known case
    return names["attention_out"], names["softmax_lse"]


def test_generated_code_reproduces_the_call_in_every_form():
    outcome = E.compute(small_case(sparse_mode=3, q_lens=(3,), kv_lens=(8,)))
    codes = E.call_codes(outcome.call)
    assert "actual_seq_lengths_kv=[8]" in codes["torch_npu v1"]
    assert "actual_seq_kvlen=[8]" in codes["torch_npu v2"]
    assert "actual_seq_lengths_kv=torch.tensor([8], dtype=torch.int64" in codes["TorchAir (tng.ops) v1"]
    assert "atten_mask=atten_mask" in codes["torch_npu v1"] and "# atten_mask: bool (2048, 2048)" in codes[
        "torch_npu v1"]
    for code in codes.values():
        out, _ = _run_code(code, outcome.call)
        torch.testing.assert_close(out, outcome.result.attention_out)


def test_explore_without_a_case_opens_the_default_case():
    ex = E.explore()
    assert ex.good is not None and ex.error.value == ""
    assert "Visible keys per query row" in ex.figures["visibility"].layout.title.text
    assert "reference" in ex.controls["backend"].options


def test_another_backend_is_compared_with_the_reference(explorer):
    """flex computes the case independently of the reference; the difference tab shows how far apart they are."""
    assert "flex" in explorer.controls["backend"].options
    explorer.controls["backend"].value = "flex"
    explorer.tabs.selected_index = E.TABS.index("difference")
    title = explorer.figures["difference"].layout.title.text
    assert title.startswith("|flex - reference|") and "within tolerance" in title
    np.testing.assert_allclose(explorer.good.result.attention_out, explorer.good.reference_out, atol=1e-5)


def test_strip_widget_state_removes_only_the_widget_metadata(tmp_path):
    import json

    from fia_kit.notebook_tools import strip_widget_state

    nb = {"cells": [{"cell_type": "code", "source": "x", "metadata": {}, "outputs": [], "execution_count": 1}],
          "metadata": {"kernelspec": {"name": "python3"}, "widgets": {"state": {"a": "x" * 1000}}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert strip_widget_state(path) is True
    saved = json.loads(path.read_text())
    assert "widgets" not in saved["metadata"] and saved["metadata"]["kernelspec"] == {"name": "python3"}
    assert saved["cells"] == nb["cells"]
    assert strip_widget_state(path) is False
