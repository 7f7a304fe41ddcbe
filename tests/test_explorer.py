"""The explorer, driven headlessly: setting a control's value fires its observers synchronously (no kernel)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import fia_kit.reference as reference
from fia_kit import explorer as E
from fia_kit import kernel
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


# ------------------------------------------------------------------------------------------------ user sizes

def golden_probabilities(q, k, scale, bias=None, hidden=None):
    """(N_q, L_q, L_kv) float64 softmax(scale q k^T + bias) of one batch, K heads repeated for GQA."""
    q, k = q.double(), k.double()
    s = scale * q @ k.repeat_interleave(q.shape[0] // k.shape[0], 0).transpose(-1, -2)
    if bias is not None:
        s = s + bias
    if hidden is not None:
        s = s.masked_fill(hidden, float("-inf"))
    return s.softmax(-1)


def golden_out(q, k, v, scale, hidden=None):
    p = golden_probabilities(q, k, scale, hidden=hidden)
    return p @ v.double().repeat_interleave(q.shape[0] // v.shape[0], 0)


def _no_full_call(monkeypatch):
    """Make any full call (the reference's run_plan, another backend) fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the full call ran")
    monkeypatch.setattr(E, "run_plan", refuse)
    monkeypatch.setattr(E, "run_backend", refuse)


def test_at_8192_a_control_change_computes_no_full_call_and_the_map_follows_the_rule(monkeypatch):
    _no_full_call(monkeypatch)
    case = Case(q_lens=(8192,), kv_lens=(8192,), heads=32, kv_heads=8, head_dim=64, dtype=torch.float16,
                sparse_mode=3)
    ex = E.explore(case)
    ex.controls["sparse_mode"].value = 2
    ex.controls["pre_tokens"].value = 100
    assert ex.error.value == "" and not ex.good.ran
    # mode 2, 32 x 32 blocks of rows and keys: block (R, C) holds a visible cell j <= i iff 32 C <= 32 R + 31
    z = np.asarray(ex.figures["visibility"].data[0].z)
    expected = [[VISIBLE if c <= r else 1 for c in range(256)] for r in range(256)]
    np.testing.assert_array_equal(z, expected)
    assert "downsampled: each cell = max of a 32x32 block" in ex.figures["visibility"].layout.title.text
    probs = ex.figures["probabilities"]
    assert len(probs.data) == 4 and "every 64th query row" in probs.layout.title.text
    ex.tabs.selected_index = E.TABS.index("output")  # a tab that needs the call: offered, not run
    assert not ex.good.ran and ex.run_button.layout.display != "none"
    assert "runs when you press the button" in ex.call_note.value and "in-band scores" in ex.call_note.value
    assert "has not run yet" in ex.figures["output"].layout.title.text
    ex.tabs.selected_index = E.TABS.index("layout")
    assert ex.run_button.layout.display == "none" and ex.call_note.value == ""
    preview = ex._repr_mimebundle_()["text/html"]  # the static picture: pooled too, never the 8192^2 map
    assert preview.count("<tr>") == 48 and "171x171 pooled" in preview


def test_the_full_call_runs_on_request_with_a_progress_bar(monkeypatch):
    monkeypatch.setattr(E, "FULL_CALL_AT_ONCE", 10)
    monkeypatch.setattr(kernel, "TILE_ROWS", 16)
    ex = E.explore(small_case(q_lens=(40,), kv_lens=(50,), sparse_mode=3))
    ex.tabs.selected_index = E.TABS.index("output")
    assert not ex.good.ran and ex.run_button.layout.display != "none"
    seen = []
    ex.progress.observe(lambda change: seen.append((change["new"], ex.progress.max)), names="value")
    ex.run_button.click()
    assert ex.good.ran and ex.run_button.layout.display == "none" and ex.progress.layout.display == "none"
    assert seen == [(16, 40), (32, 40), (40, 40)]  # one update per row tile of the reference's loop
    call = ex.good.call
    expected = golden_out(call.query[0], call.key[0], call.value[0], ex.case.softmax_scale,
                          hidden=~torch.ones(40, 50, dtype=torch.bool).tril(10))
    np.testing.assert_allclose(np.asarray(ex.figures["output"].data[0].z),
                               expected.permute(1, 0, 2).reshape(40, -1).numpy(), atol=1e-5)


def test_run_plan_reports_progress_per_row_tile(monkeypatch):
    monkeypatch.setattr(kernel, "TILE_ROWS", 128)
    problem = E.prepare(small_case(q_lens=(300, 7), kv_lens=(10, 10), sparse_mode=0)).problem
    reports = []
    kernel.run_plan(problem, reports.append)
    assert sum(reports) == 307 and len(reports) == 3 + 1  # 128 + 128 + 44 rows, then batch 1's 7 (B = 2)


def test_small_calls_run_at_once_when_their_tab_is_shown():
    ex = E.explore(small_case())
    assert not ex.good.ran  # the map and the probabilities need no full call
    ex.tabs.selected_index = E.TABS.index("lse")
    assert ex.good.ran and ex.run_button.layout.display == "none"
    lse = np.asarray(ex.figures["lse"].data[0].z)
    call = ex.good.call
    s = ex.case.softmax_scale * call.query[0].double() @ call.key[0].double().repeat_interleave(2, 0).transpose(1, 2)
    np.testing.assert_allclose(lse, torch.logsumexp(s, -1).T.numpy(), atol=1e-5)


def test_only_the_batch_shown_changing_keeps_the_results(monkeypatch):
    ex = E.explore(small_case())
    ex.tabs.selected_index = E.TABS.index("output")
    assert ex.good.ran
    _no_full_call(monkeypatch)
    ex.controls["batch_shown"].value = 3  # one batch: clamps to batch 0, nothing to compute or redraw
    assert ex.good.ran and ex.error.value == ""


# ------------------------------------------------------------------------------------------------ reach

def test_alibi_pse_shows_in_the_probabilities():
    ex = E.explore(small_case(q_lens=(4,), kv_lens=(10,)))
    ex.controls["pse"].value = "alibi"
    assert ex.error.value == "" and "pse_shift" in ex.figures["probabilities"].layout.title.text
    call = ex.good.call
    i, j = torch.arange(4).view(-1, 1), torch.arange(10).view(1, -1)
    bias = torch.stack([-(2.0 ** (-8 * (n + 1) / 2)) * (j - i - 6).abs() for n in range(2)]).double()
    expected = golden_probabilities(call.query[0], call.key[0], ex.case.softmax_scale, bias)
    for n in range(2):
        np.testing.assert_allclose(np.asarray(ex.figures["probabilities"].data[n].z), expected[n].numpy(),
                                   atol=1e-6)
    assert any("pse_shift is added" in line for line in E.hints(ex.case))


def test_pse_too_large_for_the_explorer_is_refused_with_a_line():
    ex = E.explore(small_case())
    ex.controls["q_lens"].value = "3000"
    ex.controls["kv_lens"].value = "30000"
    ex.controls["pse"].value = "random"
    assert "pse_shift" in ex.error.value and "explorer builds" in ex.error.value


@pytest.mark.parametrize("granularity", ["channel", "token"])
def test_int8_kv_output_is_attention_over_dequantised_kv_and_the_difference_is_the_quant_error(granularity):
    ex = E.explore(small_case(q_lens=(4,), kv_lens=(10,)))
    ex.controls["kv_quant"].value = granularity
    ex.tabs.selected_index = E.TABS.index("output")
    assert ex.error.value == "" and ex.good.ran
    call = ex.good.call
    kw = call.options
    assert call.key.dtype == torch.int8
    view = (1, 1, 16) if granularity == "channel" else (1, 10, 1)  # spec 16.3: scale[h, d] or scale[b, t]
    k = call.key[0].double() * kw["key_antiquant_scale"].double().reshape(-1)[:16 if granularity == "channel"
                                                                              else 10].view(view)
    v = call.value[0].double() * kw["value_antiquant_scale"].double().reshape(-1)[:16 if granularity == "channel"
                                                                                  else 10].view(view)
    out = golden_out(call.query[0], k, v, ex.case.softmax_scale)
    np.testing.assert_allclose(np.asarray(ex.figures["output"].data[0].z), out.permute(1, 0, 2).reshape(4, -1),
                               atol=1e-5)
    ex.tabs.selected_index = E.TABS.index("difference")
    floats = small_case(q_lens=(4,), kv_lens=(10,)).build("v1")  # the same seeded float K/V
    exact = golden_out(floats.query[0], floats.key[0], floats.value[0], ex.case.softmax_scale)
    title = ex.figures["difference"].layout.title.text
    assert title.startswith(f"|int8 K/V per {granularity} - float K/V|")
    worst = float(title.split("<br>max ")[1].split()[0])
    assert worst == pytest.approx(float((out - exact).abs().max()), rel=0.01) and worst > 1e-4


def test_flex_declines_int8_kv_with_a_line_not_a_crash():
    ex = E.explore(small_case())
    ex.controls["backend"].value = "flex"
    ex.controls["kv_quant"].value = "channel"
    ex.tabs.selected_index = E.TABS.index("difference")
    assert ex.error.value == "" and ex.good.ran
    assert "flex does not compute this call" in ex.good.declined and "antiquant" in ex.good.declined
    fig = ex.figures["difference"]
    assert fig.layout.title.text.startswith("|int8 K/V per channel - float K/V|")
    assert "flex does not compute this call" in fig.layout.title.text


def test_mla_rope_adds_the_rope_product_to_the_scores():
    ex = E.explore(small_case(q_lens=(4,), kv_lens=(10,)))
    ex.controls["head_dim"].value = 128
    ex.controls["rope_dim"].value = 64
    assert ex.error.value == "" and "Q_rope" in ex.figures["probabilities"].layout.title.text
    call = ex.good.call
    q = torch.cat([call.query[0], call.options["query_rope"][0]], -1)
    k = torch.cat([call.key[0], call.options["key_rope"][0]], -1)
    expected = golden_probabilities(q, k, 1 / (128 + 64) ** 0.5)
    np.testing.assert_allclose(np.asarray(ex.figures["probabilities"].data[0].z), expected[0].numpy(), atol=1e-6)
    ex.controls["head_dim"].value = 64  # MLA takes D = 512 or 128 only (spec 12)
    assert "query head dim must be 512" in ex.error.value


def test_tree_mask_shows_context_and_ancestors():
    ex = E.explore(small_case(q_lens=(4,), kv_lens=(10,)))
    ex.controls["sparse_mode"].value = 9
    assert "MLA" in ex.error.value  # v2, MLA only: the op's rule, as a line
    assert any("tree mask" in line for line in E.hints(ex.case))
    ex.controls["head_dim"].value = 512
    ex.controls["rope_dim"].value = 64
    assert ex.error.value == "" and ex.good.call.form == "v2"
    z = np.asarray(ex.figures["visibility"].data[0].z)
    ancestors = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}}  # heap-shaped draft tree of 4 tokens
    for i in range(4):
        seen = [j for j in range(10) if j < 6 or (j - 6) in ancestors[i]]
        assert np.flatnonzero(z[i] == VISIBLE).tolist() == seen
    ex.tabs.selected_index = E.TABS.index("output")
    call = ex.good.call
    hidden = torch.tensor([[not (j < 6 or (j - 6) in ancestors[i]) for j in range(10)] for i in range(4)])
    q = torch.cat([call.query[0], call.options["query_rope"][0]], -1)
    k = torch.cat([call.key[0], call.options["key_rope"][0]], -1)
    p = golden_probabilities(q, k, 1 / (512 + 64) ** 0.5, hidden=hidden)
    expected = p @ call.value[0].double().repeat_interleave(2, 0)
    assert "attention_out, batch 0" in ex.figures["output"].layout.title.text  # pooled: 2 x 512 columns
    torch.testing.assert_close(ex.good.result.attention_out[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_mode_4_with_default_pre_next_tells_the_user_to_set_them():
    ex = E.explore(small_case())
    ex.controls["sparse_mode"].value = 4
    assert "set pre_tokens and next_tokens" in ex.hint.value
    assert "band hides no key" in ex.figures["visibility"].layout.title.text
    ex.controls["pre_tokens"].value = 1
    ex.controls["next_tokens"].value = 0
    assert "set pre_tokens" not in ex.hint.value


def test_row_status_strip_needs_no_call_and_matches_the_rule():
    ex = E.explore(small_case(q_lens=(7,), kv_lens=(4,), sparse_mode=3))
    strip = np.asarray(ex.figures["visibility"].data[1].z).ravel().tolist()
    assert strip == [2, 2, 2, 1, 1, 1, 1] and not ex.good.ran  # rows i < L_q - L_kv see no key (spec 7)


def test_in_band_scores_count_heads_times_band_pairs():
    problem = E.prepare(small_case(q_lens=(4,), kv_lens=(10,), sparse_mode=3)).problem
    assert E.in_band_scores(problem) == 2 * sum(i + 6 + 1 for i in range(4))  # row i sees keys 0..i+6, 2 heads
    problem = E.prepare(small_case(q_lens=(4, 3), kv_lens=(10, 2), sparse_mode=2)).problem
    assert E.in_band_scores(problem) == 2 * (sum(min(i + 1, 10) for i in range(4)) + sum(min(i + 1, 2) for i in range(3)))


def test_every_control_is_placed_once():
    ex = E.explore(small_case())
    placed = [name for column in E.CONTROL_COLUMNS for name in column]
    assert sorted(placed) == sorted(ex.controls) and len(placed) == len(set(placed))


def test_a_case_with_its_own_mask_tensor_redraws():
    mask = torch.zeros(1, 1, 4, 10, dtype=torch.bool)
    mask[..., 7:] = True  # hide keys 7..9
    ex = E.explore(small_case(mask=mask))
    assert ex.controls["mask"].value == E.CUSTOM_MASK
    assert visible_counts(ex.figures["visibility"].data[0].z) == [7, 7, 7, 7]
    ex.controls["sparse_mode"].value = 1  # mode 1: the mask only
    ex.controls["batch_shown"].value = 2
    assert ex.error.value == "" and visible_counts(ex.figures["visibility"].data[0].z) == [7, 7, 7, 7]


def test_the_route_line_follows_the_call_shown():
    # A decode step (BSND, MHA, D 128, batch 0 without keys) takes the FIA route (RouteToFia, arch22/
    # fused_infer_attention_score_tiling_v3.cpp:1371); packed as TND it meets the split-fuse conditions
    # (CheckSpecConditions, v3.cpp:1208) and takes that route, whose prefill-like kernel gives a batch without keys
    # LSE +inf (tests/test_route_display.py has the route of each look-alike).
    step = Case(q_lens=(1, 1), kv_lens=(0, 40), heads=4, kv_heads=4, head_dim=128, dtype=torch.float16,
                layout="BSND")
    ex = E.explore(step)
    assert "fia (the FIA checkers" in ex.route.value and "LSE -3.4e+38" in ex.route.value
    ex.controls["layout"].value = "TND"
    assert "split-fuse (the TND split-fuse checks" in ex.route.value and "LSE inf" in ex.route.value
    assert "rules of this route only:" in ex.route.value and "SF-MASK-003" in ex.route.value
    assert "host route split-fuse" in E.static_preview(ex.good)
    ex.controls["heads"].value = 3  # 3 query heads on 4 KV heads: refused; the line keeps the shown call's route
    assert ex.error.value and "split-fuse" in ex.route.value
