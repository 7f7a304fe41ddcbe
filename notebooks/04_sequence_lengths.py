# %% [markdown]
# # 4 · Sequence lengths
#
# Batches rarely fill their tensors. `actual_seq_lengths` (v2: `actual_seq_qlen`) and `actual_seq_lengths_kv`
# (v2: `actual_seq_kvlen`) say how many query rows and keys of each batch are valid: **per batch** for padded
# layouts, **cumulative** for packed ones (except paged K/V lengths).
#
# Spec ([docs/](../docs/README.md)): section 5.1 *Non-packed layouts*, section 5.2 *Packed layouts*,
# section 5.3 *TorchAir*, section 5.4 *What happens outside the valid lengths*.

# %%
import torch
from IPython.display import display

import fia_kit
from fia_kit import TOLERANCES, builders, diagrams, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

# %%
g = torch.Generator().manual_seed(0)
B, N, S_Q, S_KV, D = 3, 2, 8, 12, 64
q = torch.randn(B, N, S_Q, D, generator=g, dtype=torch.float16)
k = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
v = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
base = dict(num_heads=N, input_layout="BNSD", scale=D ** -0.5)
atol, rtol = TOLERANCES[torch.float16]

def attention(q=q, k=k, v=v, **options):
    return fia_kit.run(parse_call("v1", q, k, v, {**base, **options}), BACKEND).attention_out.cpu()

def sdpa(b, q_len, kv_len):
    """Independent reference: batch b's first q_len rows over its first kv_len keys."""
    return torch.nn.functional.scaled_dot_product_attention(
        q[b, :, :q_len].float(), k[b, :, :kv_len].float(), v[b, :, :kv_len].float(), scale=D ** -0.5)


# %% [markdown]
# ## Per-batch lengths (BSH, BSND, BNSD, ...)
#
# One value per batch; valid data is the **first** `L` entries of the S axis (right padding). `None` means
# the whole axis. Rows `i ≥ L_q[b]` are written as **0**, and a batch with `L_kv[b] = 0` is all zeros
# (spec section 5.4).

# %%
q_lens, kv_lens = [8, 5, 3], [12, 7, 0]
out = attention(actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)
print("batch  L_q  L_kv  largest |out|: rows < L_q  rows >= L_q")
for b in range(B):
    valid, padding = out[b, :, :q_lens[b]].float().abs(), out[b, :, q_lens[b]:].float().abs()
    print(f"{b:5d}  {q_lens[b]:3d}  {kv_lens[b]:4d}  {float(valid.max()):25.2g}  "
          + (f"{float(padding.max()):11.2g}" if padding.numel() else f"{'(none)':>11s}"))
agreement({f"batch {b}: rows < L_q vs SDPA over its first L_kv keys": (out[b, :, :q_lens[b]],
                                                                       sdpa(b, q_lens[b], kv_lens[b]))
           for b in range(B) if kv_lens[b]}, atol, rtol)

# %% [markdown]
# The reference also reports what it did with each row (`RowStatus`: PADDING for rows beyond `L_q`,
# OUT_OF_BAND for a batch without keys):

# %%
status = fia_kit.reference.run_call(parse_call("v1", q, k, v, {**base, "actual_seq_lengths": q_lens,
                                                                 "actual_seq_lengths_kv": kv_lens})).row_status
for b in range(B):
    print(f"batch {b}:", " ".join(fia_kit.reference.RowStatus(int(s)).name[:3] for s in status[b]))

# %% [markdown]
# ## Broadcast: one value for every batch
#
# A list of length 1 is broadcast; a list of at least B values uses the first B; anything else is an error
# (spec section 5.1). Values must lie in `[0, S]`.

# %%
longer, _ = fia_kit.npu_fused_infer_attention_score(q, k, v, **base, actual_seq_lengths=[6, 6, 6, 99])
display(agreement({"actual_seq_lengths [6] vs [6, 6, 6]": (attention(actual_seq_lengths=[6]),
                                                           attention(actual_seq_lengths=[6, 6, 6])),
                   "[6, 6, 6, 99] (reference) vs [6]": (longer, attention(actual_seq_lengths=[6]))}, atol, rtol))
for bad in ([6, 6], [6, 6, 9]):
    try:
        fia_kit.reference.explain("v1", q, k, v, **base, actual_seq_lengths=bad)
    except fia_kit.FIAArgumentError as error:
        print(type(error).__name__, "->", error)

# %% [markdown]
# ## Lists or int64 tensors
#
# torch_npu's schema types the lengths `SymInt[]` (Python int lists; callers also pass 1-D CPU int tensors).
# TorchAir's `tng.ops` type them `Tensor?`: **int64 tensors on the device**, so that tiling in graph mode
# (which runs on the device) needs no host copy (spec section 5.3, section 1.4). Same values, same result; the
# kit's backends convert to whatever the target op wants. Float tensors are rejected.

# %%
as_list = attention(actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)
as_tensor = attention(actual_seq_lengths=torch.tensor(q_lens, dtype=torch.int64),
                      actual_seq_lengths_kv=torch.tensor(kv_lens, dtype=torch.int64))
display(agreement({"lengths as int lists vs as int64 tensors": (as_list, as_tensor)}, 0, 0))
try:
    fia_kit.reference.explain("v1", q, k, v, **base, actual_seq_lengths=torch.tensor([8.0, 5.0, 3.0]))
except fia_kit.FIAArgumentError as error:
    print(type(error).__name__, "->", error)

# %% [markdown]
# With TorchAir the lengths are graph **inputs**, so one compiled graph serves every length; a Python list is
# a constant of the graph, and each new list recompiles. `fia_kit.profiling.recompiles` shows it
# with `torch.compile` (no NPU needed):

# %%
decode_call = parse_call("v1", q[:, :, :1], k, v, {**base, "actual_seq_lengths_kv": [12, 7, 3]})
counts = fia_kit.profiling.recompiles(decode_call, [[12, 7, 3], [11, 7, 3], [10, 6, 2]])
print("compiles for 3 different length lists:  list", counts["list"], " tensor", counts["tensor"])

# %% [markdown]
# ## Packed layouts: cumulative lengths
#
# In TND/NTD there is no batch axis; `actual_seq_lengths` is **required and cumulative**: element b is the
# total of batches 0..b, so batch b's tokens are rows `[cum[b-1], cum[b])` (spec section 5.2). Without paging
# `actual_seq_lengths_kv` is cumulative too. Rows of T beyond the last cumulative value: the spec says the
# output is unspecified, **[inferred]** probably zero (spec section 23, item 2).

# %%
q_lens, kv_lens = [3, 5, 2], [4, 12, 6]
cum_q, cum_kv = builders.cumulative(q_lens), builders.cumulative(kv_lens)
q_tnd, k_tnd, v_tnd = (builders.pack_sequences([x[b, :, :n] for b, n in enumerate(lens)], "TND")[0]
                       for x, lens in ((q, q_lens), (k, kv_lens), (v, kv_lens)))
print("per-batch q", q_lens, "-> cumulative", cum_q, "; per-batch kv", kv_lens, "-> cumulative", cum_kv)
print("TND query", tuple(q_tnd.shape), "key", tuple(k_tnd.shape))
packed_call = parse_call("v1", q_tnd, k_tnd, v_tnd, dict(
    num_heads=N, input_layout="TND", scale=D ** -0.5, actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv))
packed = fia_kit.run(packed_call, BACKEND).attention_out.cpu()
agreement({f"batch {b}: rows [{cum_q[b] - q_lens[b]}, {cum_q[b]}) of T vs SDPA": (
    packed[cum_q[b] - q_lens[b]:cum_q[b]].transpose(0, 1), sdpa(b, q_lens[b], kv_lens[b])) for b in range(B)},
    atol, rtol)

# %% [markdown]
# The same packing drawn from the plan: each batch's rows on the query's T and on the keys' T, cut at the
# cumulative lengths (the x ticks). Here T is exactly the total on both sides; the second figure packs the same
# batches into a query T of 12, two rows longer than the last cumulative length: those rows belong to no batch.

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
diagrams.packing_figure(fia_kit.plan(packed_call)).show()
q_tail = torch.cat([q_tnd, torch.zeros(2, N, D, dtype=q_tnd.dtype)])  # T = 12 > cum_q[-1] = 10
diagrams.packing_figure(fia_kit.plan("v1", q_tail, k_tnd, v_tnd, num_heads=N, input_layout="TND",
                                     actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv)).show()

# %% [markdown]
# ### The "decreasing cumulative" mistake
#
# Passing per-batch lengths to a packed layout is the classic error. When they are not non-decreasing the kit
# says so and suggests their running sum. (When per-batch values happen to increase, e.g. `[2, 3, 5]`, no
# check can tell: the call is valid and means other lengths.)

# %%
try:
    fia_kit.reference.explain("v1", q_tnd, k_tnd, v_tnd, num_heads=N, input_layout="TND",
                              actual_seq_lengths=q_lens, actual_seq_lengths_kv=cum_kv)
except fia_kit.FIAArgumentError as error:  # its fields: which parameter, which rule, the value, a hint
    print("parameter:", error.parameter)
    print("rule:     ", error.rule)
    print("got:      ", error.got)
    print("hint:     ", error.hint)

# %% [markdown]
# ### Paged K/V in a packed layout: per-batch kv lengths
#
# With `block_table` the keys come from a paged cache, not from a packed T axis, so `actual_seq_lengths_kv`
# is **per batch, not cumulative**, even in TND (spec section 5.2; the torch_npu docs say "cumulative"
# generically, the V5 doc, the tiling code and vLLM-Ascend agree on per-batch: spec section 22, row 9).
# Query lengths stay cumulative. Below, `fia_kit.builders.to_paged` writes each batch's keys into blocks
# of 128 of a `(num_blocks, block_size, N·D)` cache (notebook 05 explains paging):

# %%
BLOCK = 128  # prefill paging wants 128..512, a multiple of 128
cache_k, block_table = builders.to_paged([k[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=3,
                                         generator=torch.Generator().manual_seed(1))
cache_v, _ = builders.to_paged([v[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=3,
                               generator=torch.Generator().manual_seed(1))  # same seed: same block table
print("cache", tuple(cache_k.shape), "block_table", block_table.tolist())
paged_options = dict(num_heads=N, input_layout="TND", scale=D ** -0.5, block_table=block_table,
                     block_size=BLOCK, actual_seq_lengths=cum_q, actual_seq_lengths_kv=kv_lens)
paged = fia_kit.run(parse_call("v1", q_tnd, cache_k, cache_v, paged_options), BACKEND).attention_out.cpu()
golden = torch.cat([sdpa(b, q_lens[b], kv_lens[b]).transpose(0, 1) for b in range(B)])  # (T, N, D) float32
agreement({f"paged TND, kv lengths {kv_lens} (per batch) vs SDPA": (paged, golden),
           f"contiguous TND, kv lengths {cum_kv} (cumulative) vs SDPA": (packed, golden)}, atol, rtol)

# %% [markdown]
# ## Summary
#
# | layout | `actual_seq_lengths` (query) | `actual_seq_lengths_kv` |
# |---|---|---|
# | BSH / BSND / BNSD (+ two-part) | per batch, optional, 1 value broadcasts | per batch, optional; required when paged |
# | TND / NTD (+ two-part), not paged | cumulative, required | cumulative, required |
# | TND / NTD, paged | cumulative, required | **per batch**, required |
#
# Rows beyond `L_q` are 0; a batch with no keys is all 0; with S_q = 1 `actual_seq_lengths` is ignored
# (notebook 05). Next: [05 · paged KV and decode](05_paged_kv_and_decode.ipynb).
