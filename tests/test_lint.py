"""fia_kit.lint: every refusal of a call, and each pitfall of spec 25.5 with a triggering and a near-identical clean
call (the clean call gives no finding at all)."""

from __future__ import annotations

import pytest
import torch

import fia_kit
from fia_kit.call import parse_call
from fia_kit.case import Case
from fia_kit.lint import RULES, Finding
from fia_kit.masks import compressed_causal_mask


def _args(**changes):
    built = Case(**{"dtype": torch.float32, **changes}).build("v1")  # the rules below are written for float32
    return built.query, built.key, built.value, dict(built.kwargs)


def _rules(findings: list[Finding]) -> list[str]:
    return [f.rule for f in findings]


PREFILL = {}  # B=2, S_q=6, S_kv=12, q_lens (6, 4), kv_lens (9, 12), BNSD, N_q=2, N_kv=1, D=16, scale 1/4
DECODE = {"q_lens": (1, 1)}
TND = {"layout": "TND", "q_lens": (3, 5), "kv_lens": (4, 6)}

_causal_drop = torch.ones(6, 12, dtype=torch.bool).triu(7)  # FIA polarity: True above the right-down diagonal
_causal_keep = ~_causal_drop  # SDPA polarity: True on and below it
_pad_keep = torch.stack([torch.arange(12) < n for n in (9, 12)])[:, None, None, :].expand(2, 1, 6, 12)
_decode_hide_first = torch.zeros(2, 12, dtype=torch.bool)
_decode_hide_first[:, 0] = True
_decode_hide_pad = torch.stack([torch.arange(12) >= n for n in (9, 12)])
PAGED_TND = {"layout": "TND", "q_lens": (3, 5), "kv_lens": (20, 30), "paged": True, "block_size": 16}
_wide_table = torch.cat([_args(**PAGED_TND)[3]["block_table"], torch.zeros(2, 3, dtype=torch.int32)], dim=1)
_diagonal_keep = torch.zeros(6, 12, dtype=torch.bool)  # a keep-mask of the diagonal and a stripe: True = attend
_diagonal_keep[:, ::3] = True
_diagonal_keep[torch.arange(6), torch.arange(6) + 3] = True  # bottom-right diagonal of batch 0 (6 rows, 9 keys)
_diagonal_keep[torch.arange(4), torch.arange(4) + 8] = True  # ... and of batch 1 (4 rows, 12 keys)

# rule, base case, keywords that trigger it, keywords of the near-identical clean call, graph
CASES = [
    ("scale-one", PREFILL, {"scale": 1.0}, {"scale": 0.25}),
    ("mask-all-true", PREFILL, {"atten_mask": torch.ones(2, 1, 6, 12, dtype=torch.bool)},
     {"atten_mask": _causal_drop.expand(2, 1, 6, 12)}),
    ("mask-keep-polarity", PREFILL, {"atten_mask": _causal_keep.expand(2, 1, 6, 12)},
     {"atten_mask": _causal_drop.expand(2, 1, 6, 12)}),
    ("mask-keep-polarity", PREFILL, {"atten_mask": _pad_keep}, {"atten_mask": ~_pad_keep}),
    ("decode-mask-rank", DECODE, {"atten_mask": _decode_hide_first[:1].reshape(1, 1, 1, 12)},
     {"atten_mask": _decode_hide_first}),
    ("band-default", PREFILL, {"sparse_mode": 4, "atten_mask": compressed_causal_mask()},
     {"sparse_mode": 4, "atten_mask": compressed_causal_mask(), "pre_tokens": 4, "next_tokens": 0}),
    ("band-ignored", PREFILL, {"pre_tokens": 4}, {}),
    ("band-ignored", PREFILL, {"sparse_mode": 3, "atten_mask": compressed_causal_mask(), "next_tokens": 0},
     {"sparse_mode": 3, "atten_mask": compressed_causal_mask()}),
    ("band-ignored", DECODE, {"pre_tokens": 4, "next_tokens": 0}, {}),
    ("lengths-leading-zero", TND, {"actual_seq_lengths": [0, 3, 8], "actual_seq_lengths_kv": [0, 4, 10]},
     {"actual_seq_lengths": [3, 8], "actual_seq_lengths_kv": [4, 10]}),
    ("query-past-lengths", TND, {"actual_seq_lengths": [3, 7]}, {"actual_seq_lengths": [3, 8]}),
    ("decode-mask-noop", DECODE, {"atten_mask": _decode_hide_pad}, {"atten_mask": _decode_hide_first}),
    ("decode-mask-noop", DECODE, {"sparse_mode": 3, "atten_mask": compressed_causal_mask()}, {"sparse_mode": 0}),
    ("paged-cumulative-kv", PAGED_TND, {"block_table": _wide_table, "actual_seq_lengths_kv": [20, 50]},
     {"block_table": _wide_table, "actual_seq_lengths_kv": [20, 30]}),
    ("mask-diagonal-hidden", PREFILL, {"atten_mask": _diagonal_keep.expand(2, 1, 6, 12)},
     {"atten_mask": ~_diagonal_keep.expand(2, 1, 6, 12)}),
]


@pytest.mark.parametrize("rule, base, trigger, clean", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_pitfall_warns_and_its_clean_twin_does_not(rule, base, trigger, clean):
    q, k, v, kw = _args(**base)
    found = fia_kit.lint("v1", q, k, v, **{**kw, **trigger})
    assert [(f.severity, f.rule) for f in found] == [("warning", rule)] * len(found) and found, found
    assert "spec " in found[0].message and "Fix:" in found[0].message
    assert fia_kit.lint("v1", q, k, v, **{**kw, **clean}) == []


def test_every_rule_is_tested():
    tested = {c[0] for c in CASES} | {"graph-list-lengths", "pse-rank", "not-checked"}  # the last: test_capture
    assert tested == set(RULES)


def test_a_wide_4d_decode_mask_warns_even_for_one_batch():
    q, k, v, kw = _args(q_lens=(1,), kv_lens=(600,))
    mask = torch.zeros(1, 600, dtype=torch.bool)
    mask[0, 0] = True
    assert _rules(fia_kit.lint("v1", q, k, v, **kw, atten_mask=mask.reshape(1, 1, 1, 600))) == ["decode-mask-rank"]
    assert fia_kit.lint("v1", q, k, v, **kw, atten_mask=mask) == []


def test_list_lengths_in_graph_mode():
    q, k, v, kw = _args(**TND)
    tensors = {n: torch.tensor(x) if n.startswith("actual") else x for n, x in kw.items()}
    found = fia_kit.lint("torchair.v1", q, k, v, **kw)
    assert _rules(found) == ["graph-list-lengths"] * 2
    assert [f.parameter for f in found] == ["actual_seq_lengths", "actual_seq_lengths_kv"]
    assert fia_kit.lint("torchair.v1", q, k, v, **tensors) == []
    assert _rules(fia_kit.lint("v1", q, k, v, graph=True, **kw)) == ["graph-list-lengths"] * 2
    assert fia_kit.lint("v1", q, k, v, **kw) == []  # eager: lists are what torch_npu takes


def test_pse_without_its_head_axis():
    q, k, v, kw = _args(pse=True)
    pse = kw.pop("pse_shift")
    found = fia_kit.lint("v1", q, k, v, **kw, pse_shift=pse[:, :1])
    assert [(f.severity, f.rule, f.parameter) for f in found] == [("error", "pse-rank", "pse_shift")]
    assert fia_kit.lint("v1", q, k, v, **kw, pse_shift=pse) == []


def test_all_refusals_are_reported_not_only_the_first():
    q, k, v, kw = _args()
    pse = torch.zeros(2, 2, 6, 12, dtype=torch.float16)  # wrong dtype for a float32 query
    found = fia_kit.lint("v1", q, k, v, **{**kw, "sparse_mode": 7, "pse_shift": pse, "inner_precise": 9,
                                            "scale": float("nan")})
    assert [(f.severity, f.parameter) for f in found] == [("error", "sparse_mode"), ("error", "pse_shift"),
                                                          ("error", "inner_precise"), ("error", "scale")]
    assert all(f.rule.startswith("refused-") and "spec " in f.message for f in found)
    with pytest.raises(fia_kit.FIAArgumentError, match="sparse_mode"):  # the op refuses the first of them
        fia_kit.run(parse_call("v1", q, k, v, {**kw, "sparse_mode": 7}), "reference")


def test_a_fix_does_not_invent_follow_on_errors():
    q, k, v, kw = _args()
    found = fia_kit.lint("v1", q, k, v, **{**kw, "sparse_mode": 3})  # mode 3 without its compressed mask
    assert [(f.severity, f.parameter) for f in found] == [("error", "atten_mask")]


@pytest.mark.parametrize("call", [
    lambda q, k, v, kw: fia_kit.lint("v1", "not a tensor", k, v, **kw),
    lambda q, k, v, kw: fia_kit.lint("v1", q, k, v, **kw, num_head=2),
    lambda q, k, v, kw: fia_kit.lint("v9", q, k, v, **kw),
    lambda q, k, v, kw: fia_kit.lint(object()),
    lambda q, k, v, kw: fia_kit.lint("v1", q[0], k, v, **kw),
])
def test_lint_never_raises(call):
    q, k, v, kw = _args()
    found = call(q, k, v, kw)
    assert found and all(f.severity == "error" for f in found)


def test_v2_spelling_and_other_targets():
    q, k, v, kw = _args()
    v2 = Case().build("v2")
    found = fia_kit.lint("v2", v2.query, v2.key, v2.value, **{**v2.kwargs, "softmax_scale": 1.0,
                                                               "actual_seq_kvlen": [13, 12]})
    assert [(f.severity, f.parameter) for f in found] == [("error", "actual_seq_kvlen"), ("warning", "softmax_scale")]
    assert fia_kit.lint(fia_kit.plan("v1", q, k, v, **kw)) == []
    assert _rules(fia_kit.lint(Case(scale=1.0))) == ["scale-one"]
    assert str(fia_kit.lint(Case(scale=1.0))[0]).startswith("warning: scale: [scale-one]")


def test_neutralised_arguments_take_values_the_tensors_agree_with():
    q, k, v, kw = _args(layout="TND", q_lens=(5, 9, 3), kv_lens=(5, 9, 3), paged=True, block_size=128,
                        cache_rank=3, head_dim=64, sparse_mode=3)
    found = fia_kit.lint("v1", q, k, v, **{**kw, "actual_seq_lengths": [5, 9, 3], "block_size": 64})
    assert [f.parameter for f in found] == ["block_size", "actual_seq_lengths"]
    assert "[5, 14, 17]" in found[1].message  # the hint of the refusal
    found = fia_kit.lint("v1", q, k, v, **{**kw, "num_heads": 3, "num_key_value_heads": 3, "inner_precise": 7})
    assert [f.parameter for f in found] == ["num_heads", "num_key_value_heads", "inner_precise"]
