"""One pair per enforced rule of the kernel's rule book: a call that breaks exactly that rule, and a near-identical
call that satisfies every rule. The bad call's error carries the rule's id and kernel source (``fia_kit.rules``);
each pair's comment says what the kernel line checks. A last test makes sure no enforced rule lacks a pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import fia_kit
from fia_kit import FIAArgumentError
from fia_kit.masks import compressed_causal_mask
from fia_kit.rules import RULES, rule_by_id

H16, BF16 = torch.float16, torch.bfloat16
MASK2048 = compressed_causal_mask()


def t(*shape: int, dtype: torch.dtype = H16) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def v1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> Callable[[], Any]:
    return lambda: fia_kit.plan("v1", q, k, v, **kw)


def v2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> Callable[[], Any]:
    return lambda: fia_kit.plan("v2", q, k, v, **kw)


def on(product: str, make: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with fia_kit.target(product=product):
            return make()
    return run


# prefill BNSD, GQA
Q, K = t(2, 4, 4, 16), t(2, 2, 6, 16)
BNSD = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD")
# TND, GQA (split-fuse when the conditions hold)
QT, KT = t(5, 4, 64), t(7, 2, 64)
TND = dict(num_heads=4, num_key_value_heads=2, input_layout="TND", actual_seq_lengths=[2, 5],
           actual_seq_lengths_kv=[3, 7])
TND_V2 = dict(num_query_heads=4, num_key_value_heads=2, input_layout="TND", actual_seq_qlen=[2, 5],
              actual_seq_kvlen=[3, 7])
# decode MLA, D 512 + rope 64
QM, QRM, KM, KRM = t(1, 1, 4, 512), t(1, 1, 4, 64), t(1, 6, 1, 512), t(1, 6, 1, 64)
MLA = dict(query_rope=QRM, key_rope=KRM, num_heads=4, num_key_value_heads=1, input_layout="BSND")
# int8 K/V with a float query: the legacy routes
K8 = torch.zeros(1, 1, 6, 16, dtype=torch.int8)
ANTI = dict(num_key_value_heads=1, input_layout="BNSD", key_antiquant_scale=t(1, 1, 1, 16),
            value_antiquant_scale=t(1, 1, 1, 16))
# v2 MLA full quantisation (int8 query): the legacy-ifa route
FQ = dict(num_query_heads=4, num_key_value_heads=1, input_layout="BNSD", query_quant_mode=3,
          dequant_scale_key=torch.ones(1), dequant_scale_value=torch.ones(1))


def full_quant_mla(s_q: int, n_q: int = 4, **kw: Any) -> Callable[[], Any]:
    q = torch.zeros(1, n_q, s_q, 512, dtype=torch.int8)
    kv = torch.zeros(1, 1, 6, 512, dtype=torch.int8)
    return v2(q, kv, kv, **{**FQ, "num_query_heads": n_q, "query_rope": t(1, n_q, s_q, 64, dtype=BF16),
                            "key_rope": t(1, 1, 6, 64, dtype=BF16), "dequant_scale_query": torch.ones(1, n_q, s_q),
                            **kw})


PAGED_Q = t(2, 4, 4, 16)
CACHE = t(4, 2, 16, 16)
TABLE = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
PAGED = dict(BNSD, block_table=TABLE, block_size=16, actual_seq_lengths_kv=[20, 9])
PAD = dict(query_padding_size=torch.tensor([1]), kv_padding_size=torch.tensor([1]), actual_seq_lengths=[2, 3],
           actual_seq_lengths_kv=[4, 5])
PREFIX = dict(key_shared_prefix=t(1, 2, 3, 16), value_shared_prefix=t(1, 2, 3, 16))
QH, KH = t(2, 4, 64), t(2, 6, 32)  # BSH: S 4 / 6, H = N * D
SINK = dict(TND_V2, sparse_mode=2, atten_mask=MASK2048)  # sparse_mode 2 keeps a sink call on the FIA route

# rule id -> (bad call, good call). Comments: what the kernel line checks.
PAIRS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    # SparseMode only supports 0/1/2/3/4/9
    "FIA-MASK-001": (v1(Q, K, K, **BNSD, sparse_mode=5, atten_mask=MASK2048),
                     v1(Q, K, K, **BNSD, sparse_mode=3, atten_mask=MASK2048)),
    # sparse_mode != 0 needs atten_mask
    "FIA-MASK-002": (v1(Q, K, K, **BNSD, sparse_mode=3), v1(Q, K, K, **BNSD, sparse_mode=3, atten_mask=MASK2048)),
    # MLA D=512: sparse 0/3/4/9
    "FIA-MASK-004": (v1(QM, KM, KM, **MLA, sparse_mode=2, atten_mask=MASK2048),
                     v1(QM, KM, KM, **MLA, sparse_mode=3, atten_mask=MASK2048)),
    # Q/K D != V D: sparse 0/2/3 (TND, D 64/32)
    "FIA-MASK-005": (v1(QT, KT, t(7, 2, 32), **TND, sparse_mode=4, atten_mask=MASK2048),
                     v1(QT, KT, t(7, 2, 32), **TND, sparse_mode=3, atten_mask=MASK2048)),
    # modes 2-4 need the (2048, 2048) template
    "FIA-MASK-006": (v1(Q, K, K, **BNSD, sparse_mode=3, atten_mask=torch.ones(4, 6, dtype=torch.bool).triu(1)),
                     v1(Q, K, K, **BNSD, sparse_mode=3, atten_mask=MASK2048)),
    # S_q = 1 with int8 K/V: sparse 0
    "FIA-MASK-008": (v1(t(1, 4, 1, 16), K8, K8, num_heads=4, **ANTI, sparse_mode=3, atten_mask=MASK2048),
                     v1(t(1, 4, 1, 16), K8, K8, num_heads=4, **ANTI)),
    # legacy IFA MLA, S_q = 1: sparse 0
    "IFA-MASK-001": (full_quant_mla(1, sparse_mode=3, atten_mask=MASK2048), full_quant_mla(1)),
    # legacy IFA MLA, S_q > 1: sparse 3 (or 9)
    "IFA-MASK-002": (full_quant_mla(2, sparse_mode=4, atten_mask=MASK2048),
                     full_quant_mla(2, sparse_mode=3, atten_mask=MASK2048)),
    # -next_tokens > pre_tokens refused
    "FIA-TOKENS-001": (v1(Q, K, K, **BNSD, sparse_mode=4, atten_mask=MASK2048, pre_tokens=-2, next_tokens=1),
                       v1(Q, K, K, **BNSD, sparse_mode=4, atten_mask=MASK2048, pre_tokens=2, next_tokens=1)),
    # split-fuse: no mask -> sparse 0
    "SF-MASK-002": (v1(QT, KT, KT, **TND, sparse_mode=3), v1(QT, KT, KT, **TND, sparse_mode=3, atten_mask=MASK2048)),
    # split-fuse: a mask -> sparse 3 or 4
    "SF-MASK-003": (v1(QT, KT, KT, **TND, atten_mask=torch.zeros(2, 5, 7, dtype=torch.bool)),
                    v1(QT, KT, KT, **TND, sparse_mode=3, atten_mask=MASK2048)),
    # decode MLA: N_q in {1, 2, 4, ..., 128}
    "FIA-MLA-001": (v1(QM[:, :, :3], KM, KM, **{**MLA, "num_heads": 3, "query_rope": QRM[:, :, :3]}),
                    v1(QM, KM, KM, **MLA)),
    # decode MLA: N_kv = 1
    "FIA-MLA-002": (v1(QM, t(1, 6, 2, 512), t(1, 6, 2, 512), **{**MLA, "num_key_value_heads": 2,
                                                                 "key_rope": t(1, 6, 2, 64)}),
                    v1(QM, KM, KM, **MLA)),
    # the MLA D512 template takes no left padding
    "FIA-MLA-003": (v1(QM, KM, KM, **MLA, query_padding_size=torch.tensor([0]), actual_seq_lengths=[1]),
                    v1(QM, KM, KM, **MLA, actual_seq_lengths=[1])),
    # query_rope and key_rope together
    "FIA-ROPE-001": (v1(QM, KM, KM, **{**MLA, "key_rope": None}), v1(QM, KM, KM, **MLA)),
    # rope D 64
    "FIA-ROPE-002": (v1(QM, KM, KM, **{**MLA, "query_rope": t(1, 1, 4, 32)}), v1(QM, KM, KM, **MLA)),
    # with rope, Q/K D 128 or 512
    "FIA-ROPE-003": (v1(t(1, 1, 4, 256), t(1, 6, 1, 256), t(1, 6, 1, 256), **MLA), v1(QM, KM, KM, **MLA)),
    # rope dtype = the query's
    "FIA-ROPE-004": (v1(QM, KM, KM, **{**MLA, "query_rope": t(1, 1, 4, 64, dtype=BF16)}), v1(QM, KM, KM, **MLA)),
    # legacy IFA MLA: G in {1, 2, ..., 128}
    "IFA-MLA-001": (full_quant_mla(1, n_q=3), full_quant_mla(1, n_q=4)),
    # legacy IFA without rope: G <= 64
    "IFA-GQA-001": (v1(t(1, 128, 1, 16), K8, K8, num_heads=128, **ANTI),
                    v1(t(1, 64, 1, 16), K8, K8, num_heads=64, **ANTI)),
    # legacy PFA: G <= 64
    "PFA-GQA-001": (v1(t(1, 128, 3, 16), K8, K8, num_heads=128, **ANTI),
                    v1(t(1, 64, 3, 16), K8, K8, num_heads=64, **ANTI)),
    # legacy IFA: inner_precise 0 or 1 (a float decode on the FIA route takes 2)
    "IFA-PREC-001": (v1(t(1, 4, 1, 16), K8, K8, num_heads=4, **ANTI, inner_precise=2),
                     v1(t(1, 4, 1, 16), K8, K8, num_heads=4, **ANTI, inner_precise=1)),
    # B in (0, 65536]
    "FIA-AXIS-001": (v1(t(65537, 1, 1, 16), t(65537, 1, 2, 16), t(65537, 1, 2, 16), num_heads=1,
                        input_layout="BNSD"),
                     v1(t(2, 1, 1, 16), t(2, 1, 2, 16), t(2, 1, 2, 16), num_heads=1, input_layout="BNSD")),
    # Q/K D != V D: both <= 128 (TND: 192/160 is not the 192/128 pair)
    "FIA-AXIS-002": (v1(t(5, 4, 192), t(7, 2, 192), t(7, 2, 160), **TND),
                     v1(t(5, 4, 192), t(7, 2, 192), t(7, 2, 128), **TND)),
    # Q/K D != V D without rope: no LSE
    "FIA-LSE-001": (v1(QT, KT, t(7, 2, 32), **TND, softmax_lse_flag=True), v1(QT, KT, t(7, 2, 32), **TND)),
    # pse_shift: not with MLA
    "FIA-PSE-001": (v1(QM, KM, KM, **MLA, pse_shift=t(1, 4, 1, 6)), v1(QM, KM, KM, **MLA)),
    # pse_shift: not with BSH_BNSD / BSND_BNSD / packed
    "FIA-PSE-002": (v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH_BNSD",
                       pse_shift=t(2, 4, 4, 6)),
                    v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH", pse_shift=t(2, 4, 4, 6))),
    # pse_shift: not with Q/K D != V D (Ascend950 takes BNSD with different dims)
    "FIA-PSE-003": (on("Ascend950", v1(Q, K, t(2, 2, 6, 8), **BNSD, pse_shift=t(2, 4, 4, 6))),
                    on("Ascend950", v1(Q, K, t(2, 2, 6, 8), **BNSD))),
    # sink: bfloat16 on A2/A3
    "FIA-SINK-001": (v2(t(5, 4, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), **SINK,
                        learnable_sink=t(4)),
                     v2(t(5, 4, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), **SINK,
                        learnable_sink=t(4, dtype=BF16))),
    # sink: inner_precise 0
    "FIA-SINK-003": (v2(t(5, 4, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), **TND_V2,
                        inner_precise=1, learnable_sink=t(4, dtype=BF16)),
                     v2(t(5, 4, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), **TND_V2,
                        learnable_sink=t(4, dtype=BF16))),
    # sink: Q/K D in {64, 128, 192}, V D in {64, 128}
    "FIA-SINK-004": (v2(t(5, 4, 32, dtype=BF16), t(7, 2, 32, dtype=BF16), t(7, 2, 32, dtype=BF16), **SINK,
                        learnable_sink=t(4, dtype=BF16)),
                     v2(t(5, 4, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), t(7, 2, 64, dtype=BF16), **SINK,
                        learnable_sink=t(4, dtype=BF16))),
    # split-fuse: sink dtype = the query's (GQA TND, D 128, no mask: the split-fuse route)
    "SF-SINK-001": (v2(t(5, 4, 128), t(7, 2, 128), t(7, 2, 128), **TND_V2, learnable_sink=t(4, dtype=BF16)),
                    v2(t(5, 4, 128), t(7, 2, 128), t(7, 2, 128), **TND_V2, learnable_sink=t(4))),
    # split-fuse: sink needs inner_precise 0 (MHA float16 with inner_precise 2 stays on split-fuse)
    "SF-SINK-002": (v2(t(5, 2, 128), t(7, 2, 128), t(7, 2, 128), **{**TND_V2, "num_query_heads": 2},
                       inner_precise=2, learnable_sink=t(2)),
                    v2(t(5, 2, 128), t(7, 2, 128), t(7, 2, 128), **{**TND_V2, "num_query_heads": 2},
                       learnable_sink=t(2))),
    # shared prefix: not with paging
    "FIA-PREFIX-001": (v1(PAGED_Q, CACHE, CACHE, **PAGED, **PREFIX), v1(Q, K, K, **BNSD, **PREFIX)),
    # shared prefix: not with BSH_BNSD / BSND_BNSD / packed
    "FIA-PREFIX-002": (v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH_BNSD",
                          key_shared_prefix=t(1, 3, 32), value_shared_prefix=t(1, 3, 32)),
                       v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH",
                          key_shared_prefix=t(1, 3, 32), value_shared_prefix=t(1, 3, 32))),
    # shared prefix: not with MLA
    "FIA-PREFIX-003": (v1(QM, KM, KM, **MLA, key_shared_prefix=t(1, 3, 1, 512), value_shared_prefix=t(1, 3, 1, 512)),
                       v1(QM, KM, KM, **MLA)),
    # shared prefix: not with left padding
    "FIA-PREFIX-004": (v1(Q, K, K, **BNSD, **PREFIX, **PAD), v1(Q, K, K, **BNSD, **PREFIX)),
    # left padding: not with paging
    "FIA-PAD-001": (v1(PAGED_Q, CACHE, CACHE, **{**PAGED, **PAD, "actual_seq_lengths_kv": [20, 9]}),
                    v1(Q, K, K, **BNSD, **PAD)),
    # left padding: not with BSH_BNSD / BSND_BNSD / packed
    "FIA-PAD-002": (v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH_BNSD", **PAD),
                    v1(QH, KH, KH, num_heads=4, num_key_value_heads=2, input_layout="BSH", **PAD)),
    # block_table int32
    "FIA-PA-001": (v1(PAGED_Q, CACHE, CACHE, **{**PAGED, "block_table": TABLE.long()}),
                   v1(PAGED_Q, CACHE, CACHE, **PAGED)),
    # paged attention needs actual_seq_lengths_kv
    "FIA-PA-002": (v1(PAGED_Q, CACHE, CACHE, **{**PAGED, "actual_seq_lengths_kv": None}),
                   v1(PAGED_Q, CACHE, CACHE, **PAGED)),
    # block_size a multiple of 16
    "FIA-PA-003": (v1(PAGED_Q, t(4, 2, 24, 16), t(4, 2, 24, 16), **{**PAGED, "block_size": 24}),
                   v1(PAGED_Q, CACHE, CACHE, **PAGED)),
}

# v2 MLA full quantisation with TND and a paged latent cache (vLLM's pattern, tests/test_quant.py)
TND_FQ = dict(num_query_heads=4, num_key_value_heads=1, input_layout="TND", query_quant_mode=3,
              query_rope=t(3, 4, 64, dtype=BF16), key_rope=t(4, 16, 64, dtype=BF16),
              dequant_scale_query=torch.ones(3, 4), dequant_scale_key=torch.ones(1), dequant_scale_value=torch.ones(1),
              actual_seq_qlen=[1, 3], actual_seq_kvlen=[20, 10], block_table=torch.tensor([[0, 1], [2, 3]],
                                                                                          dtype=torch.int32),
              block_size=16)
_FQ_TND = (torch.zeros(3, 4, 512, dtype=torch.int8), torch.zeros(4, 16, 512, dtype=torch.int8))
# legacy IFA MLA with TND: sparse 0 without a mask, 3 or 9
PAIRS["IFA-MASK-003"] = (v2(_FQ_TND[0], _FQ_TND[1], _FQ_TND[1], **TND_FQ, atten_mask=MASK2048),
                         v2(_FQ_TND[0], _FQ_TND[1], _FQ_TND[1], **TND_FQ, sparse_mode=3, atten_mask=MASK2048))


@pytest.mark.parametrize("rule_id", sorted(PAIRS))
def test_pair(rule_id: str) -> None:
    """The bad call is refused citing the rule's id and kernel source; the near-identical good call is accepted."""
    bad, good = PAIRS[rule_id]
    rule = rule_by_id(rule_id)
    with pytest.raises(FIAArgumentError) as err:
        bad()
    assert (err.value.rule_id, err.value.source) == (rule.id, rule.source), str(err.value)
    assert rule.id in str(err.value) and rule.source in str(err.value)
    good()


def test_every_enforced_rule_has_a_pair() -> None:
    enforced = {r.id for r in RULES if r.status == "enforced"} - {"FIA-MASK-003"}  # a rewrite: test_rules_routes
    assert enforced == set(PAIRS), (enforced - set(PAIRS), set(PAIRS) - enforced)


def test_decode_mla_deepseek_shape_is_accepted_and_computed() -> None:
    """N_q 128, N_kv 1, D 512 + rope 64, paged, float K/V: G = 128 (common_checker.cpp:1131 allows 128; the
    FIA route has no G <= 64), computed against a float64 golden written here."""
    gen = torch.Generator().manual_seed(3)
    n_q, bs, lens = 128, 16, [20, 7]
    q = torch.randn(2, 1, n_q, 512, generator=gen, dtype=torch.float64) * 0.05
    qr = torch.randn(2, 1, n_q, 64, generator=gen, dtype=torch.float64) * 0.05
    cache = torch.randn(4, bs, 512, generator=gen, dtype=torch.float64)
    cache_rope = torch.randn(4, bs, 64, generator=gen, dtype=torch.float64)
    table = torch.tensor([[2, 0], [3, 1]], dtype=torch.int32)
    kw = dict(query_rope=qr, key_rope=cache_rope, num_heads=n_q, num_key_value_heads=1, input_layout="BSND",
              block_table=table, block_size=bs, actual_seq_lengths_kv=lens, scale=0.07)
    p = fia_kit.plan("v1", q, cache, cache, **kw)
    assert p.route == "fia" and p.group_size == 128
    out, _ = fia_kit.reference.npu_fused_infer_attention_score(q, cache, cache, **kw)
    for b, n in enumerate(lens):
        keys = cache[table[b].long()].reshape(-1, 512)[:n]
        ropes = cache_rope[table[b].long()].reshape(-1, 64)[:n]
        scores = 0.07 * (q[b, 0] @ keys.T + qr[b, 0] @ ropes.T)  # (N_q, L_kv)
        torch.testing.assert_close(out[b, 0], torch.softmax(scores, -1) @ keys)


def test_float_decode_takes_inner_precise_2_on_the_fia_route() -> None:
    """The FIA checker allows inner_precise in [0, 4] (common_checker.cpp:1279) and the legacy IFA's 0/1 rule
    (incre_flash_attention_tiling.cpp:620) is not on this route: a fully masked decode row is 0 with the row-invalid
    correction (2) and the mean of V without it (0) (spec 7)."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 1, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 4, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.ones(1, 4, dtype=torch.bool)
    run = fia_kit.reference.npu_fused_infer_attention_score
    kw = dict(num_heads=2, input_layout="BNSD", atten_mask=mask)
    assert fia_kit.plan("v1", q, k, v, **kw, inner_precise=2).route == "fia"
    out2, _ = run(q, k, v, **kw, inner_precise=2)
    out0, _ = run(q, k, v, **kw, inner_precise=0)
    assert not out2.any()
    torch.testing.assert_close(out0, v.mean(dim=2, keepdim=True))
