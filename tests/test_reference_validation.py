"""One test per rule the op enforces (spec 1.3, 4-14, 18): FIAArgumentError naming the keyword the caller used.

Every bad call must fail before compute with FIAArgumentError (a ValueError), never a bare IndexError/RuntimeError;
``pytest.raises(FIAArgumentError)`` lets any other exception fail the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from fia_kit.errors import FIAArgumentError
from fia_kit.masks import compressed_causal_mask
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2

H16 = torch.float16
g = torch.Generator().manual_seed(0)


def t(*shape: int, dtype: torch.dtype = H16) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(dtype)


# A valid prefill call: B=2, N_q=4, N_kv=2, S_q=5, S_kv=7, D=16, BNSD.
Q, K, V = t(2, 4, 5, 16), t(2, 2, 7, 16), t(2, 2, 7, 16)
BASE = dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD")
BASE_V2 = dict(num_query_heads=4, num_key_value_heads=2, input_layout="BNSD")
# Packed: two batches, T_q = 5, T_kv = 7.
QT, KT, VT = t(5, 4, 16), t(7, 2, 16), t(7, 2, 16)
TND = dict(num_heads=4, num_key_value_heads=2, input_layout="TND", actual_seq_lengths=[2, 5],
           actual_seq_lengths_kv=[3, 7])
# Paged: 6 blocks of 16 tokens, BnNBsD cache.
KC, VC = t(6, 2, 16, 16), t(6, 2, 16, 16)
TABLE = torch.tensor([[0, 3], [5, 1]], dtype=torch.int32)
PAGED = dict(BASE, block_table=TABLE, block_size=16, actual_seq_lengths_kv=[20, 9])
MASK = torch.zeros(2, 5, 7, dtype=torch.bool)
CMASK = compressed_causal_mask()


def call(fn: Callable, q: torch.Tensor = Q, k: torch.Tensor = K, v: torch.Tensor = V, base: dict = BASE,
         **kw: Any) -> Callable[[], Any]:
    return lambda: fn(q, k, v, **{**base, **kw})


def rope_call(d: int = 128, n_kv: int = 1, layout: str = "BNSD", s_q: int = 2, qr_d: int = 64, kr_d: int = 64,
              **kw: Any) -> Callable[[], Any]:
    q, k = t(1, 2, s_q, d), t(1, n_kv, 6, d)
    qr, kr = t(1, 2, s_q, qr_d), t(1, n_kv, 6, kr_d)
    if layout.startswith("BSND"):
        q, k, qr, kr = (x.transpose(1, 2) for x in (q, k, qr, kr))
    return lambda: fia_v2(q, k, k, query_rope=qr, key_rope=kr, num_query_heads=2, num_key_value_heads=n_kv,
                          input_layout=layout, **kw)


def prefix_call(kp: torch.Tensor | None = None, vp: torch.Tensor | None = None, **kw: Any) -> Callable[[], Any]:
    return call(fia, key_shared_prefix=kp, value_shared_prefix=vp, **kw)


KP, VP = t(1, 2, 4, 16), t(1, 2, 4, 16)

CASES = [
    # --- keywords and aliases (spec 1.1-1.3)
    ("unknown_v1_gets_v2_hint", call(fia, num_query_heads=4), "num_query_heads", "not a keyword of the v1",
     "num_heads"),
    ("unknown_v2_gets_v1_hint", call(fia_v2, base=BASE_V2, softmax_lse_flag=True), "softmax_lse_flag",
     "not a keyword of the v2", "return_softmax_lse"),
    ("typo_gets_suggestion", call(fia, sparse_mod=0), "sparse_mod", "not a keyword", "sparse_mode"),
    ("v2_both_alias_spellings", call(fia_v2, base=BASE_V2, actual_seq_qlen=[5], actual_seq_lengths=[5]),
     "actual_seq_qlen + actual_seq_lengths", "both name", None),
    ("v2_both_kv_alias_spellings", call(fia_v2, base=BASE_V2, actual_seq_lengths_kv=[5], actual_seq_kvlen=[5]),
     "actual_seq_lengths_kv + actual_seq_kvlen", "both name", None),
    # --- layout, ranks, dtypes, heads (spec 4, 10, 17)
    ("layout_name", call(fia, input_layout="SBH"), "input_layout", "must be one of", None),
    ("query_rank", call(fia, q=Q[0]), "query", "4-D query", None),
    ("key_rank", call(fia, k=K[0], v=V[0]), "key", "rank", None),
    ("value_rank", call(fia, v=V[0]), "value", "rank", None),
    ("key_dtype_mismatch", call(fia, k=K.bfloat16()), "key", "dtype", None),
    ("num_heads_vs_axis", call(fia, num_heads=3), "num_heads", "N axis", None),
    ("num_query_heads_vs_axis", call(fia_v2, base=BASE_V2, num_query_heads=8), "num_query_heads", "N axis", None),
    ("gqa_divisibility", call(fia, q=Q.transpose(1, 2).reshape(2, 5, 64), k=t(2, 7, 48), v=t(2, 7, 48),
                              input_layout="BSH", num_key_value_heads=3), "num_key_value_heads", "divide", None),
    ("kv_heads_default_zero_means_nq", call(fia, num_key_value_heads=0), "num_key_value_heads", "2 heads",
     "0 means"),
    ("value_shape", call(fia, v=t(2, 2, 6, 16)), "value", "shape", None),
    ("key_batch", call(fia, k=t(3, 2, 7, 16), v=t(3, 2, 7, 16)), "key", "batch", None),
    ("key_head_dim", call(fia, k=t(2, 2, 7, 32), v=t(2, 2, 7, 32)), "key", "head dim", None),
    # --- actual lengths (spec 5)
    ("lengths_too_few", call(fia, q=t(3, 4, 5, 16), k=t(3, 2, 7, 16), v=t(3, 2, 7, 16), actual_seq_lengths=[5, 5]),
     "actual_seq_lengths", "at least batch size", None),
    ("lengths_negative", call(fia, actual_seq_lengths=[-1, 5]), "actual_seq_lengths", r"\[0, S_q=5\]", None),
    ("lengths_above_s", call(fia, actual_seq_lengths_kv=[8]), "actual_seq_lengths_kv", r"\[0, S_kv=7\]", None),
    ("v2_lengths_above_s", call(fia_v2, base=BASE_V2, actual_seq_kvlen=[8]), "actual_seq_kvlen", "S_kv=7", None),
    ("lengths_float_tensor", call(fia, actual_seq_lengths=torch.tensor([5.0, 5.0])), "actual_seq_lengths",
     "integer dtype", None),
    ("lengths_not_ints", call(fia, actual_seq_lengths=[5, 2.5]), "actual_seq_lengths", "int", None),
    ("tnd_decreasing_cumulative", call(fia, q=QT, k=KT, v=VT, base=TND, actual_seq_lengths=[3, 2]),
     "actual_seq_lengths", "CUMULATIVE", r"running sum \[3, 5\]"),
    ("tnd_without_lengths", call(fia, q=QT, k=KT, v=VT, base=TND, actual_seq_lengths=None), "actual_seq_lengths",
     "required for packed", None),
    ("tnd_without_kv_lengths", call(fia, q=QT, k=KT, v=VT, base=TND, actual_seq_lengths_kv=None),
     "actual_seq_lengths_kv", "required", None),
    ("tnd_kv_count", call(fia, q=QT, k=KT, v=VT, base=TND, actual_seq_lengths_kv=[7]), "actual_seq_lengths_kv",
     "as many", None),
    ("tnd_beyond_t", call(fia, q=QT, k=KT, v=VT, base=TND, actual_seq_lengths=[2, 6]), "actual_seq_lengths",
     "T_q=5", None),
    # --- paging (spec 11)
    ("block_table_dtype", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE.long()), "block_table", "int32",
     None),
    ("block_table_rank", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE[0]), "block_table", "2-D", None),
    ("block_table_rows", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE[:1]), "block_table", "one row per",
     None),
    ("block_table_too_narrow", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE[:, :1]),
     "actual_seq_lengths_kv", r"block capacity=16", None),  # kv lengths must fit block_table.shape[1]*block_size
    ("block_id_beyond_cache", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE + 5), "block_table",
     "6 blocks", None),
    ("block_id_negative", call(fia, k=KC, v=VC, base=PAGED, block_table=TABLE - 2), "block_table", "block ids",
     None),
    ("block_size_zero", call(fia, k=KC, v=VC, base=PAGED, block_size=0), "block_size", "> 0", None),
    ("block_size_not_16", call(fia, k=t(6, 2, 24, 16), v=t(6, 2, 24, 16), base=PAGED, block_size=24), "block_size",
     "multiple of 16", None),
    ("block_size_vs_cache", call(fia, k=KC, v=VC, base=PAGED, block_size=32), "block_size", "block axis", None),
    ("paged_without_kv_lengths", call(fia, k=KC, v=VC, base=PAGED, actual_seq_lengths_kv=None),
     "actual_seq_lengths_kv", "required with paged", None),
    ("v2_paged_without_kv_lengths", call(fia_v2, k=KC, v=VC, base=BASE_V2, block_table=TABLE, block_size=16),
     "actual_seq_kvlen", "required with paged", None),
    ("paged_kv_length_beyond_capacity", call(fia, k=KC, v=VC, base=PAGED, actual_seq_lengths_kv=[33, 9]),
     "actual_seq_lengths_kv", "capacity", None),
    ("paged_cache_rank", call(fia, k=KC[0, 0], v=VC[0, 0], base=PAGED), "key", "paged cache", None),
    # --- sparse mode and masks (spec 6)
    ("sparse_mode_negative", call(fia, sparse_mode=-1, atten_mask=MASK), "sparse_mode", "0-4", None),
    *[(f"sparse_mode_{m}", call(fia, sparse_mode=m, atten_mask=MASK), "sparse_mode", "0-4", None)
      for m in (5, 6, 7, 8, 10)],
    ("sparse_mode_9_v1", call(fia, sparse_mode=9, atten_mask=MASK), "sparse_mode", "v2 only", None),
    *[(f"mode_{m}_without_mask", call(fia, sparse_mode=m), "atten_mask", f"sparse_mode is {m}", None)
      for m in (1, 2, 3, 4)],
    ("compressed_mask_shape", call(fia, sparse_mode=3, atten_mask=CMASK[:1024, :1024]), "atten_mask", "2048",
     None),
    ("compressed_mask_with_batch", call(fia, sparse_mode=2, atten_mask=CMASK.expand(2, 2048, 2048)), "atten_mask",
     "2048", None),
    ("compressed_mask_content", call(fia, sparse_mode=4, atten_mask=~CMASK), "atten_mask", "triu", None),
    ("mask_float_dtype", call(fia, atten_mask=MASK.half()), "atten_mask", "bool, int8 or uint8", None),
    ("mask_int8_values", call(fia, atten_mask=(MASK.to(torch.int8) + 2)), "atten_mask", "only 0 and 1", None),
    ("mask_head_axis", call(fia, atten_mask=torch.zeros(2, 4, 5, 7, dtype=torch.bool)), "atten_mask",
     "no head axis", None),
    ("mask_batch", call(fia, atten_mask=torch.zeros(3, 5, 7, dtype=torch.bool)), "atten_mask", "B = 2", None),
    ("mask_query_axis", call(fia, atten_mask=MASK[:, :4]), "atten_mask", "query axis", None),
    ("mask_key_axis", call(fia, atten_mask=MASK[:, :, :6]), "atten_mask", "key axis", None),
    ("mask_key_axis_with_prefix", prefix_call(KP, VP, atten_mask=torch.zeros(2, 5, 10, dtype=torch.bool)),
     "atten_mask", "= 11", None),
    ("mask_key_axis_paged_capacity", call(fia, k=KC, v=VC, base=PAGED, atten_mask=torch.zeros(2, 5, 31,
                                                                                               dtype=torch.bool)),
     "atten_mask", "block_size = 32", None),
    # GQA TND with sparse_mode 0 and a mask takes the split-fuse route, which refuses any mask with sparse_mode 0
    # (fused_infer_attention_score_tiling.cpp:1351); with MHA the call takes the FIA route and its 2-D mask rule
    ("mask_with_mode_0_on_split_fuse", call(fia, q=QT, k=KT, v=VT, base=TND,
                                            atten_mask=torch.zeros(5, 7, dtype=torch.bool)),
     "sparse_mode + atten_mask", "split-fuse", None),
    ("mask_2d_for_tnd", call(fia, q=t(5, 2, 16), k=KT, v=VT, base=dict(TND, num_heads=2),
                             atten_mask=torch.zeros(5, 7, dtype=torch.bool)), "atten_mask", "2-D", None),
    ("decode_mask_shape", call(fia, q=t(2, 4, 1, 16), atten_mask=torch.zeros(2, 2, 7, dtype=torch.bool)),
     "atten_mask", "S_q == 1", None),
    # --- pre/next (spec 6.3)
    ("pre_next_both_negative", call(fia, atten_mask=MASK, pre_tokens=-1, next_tokens=-1),
     "pre_tokens + next_tokens", "both be negative", None),
    ("no_band", call(fia, atten_mask=MASK, pre_tokens=1, next_tokens=-3), "pre_tokens + next_tokens",
     "no band", None),
    ("mode0_pre_too_negative", call(fia, atten_mask=MASK, pre_tokens=-7, next_tokens=10), "pre_tokens",
     r"-\(L_kv \+ P\) = -7", None),
    ("mode0_next_too_negative", call(fia, atten_mask=MASK, pre_tokens=10, next_tokens=-5), "next_tokens",
     "L_q = 5", None),
    ("mode4_pre", call(fia, sparse_mode=4, atten_mask=CMASK, pre_tokens=-5, next_tokens=10), "pre_tokens",
     "-L_q = -5", None),
    ("mode4_next", call(fia, sparse_mode=4, atten_mask=CMASK, pre_tokens=10, next_tokens=-7), "next_tokens",
     "= -7", None),
    ("mode4_no_band", call(fia, sparse_mode=4, atten_mask=CMASK, pre_tokens=-2, next_tokens=1),
     "pre_tokens + next_tokens", "band", None),
    # --- pse_shift (spec 9)
    ("pse_dtype", call(fia, pse_shift=t(2, 4, 5, 7, dtype=torch.float32)), "pse_shift", "dtype", None),
    ("pse_rank", call(fia, pse_shift=t(4, 5, 7)), "pse_shift", "per-head", None),
    ("pse_head_axis", call(fia, pse_shift=t(2, 1, 5, 7)), "pse_shift", "N_q=4", None),
    ("pse_batch", call(fia, pse_shift=t(3, 4, 5, 7)), "pse_shift", "B or 1", None),
    ("pse_too_small", call(fia, pse_shift=t(2, 4, 5, 6)), "pse_shift", "at least", None),
    ("pse_with_tnd", call(fia, q=QT, k=KT, v=VT, base=TND, pse_shift=t(2, 4, 5, 7)), "pse_shift", "packed", None),
    # --- learnable_sink (spec 13)
    ("sink_layout", call(fia_v2, base=BASE_V2, learnable_sink=t(4, dtype=torch.bfloat16)), "learnable_sink",
     "TND", None),
    ("sink_shape", call(fia_v2, q=QT, k=KT, v=VT, base=dict(BASE_V2, input_layout="TND", actual_seq_qlen=[2, 5],
                                                            actual_seq_kvlen=[3, 7]),
                        learnable_sink=t(2, dtype=torch.bfloat16)), "learnable_sink", r"\(4,\)", None),
    ("sink_dtype", call(fia_v2, q=QT, k=KT, v=VT, base=dict(BASE_V2, input_layout="TND", actual_seq_qlen=[2, 5],
                                                            actual_seq_kvlen=[3, 7]),
                        learnable_sink=t(4, dtype=torch.float32)), "learnable_sink", "bfloat16", None),
    ("sink_value_dim", call(fia_v2, q=t(5, 4, 256), k=t(7, 2, 256), v=t(7, 2, 256),
                            base=dict(BASE_V2, input_layout="TND", actual_seq_qlen=[2, 5], actual_seq_kvlen=[3, 7]),
                            learnable_sink=t(4)), "learnable_sink", "<= 128", None),
    # --- inner_precise, scale, LSE flag (spec 7, 8, 18.5)
    ("inner_precise_range", call(fia, inner_precise=4), "inner_precise", "one of", None),
    # S_q = 1 with 2/3 is refused only on the legacy-ifa route (incre_flash_attention_tiling.cpp:620); a float
    # decode takes the FIA route, whose checker allows [0, 4] (common_checker.cpp:1279): int8 K/V here
    ("inner_precise_decode", call(fia, q=t(1, 4, 1, 16), k=torch.zeros(1, 2, 7, 16, dtype=torch.int8),
                                  v=torch.zeros(1, 2, 7, 16, dtype=torch.int8), inner_precise=2,
                                  key_antiquant_scale=t(1, 2, 1, 16), value_antiquant_scale=t(1, 2, 1, 16)),
     "inner_precise", "legacy-ifa", None),
    ("scale_nan", call(fia, scale=float("nan")), "scale", "finite", None),
    ("v2_softmax_scale_inf", call(fia_v2, base=BASE_V2, softmax_scale=float("inf")), "softmax_scale", "finite",
     None),
    # --- MLA rope (spec 12)
    ("query_rope_alone", call(fia_v2, base=BASE_V2, query_rope=t(2, 4, 5, 64)), "key_rope", "together", None),
    ("key_rope_alone", call(fia_v2, base=BASE_V2, key_rope=t(2, 2, 7, 64)), "query_rope", "together", None),
    ("query_rope_dim", rope_call(qr_d=32), "query_rope", "64", None),
    ("key_rope_dim", rope_call(kr_d=32), "key_rope", "64", None),
    ("rope_head_dim", rope_call(d=64), "query", "512", None),
    # MLA D=512 with N_kv > 1: accepted by the newest kernels, refused before (tests/test_targets.py)
    ("mla512_sparse_mode", rope_call(d=512, sparse_mode=2, atten_mask=CMASK), "sparse_mode", "0, 3, 4 or 9", None),
    ("mla_layout", rope_call(d=512, layout="BSND_BNSD"), "input_layout", "MLA", None),
    # --- shared prefix (spec 14)
    ("key_prefix_alone", prefix_call(KP, None), "value_shared_prefix", "together", None),
    ("value_prefix_alone", prefix_call(None, VP), "key_shared_prefix", "together", None),
    ("prefix_len_alone", prefix_call(actual_shared_prefix_len=[2]), "actual_shared_prefix_len", "needs", None),
    ("prefix_with_paging", call(fia, k=KC, v=VC, base=PAGED, key_shared_prefix=t(1, 2, 4, 16),
                                value_shared_prefix=t(1, 2, 4, 16)), "key_shared_prefix + block_table",
     "cannot be combined", None),
    ("prefix_with_tnd", call(fia, q=QT, k=KT, v=VT, base=TND, key_shared_prefix=t(4, 2, 16),
                             value_shared_prefix=t(4, 2, 16)), "key_shared_prefix + input_layout",
     "cannot be combined", None),
    ("prefix_batch", prefix_call(t(2, 2, 4, 16), t(2, 2, 4, 16)), "key_shared_prefix", "batch 1", None),
    ("prefix_length_mismatch", prefix_call(KP, t(1, 2, 3, 16)), "value_shared_prefix", "length", None),
    ("prefix_len_too_long", prefix_call(KP, VP, actual_shared_prefix_len=[5]), "actual_shared_prefix_len",
     r"\[0, 4\]", None),
    ("prefix_len_two_values", prefix_call(KP, VP, actual_shared_prefix_len=[1, 1]), "actual_shared_prefix_len",
     "one value", None),
    # --- reserved parameters (spec 1.2, 1.6)
    ("key_rope_antiquant_scale", call(fia, key_rope_antiquant_scale=t(1)), "key_rope_antiquant_scale",
     "reserved", None),
    ("v2_dequant_scale_key_rope", call(fia_v2, base=BASE_V2, dequant_scale_key_rope=t(1)),
     "dequant_scale_key_rope", "reserved", None),
    ("v2_quant_scale_p", call(fia_v2, base=BASE_V2, quant_scale_p=t(1)), "quant_scale_p", "950", None),
    *[(f"v2_reserved_{name}", call(fia_v2, base=BASE_V2, **{name: 5}), name, "reserved", None)
      for name in ("query_dtype", "key_dtype", "value_dtype", "key_shared_prefix_dtype")],
]


@pytest.mark.parametrize("make, parameter, match, hint", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_rule(make: Callable[[], Any], parameter: str, match: str, hint: str | None) -> None:
    with pytest.raises(FIAArgumentError, match=match) as info:
        make()
    assert info.value.parameter == parameter
    assert isinstance(info.value, ValueError)
    if hint is not None:
        assert info.value.hint is not None and re.search(hint, info.value.hint), info.value.hint


def test_valid_baselines_pass() -> None:
    """The calls the cases perturb are themselves valid, so each case fails for its own rule."""
    fia(Q, K, V, **BASE)
    fia_v2(Q, K, V, **BASE_V2)
    fia(QT, KT, VT, **TND)
    fia(Q, KC, VC, **PAGED)
    fia(Q, K, V, **BASE, atten_mask=MASK, pre_tokens=6, next_tokens=4)
    fia(Q, K, V, **BASE, sparse_mode=4, atten_mask=CMASK, pre_tokens=-4, next_tokens=6)
    fia(Q, K, V, **BASE, key_shared_prefix=KP, value_shared_prefix=VP, actual_shared_prefix_len=[4])
    fia(Q, K, V, **BASE, pse_shift=t(1, 4, 5, 7))
    rope_call()()
    rope_call(d=512, s_q=1)()
    # a float16 GQA TND call takes the split-fuse route, whose sink has the query's dtype
    # (fused_infer_attention_score_tiling.cpp:1158)
    fia_v2(QT, KT, VT, **dict(BASE_V2, input_layout="TND", actual_seq_qlen=[2, 5], actual_seq_kvlen=[3, 7]),
           learnable_sink=t(4))
    fia(Q[:, :, :1], K, V, **BASE, inner_precise=1)


def test_num_key_value_heads_zero_means_num_heads() -> None:
    k, v = t(2, 4, 7, 16), t(2, 4, 7, 16)
    out0, _ = fia(Q, k, v, num_heads=4, input_layout="BNSD")
    out4, _ = fia(Q, k, v, num_heads=4, num_key_value_heads=4, input_layout="BNSD")
    v2_default, _ = fia_v2(Q, k, v, num_query_heads=4, input_layout="BNSD")  # v2 default 0, not 1 (spec 1.3)
    assert torch.equal(out0, out4) and torch.equal(out0, v2_default)


def test_sink_with_pse_is_rejected() -> None:
    """learnable_sink excludes pse_shift, and pse_shift excludes TND, which the sink needs (spec 9, 13)."""
    with pytest.raises(FIAArgumentError) as info:
        fia_v2(QT, KT, VT, num_query_heads=4, num_key_value_heads=2, input_layout="TND", actual_seq_qlen=[2, 5],
               actual_seq_kvlen=[3, 7], learnable_sink=t(4, dtype=torch.bfloat16), pse_shift=t(2, 4, 5, 7))
    assert "pse_shift" in info.value.parameter
