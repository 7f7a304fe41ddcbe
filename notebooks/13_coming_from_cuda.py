# %% [markdown]
# # 13 · Coming from CUDA
#
# Most FIA callers are moving a model or a serving backend from CUDA, where attention is torch's SDPA or
# flex_attention, flash-attn or FlashInfer. The five APIs agree on what attention is and disagree on how a call
# says it: which corner causal starts from, whether True keeps or hides, what the scale defaults to, whether the
# lengths start with 0, what base the LSE is in. Each flip is a wrong answer with no error.
#
# `fia_kit.port.translate(api, *args, **kwargs)` takes a call of any of them, with its own arguments, and returns
# the FIA call that computes the same thing, one note per convention that changed, the way back for the output
# and the LSE, and `check()`: an agreement table of the source's semantics against the FIA reference, in float64,
# in units of the tolerance. SDPA and flex_attention run for real here; flash-attn and FlashInfer are CUDA-only,
# so their semantics come from float64 contracts written from their documented code (`fia_kit.port.contracts`
# cites the files and commits). For each API below: the call, its translation, the agreement table, the two
# visibility maps side by side, and a naive translation with how far off it is.
#
# Spec ([docs/](../docs/README.md)): section 6.3 (sparse modes), 6.1 (mask polarity), 18.5 (the scale), 5.2
# (cumulative lengths), 11 (paged caches), 8 (the LSE); [porting.md](../docs/porting.md) is this notebook's twin.

# %%
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import fia_kit
from fia_kit import port
from fia_kit.diagrams import agreement
from fia_kit.environment import detect
from fia_kit.masks import compressed_causal_mask

BACKEND = detect().default_backend()
print("this notebook runs on backend:", BACKEND)
FIA = fia_kit.npu_fused_infer_attention_score  # the reference: the same call runs torch_npu's op on an NPU
gen = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float16):
    return torch.randn(*shape, generator=gen).to(dtype)


def fia_out(ported):
    """Run a translated call on the reference (v2 where it needs learnable_sink) and map the output back."""
    fn = fia_kit.npu_fused_infer_attention_score_v2 if ported.form == "v2" else FIA
    out, lse = ported.call.call(fn)
    return ported.out_to_source(out), lse


# %% [markdown]
# ## SDPA: `is_causal` is top-left
#
# A decoder step with 4 new tokens against 9 keys, GQA (4 query heads, 2 KV heads), fp16. SDPA's `is_causal`
# keeps j <= i, aligned to the top-left corner. FIA's sparse_mode 3 is aligned bottom-right; top-left is
# sparse_mode 2. The scale moves from SDPA's default 1/sqrt(E) to an explicit `scale` (FIA's default is 1.0).

# %%
q, k, v = randn(1, 4, 4, 64), randn(1, 2, 9, 64), randn(1, 2, 9, 64)
sdpa = port.from_sdpa(q, k, v, is_causal=True, enable_gqa=True)
print(sdpa)
{name: (tuple(value.shape) if torch.is_tensor(value) else value) for name, value in sdpa.call.kwargs.items()}

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
sdpa.check()

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): a plotly figure. The naive translation (sparse_mode 3) on
# the right: each of the 4 rows sees 5 keys too many.
naive_sdpa = dict(sdpa.call.kwargs, sparse_mode=3)
port.visibility_pair(sdpa, fia=fia_kit.plan("v1", q, k, v, **naive_sdpa),
                     title="SDPA is_causal (left) vs FIA sparse_mode 3 (right): 20 cells differ")

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True,
                                                         enable_gqa=True)
agreement({"translated (sparse_mode 2) vs SDPA": (fia_out(sdpa)[0], want),
           "naive sparse_mode 3 vs SDPA": (FIA(q, k, v, **naive_sdpa)[0], want),
           "naive scale left at 1.0 vs SDPA": (FIA(q, k, v, **dict(sdpa.call.kwargs, scale=1.0))[0], want)},
          atol=1e-3, rtol=1e-3)

# %% [markdown]
# ## flex_attention: masks as data, scores as functions
#
# A sliding window of 4 keys (the diagonal and 3 before it) as a `BlockMask`, and an additive per-head distance
# bias as a `score_mod`. The translator evaluates `mask_mod` and recognises a band, so the window becomes
# sparse_mode 4 (no mask tensor at all); the bias becomes `pse_shift` in the query's dtype. A `score_mod` that is
# not additive (soft-capping) has no FIA counterpart and is refused by name.

# %%
q, k, v = randn(1, 2, 8, 64), randn(1, 2, 8, 64), randn(1, 2, 8, 64)
window = create_block_mask(lambda b, h, i, j: (j <= i) & (j > i - 4), None, None, 8, 8, device="cpu")


def distance_bias(score, b, h, i, j):
    return score - 0.25 * (h + 1) * (i - j).abs()


flex = port.from_flex(q, k, v, block_mask=window, score_mod=distance_bias, return_lse=True)
print(flex)

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
flex.check()

# %%
try:
    port.from_flex(q, k, v, score_mod=lambda s, b, h, i, j: 30 * torch.tanh(s / 30))
except fia_kit.FIAArgumentError as err:
    print(err)

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): a plotly figure. The naive translation passes the keep-mask
# as atten_mask: FIA hides exactly the keys flex keeps.
keep = torch.ones(8, 8, dtype=torch.bool).tril() & ~torch.ones(8, 8, dtype=torch.bool).tril(-4)
naive_flex = dict(flex.call.kwargs, sparse_mode=0, atten_mask=keep[None, None], pre_tokens=2147483647,
                  next_tokens=2147483647, inner_precise=2)
port.visibility_pair(flex, fia=fia_kit.plan("v1", q, k, v, **naive_flex),
                     title="flex keep-mask (left) vs the same mask as FIA's atten_mask (right)")

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
want, want_lse = flex_attention(q.double(), k.double(), v.double(), block_mask=window, score_mod=distance_bias,
                                return_lse=True)
agreement({"translated vs flex": (fia_out(flex)[0], want),
           "naive keep-mask vs flex": (FIA(q, k, v, **naive_flex)[0], want)}, atol=1e-3, rtol=1e-3)

# %% [markdown]
# ## flash-attn: bottom-right causal, windows, `cu_seqlens`, paged decode
#
# flash-attn's `causal` is bottom-right, so it *is* sparse_mode 3; `window_size=(left, right)` is sparse_mode 4
# with `pre_tokens=left`, `next_tokens=right` (spec 6.3). `flash_attn_varlen_func` packs sequences with
# `cu_seqlens`, which start with 0; FIA's TND takes the cumulative ends without it. With a paged cache, FIA's TND
# kv lengths are per batch, not cumulative. ALiBi slopes become a `pse_shift`.
#
# Nothing here imports flash-attn: the source side is `fia_kit.port.contracts`, written from
# `flash_attn/flash_attn_interface.py` (e.g. its docstring's causal example at lines 1175-1184).

# %%
q, k, v = randn(2, 6, 4, 64, dtype=torch.bfloat16), randn(2, 9, 2, 64, dtype=torch.bfloat16), \
    randn(2, 9, 2, 64, dtype=torch.bfloat16)
fa = port.from_flash_attn(q, k, v, causal=True, window_size=(3, 0), return_attn_probs=True,
                          alibi_slopes=torch.tensor([0.37, 0.11, 0.05, 0.013]))
print(fa)

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine. The third and fourth rows
# measure the translation's own approximation: the ALiBi bias rounded to bfloat16, as FIA requires.
fa.check()

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): a plotly figure. The naive window: pre_tokens=4 for
# window_size=(3, 0) sees one key more per row.
naive_fa = dict(fa.call.kwargs, pre_tokens=4)
port.visibility_pair(fa, fia=fia_kit.plan("v1", q, k, v, **naive_fa),
                     title="flash-attn window_size=(3, 0) (left) vs FIA pre_tokens=4 (right)")

# %%
q = randn(9, 4, 64)
k_cache, v_cache = randn(6, 256, 2, 64), randn(6, 256, 2, 64)
block_table = torch.tensor([[4, 1], [0, 5], [2, 3]], dtype=torch.int32)
cu_seqlens_q = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
cu_seqlens_k = torch.tensor([0, 300, 550, 700], dtype=torch.int32)
varlen = port.from_flash_attn_varlen(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, 5, 300, causal=True,
                                     block_table=block_table, return_attn_probs=True)
print(varlen)

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
varlen.check()

# %%
print("lint of the translation:", fia_kit.lint(varlen.call))
wide_table = torch.cat([block_table, torch.zeros(3, 2, dtype=torch.int32)], 1)  # vLLM-style: padded with 0
naive_lengths = dict(varlen.call.kwargs, block_table=wide_table, actual_seq_lengths_kv=cu_seqlens_k[1:].tolist())
for finding in fia_kit.lint("v1", varlen.call.query, varlen.call.key, varlen.call.value, **naive_lengths):
    print(finding)

# %% [markdown]
# ## FlashInfer: CSR page tables, sinks, and a base-2 LSE
#
# FlashInfer's paged cache is a CSR page table (`indptr`, `indices`, `last_page_len`); FIA's is a padded
# `block_table` plus per-batch lengths. Its `sinks` are FIA v2's `learnable_sink` (TND only; bfloat16 on the FIA route, the query's dtype on split-fuse). Its LSE
# is base 2, and with sinks it includes the sink, which FIA's leaves out (spec 8): `lse_to_source` adds the sink
# back and multiplies by log2(e).

# %%
q = randn(8, 4, 64)
k_pages, v_pages = randn(5, 128, 2, 64), randn(5, 128, 2, 64)
paged = dict(qo_indptr=torch.tensor([0, 3, 8], dtype=torch.int32),
             paged_kv_indptr=torch.tensor([0, 2, 3], dtype=torch.int32),
             paged_kv_indices=torch.tensor([3, 0, 4], dtype=torch.int32),
             paged_kv_last_page_len=torch.tensor([20, 77], dtype=torch.int32),
             num_qo_heads=4, num_kv_heads=2, head_dim_qk=64, page_size=128)
fi = port.translate("flashinfer.BatchPrefillWithPagedKVCacheWrapper", q, (k_pages, v_pages), kv_layout="NHD",
                    causal=True, sinks=torch.tensor([0.5, -1.0, 2.0, 0.1]), return_lse=True, **paged)
print(fi)

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
fi.check()

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): a plotly figure. Request 1 (5 new tokens, 77 keys): the
# translation, cell for cell.
port.visibility_pair(fi, b=1)

# %% [markdown]
# The naive LSE: split one request's keys in two, compute each half with FlashInfer (its contract here), and merge
# the halves with `fia_kit.merge_attention`, which takes natural-log LSEs. Fed FlashInfer's base-2 LSEs as they
# are, the merge weights the halves wrongly; divided by log2(e) first, it gives attention over all keys.

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
q1, k1, v1 = randn(4, 2, 64, dtype=torch.float64), randn(12, 2, 64, dtype=torch.float64), \
    randn(12, 2, 64, dtype=torch.float64)
whole = port.from_flashinfer_single_prefill(q1, k1, v1, return_lse=True)
halves = [port.from_flashinfer_single_prefill(q1, k1[part], v1[part], return_lse=True)
          for part in (slice(0, 5), slice(5, 12))]
outs, lses = zip(*(port.APIS[h.api].semantics(h.arguments) for h in halves), strict=True)
natural, _ = fia_kit.merge_attention(list(outs), [lse.unsqueeze(-1) for lse in lses])
converted, _ = fia_kit.merge_attention(list(outs), [(lse / 1.4426950408889634).unsqueeze(-1) for lse in lses])
expected = port.APIS[whole.api].semantics(whole.arguments)[0]
agreement({"merged with base-2 LSE read as natural": (natural, expected),
           "merged after LSE / log2(e)": (converted, expected)}, atol=1e-10, rtol=1e-10)

# %% [markdown]
# ## The way back: an FIA call as flex_attention
#
# `port.to_flex(plan)` writes the flex_attention call that computes an FIA call (lengths, per-batch bands and the
# user mask as one `mask_mod`, a document mask for TND, `pse_shift` as a `score_mod`), to check FIA's semantics on
# a GPU box; `port.to_sdpa` does the same where SDPA can (no per-sequence lengths, every row sees a key).

# %%
q, k, v = randn(9, 4, 64), randn(15, 2, 64), randn(15, 2, 64)
fia_call = dict(num_heads=4, num_key_value_heads=2, input_layout="TND", scale=0.125, sparse_mode=3,
                atten_mask=compressed_causal_mask(), actual_seq_lengths=[3, 8, 9],
                actual_seq_lengths_kv=[6, 11, 15], softmax_lse_flag=True)
source = port.to_flex(fia_kit.plan("v1", q, k, v, **fia_call))
print(source.api, sorted(source.kwargs))

# %% tags=["nbval-ignore-output"]
# Output ignored by nbval (tag nbval-ignore-output): measured errors differ by machine.
flex_out, flex_lse = source.run()
ref_out, ref_lse = FIA(q, k, v, **fia_call)
agreement({"flex (from to_flex) vs FIA reference, output": (flex_out, ref_out),
           "... LSE": (flex_lse, ref_lse)}, atol=1e-3, rtol=1e-3)

# %% [markdown]
# ## Every concept across the five APIs
#
# | concept | SDPA | flex_attention | flash-attn | FlashInfer | FIA |
# |---|---|---|---|---|---|
# | scale default | 1/sqrt(E) | 1/sqrt(E) | 1/sqrt(D) | 1/sqrt(D) | **1.0** (spec 18.5) |
# | causal | `is_causal`, top-left | a `mask_mod` | `causal`, bottom-right | `causal`, bottom-right | sparse_mode 2 top-left, 3 bottom-right (spec 6.3) |
# | mask polarity | True = keep | True = keep | none | `custom_mask` True = keep | `atten_mask` **True = hidden**, no head axis (spec 6.1) |
# | sliding window | a mask | a `mask_mod` | `window_size=(left, right)` | `window_left` | sparse_mode 4, `pre_tokens=left`, `next_tokens=right` (spec 6.3) |
# | additive bias | float `attn_mask` | additive `score_mod` | `alibi_slopes` | `pos_encoding_mode="ALIBI"` | `pse_shift` in the query's dtype, not with TND (spec 9) |
# | lengths | none | a document mask | `cu_seqlens`, leading 0 | `qo_indptr`/`kv_indptr`, leading 0 | TND: cumulative ends, no leading 0; paged TND kv: per batch (spec 5.2) |
# | paged cache | none | none | `block_table`, page a multiple of 256 | `indptr`/`indices`/`last_page_len` | padded `block_table` + per-batch lengths (spec 11) |
# | sinks | none | none | none | `sinks` (float32), in the LSE | v2 `learnable_sink` (TND; bfloat16 on the FIA route, the query's dtype on split-fuse), not in the LSE (spec 13) |
# | LSE | none | (B, H, L), ln | (B, H, S) or (H, total), ln | (len, H), **log2** | (B, N, S, 1) or (T, N, 1), ln (spec 8) |
# | softcap, dropout | dropout | non-additive `score_mod` | `softcap`, `dropout_p` | `logits_soft_cap` | none: refused by name |
#
# **Translated only approximately** (measured with `check()` in float64, errors in units of the caller dtype's
# tolerance; details in [porting.md](../docs/porting.md)): ALiBi as `pse_shift` is rounded to the query's dtype,
# which costs up to about 0.3 of the fp16 tolerance and 0.4 of the bf16 tolerance in the output at 16 heads and
# 512 tokens (exact for power-of-two head counts in fp16, whose slopes are powers of two; bf16 at 8 heads and 2048
# tokens: 0.07); FlashInfer's float32 sinks rounded to bfloat16 (the FIA route) cost up to 0.15 of the fp16 tolerance; a per-head mask goes to `pse_shift` filled with
# the dtype's lowest value, exact except in rows a head hides entirely. Not carried over: flash-attn's attention
# probabilities, `max_seqlen`, FlashInfer's `use_fp16_qk_reduction` and plan-time dtype hints.
