# %% [markdown]
# # 3 · Masks and sparse modes 0-4
#
# Which keys a query row sees is decided by `sparse_mode`, `atten_mask`, `pre_tokens` and `next_tokens`.
# This notebook shows each mode's visibility map, checks each against an explicit mask applied with SDPA, and
# covers rows that see no key at all.
#
# Spec ([docs/](../docs/README.md)): section 6.1 *atten_mask values and dtypes*, section 6.3 *Definitions of
# sparse modes*, section 6.4 *The compressed 2048×2048 mask*, section 7 *Fully masked rows and inner_precise*.

# %%
import torch

import fia_kit
from fia_kit import TOLERANCES, Case, figures, masks, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

def visibility_map(problem, b=0):
    """Text map of batch b: '#' visible, 'm' hidden by atten_mask, '.' outside the band, ' ' padding."""
    symbols = {figures.VISIBLE: "#", figures.MASKED: "m", figures.OUTSIDE_BAND: ".", figures.PADDING: " "}
    codes = figures.visibility_codes(problem, b)
    for i, row in enumerate(codes.tolist()):
        print(f"row {i:2d} |" + "".join(symbols[c] for c in row) + "|")


# %% [markdown]
# Conventions: **True / 1 in `atten_mask` means masked out** (the kernel writes −1e12 over that score).
# Coordinates are local to a batch: query row `i` counts from its first valid row, key `j` from its first key
# (the shared prefix, if any, comes first). In the maps below `#` is visible, `m` hidden by the mask, `.` outside
# the mode's band. Under each map, the op's output is compared with SDPA given that visibility as an explicit mask
# (`max |actual - expected|`, and the same in units of the fp16 tolerance: at most 1 agrees).
#
# A problem with more keys than queries makes the alignment visible: `L_q = 6`, `L_kv = 10`.

# %%
g = torch.Generator().manual_seed(0)
B, N, S_Q, S_KV, D = 1, 2, 6, 10, 16
q = torch.randn(B, N, S_Q, D, generator=g, dtype=torch.float16)
k = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
v = torch.randn(B, N, S_KV, D, generator=g, dtype=torch.float16)
base = dict(num_heads=N, input_layout="BNSD", scale=D ** -0.5)
atol, rtol = TOLERANCES[torch.float16]
template = masks.compressed_causal_mask()  # what modes 2-4 require, see below
i = torch.arange(S_Q).view(-1, 1)
j = torch.arange(S_KV).view(1, -1)

def check(label, options, visible):
    """Run the call on BACKEND; compare with SDPA restricted to ``visible`` (S_q, S_kv) (True = attend)."""
    out = fia_kit.run(parse_call("v1", q, k, v, {**base, **options}), BACKEND).attention_out.cpu()
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=visible, scale=D ** -0.5)
    return agreement({label: (out, expected)}, atol, rtol)

def explain(**options):
    return fia_kit.reference.explain("v1", q, k, v, **base, **options)


# %% [markdown]
# ## Mode 0 without a mask: everything visible, pre/next ignored
#
# The default. `pre_tokens`/`next_tokens` are forced to INT_MAX when there is no mask (spec section 6.3), so
# passing a narrow band changes nothing:

# %%
visibility_map(explain(pre_tokens=0, next_tokens=0))
check("sparse_mode 0, no mask, pre=next=0 vs full attention", dict(pre_tokens=0, next_tokens=0),
      torch.ones(S_Q, S_KV, dtype=torch.bool))

# %% [markdown]
# ## Mode 0 with a mask: the mask **and** the band `-pre_tokens ≤ j - i ≤ next_tokens`
#
# With a mask, mode 0 also uses pre/next, anchored at the **top-left** (no shift). The kernel applies them only
# at block granularity and trusts the user mask element-wise, so the user should pass a mask consistent with
# the band; the reference applies the intersection, which is the same thing whenever they agree
# (spec section 6.3, *Mode 0 detail*). Whether newer kernels apply pre/next element-wise is an **open
# question** (spec section 23, item 6).
#
# Here the mask hides key 2 from every row, and the band is `-2 ≤ j - i ≤ 3`. The mask is 4-D,
# `(B, 1, S_q, S_kv)`: a 2-D mask is accepted only in some layouts and chips, so prefer 3-D/4-D masks
# (spec section 6.2, section 22 row 15).

# %%
user_mask = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)  # (B, 1, S_q, S_kv): the mask has no head axis
user_mask[..., 2] = True                                     # True = masked out: key 2 hidden from every row
mode0 = dict(atten_mask=user_mask, pre_tokens=2, next_tokens=3)
visibility_map(explain(**mode0))
band = (j - i >= -2) & (j - i <= 3)
check("mode 0 vs SDPA with (not mask) & band", mode0, ~user_mask & band)

# %% [markdown]
# ## Mode 1: the mask alone
#
# `allMask`: the full mask is required and pre/next are ignored.

# %%
visibility_map(explain(atten_mask=user_mask, sparse_mode=1, pre_tokens=0, next_tokens=0))
check("mode 1 vs SDPA with (not mask)", dict(atten_mask=user_mask, sparse_mode=1), ~user_mask)

# %% [markdown]
# ## The compressed 2048×2048 template (modes 2, 3, 4)
#
# Modes 2-4 take a fixed 2048×2048 mask instead of a full one; the kernel slides it along a diagonal, so one
# tensor serves every sequence length. It must be **`torch.triu(torch.ones(2048, 2048), diagonal=1)`**:
# 1 strictly above the diagonal, 0 on and below (spec section 6.4). The docs call it "lower-triangular with a
# zero diagonal", meaning the *kept* part; a lower-triangular tensor of ones is the classic mistake. The kit
# never reads the template's values for the computation; it checks them and builds the band analytically.

# %%
print("template:", tuple(template.shape), template.dtype)
print("ones (hidden):", int(template.sum()), "= 2048 · 2047 / 2, all strictly above the diagonal:",
      int(template.triu(1).sum()))
print("top-left corner:")
print(template[:4, :4].int())
wrong = torch.ones(2048, 2048, dtype=torch.bool).tril()
try:
    explain(atten_mask=wrong, sparse_mode=2)
except fia_kit.FIAArgumentError as error:
    print(type(error).__name__, "->", error)

# %% [markdown]
# ## Mode 2: left-up causal, `j ≤ i`
#
# The diagonal is anchored at the **top-left**: query 0 sees key 0, whatever the lengths.

# %%
visibility_map(explain(atten_mask=template, sparse_mode=2))
check("mode 2 vs SDPA with j <= i", dict(atten_mask=template, sparse_mode=2), j <= i)

# %% [markdown]
# ## Mode 3: right-down causal, `j ≤ i + δ` with `δ = P + L_kv − L_q`
#
# The diagonal is anchored at the **bottom-right** of each batch's valid rectangle: the last valid query sees
# the last valid key. This is the causal mask of decoding with a cache: the `L_q` new tokens are the last
# `L_q` of the `P + L_kv` keys. Here `δ = 0 + 10 − 6 = 4`. The prefix `P` counts (spec section 6.3: every
# position rule uses the concatenated prefix+kv axis).

# %%
problem = explain(atten_mask=template, sparse_mode=3)
print("delta = P + L_kv - L_q =", problem.prefix_len + problem.batches[0].kv_len - problem.batches[0].q_len)
visibility_map(problem)
check("mode 3 vs SDPA with j <= i + 4", dict(atten_mask=template, sparse_mode=3), j <= i + 4)

# %% [markdown]
# ## Mode 4: a band around the right-down diagonal
#
# `i + δ − pre_tokens ≤ j ≤ i + δ + next_tokens`: a sliding window (vLLM-Ascend uses `pre_tokens=window,
# next_tokens=0`). Note the **different origin** from mode 0's band (top-left there, right-down here).

# %%
mode4 = dict(atten_mask=template, sparse_mode=4, pre_tokens=2, next_tokens=0)
visibility_map(explain(**mode4))
check("mode 4 vs SDPA with i+4-2 <= j <= i+4", mode4, (j >= i + 4 - 2) & (j <= i + 4))

# %% [markdown]
# The same band with mode 0 (and an all-zero mask, so only the band counts) sits at the top-left instead:

# %%
no_mask = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)
visibility_map(explain(atten_mask=no_mask, sparse_mode=0, pre_tokens=2, next_tokens=0))
check("mode 0 band vs SDPA with i-2 <= j <= i", dict(atten_mask=no_mask, pre_tokens=2, next_tokens=0),
      (j >= i - 2) & (j <= i))

# %% [markdown]
# The figures module draws the same maps with the band edges, the right-down diagonal and what the op writes
# for each row:

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
for options in (dict(atten_mask=template, sparse_mode=3), mode4):
    problem = explain(**options)
    figures.visibility_figure(problem, fia_kit.reference.run_call(parse_call("v1", q, k, v, {**base, **options})),
                              0).show()

# %% [markdown]
# ### Try it: the explorer
#
# Change `sparse_mode`, `pre_tokens`/`next_tokens`, the lengths or the prefix and watch the map, the
# probabilities and the output follow (live in JupyterLab; a static copy of a notebook shows no widgets).

# %% tags=["nbval-ignore-output"]
# Widget output is ignored by nbval (tag nbval-ignore-output): widget views carry random model ids.
case = Case().replace(layout="BNSD", q_lens=(S_Q,), kv_lens=(S_KV,), heads=N, kv_heads=N, head_dim=D,
                      dtype=torch.float16, sparse_mode=3)
fia_kit.explore(case, backend=BACKEND)

# %% [markdown]
# ## Rows that see no key
#
# Two different things can leave a row with no visible key (spec section 7):
#
# 1. **The row is outside the band** (e.g. mode 3 with more queries than keys: the first `L_q − L_kv − P`
#    rows; a band with negative `next_tokens`). The op does not compute it: **output 0**, always.
# 2. **The row is inside the band but the user mask hides every key** (modes 0/1). The kernel's −1e12 fill
#    makes the softmax **uniform over all the batch's keys**: the output is the plain mean of V
#    (`inner_precise` 0 or 1). With `inner_precise` 2 or 3 (bit 1, "row invalid correction") the kernel
#    detects such rows and writes **0**.
#
# `fia_kit.reference.run_call` returns a per-row status next to the outputs.

# %%
q_long = torch.randn(1, N, 12, D, generator=g, dtype=torch.float16)  # L_q = 12 > L_kv = 10
call = parse_call("v1", q_long, k, v, {**base, "atten_mask": template, "sparse_mode": 3})
out = fia_kit.run(call, BACKEND).attention_out.cpu()
status = fia_kit.reference.run_call(call).row_status[0]
print("delta =", 10 - 12, "-> rows 0 and 1 see no key")
row_size = out.float().abs().amax(-1).amax(1)[0]  # largest |value| of each query row over heads and D
print("row  status        largest |out|")
for row in range(5):
    print(f"{row:3d}  {fia_kit.reference.RowStatus(int(status[row])).name:12s}  {float(row_size[row]):.2g}")
print("...")

# %%
hide_row_0 = torch.zeros(1, 1, S_Q, S_KV, dtype=torch.bool)
hide_row_0[..., 0, :] = True                             # row 0: every key masked
mean_of_v = v.float().mean(dim=2)                        # (B, N, D): uniform weights over all 10 keys
row_0 = {inner_precise: fia_kit.run(parse_call("v1", q, k, v, {
    **base, "atten_mask": hide_row_0, "sparse_mode": 1, "inner_precise": inner_precise}), BACKEND
).attention_out.cpu()[:, :, 0] for inner_precise in (0, 2)}
agreement({f"inner_precise={p}: row 0 vs {name}": (row_0[p], expected)
           for p in (0, 2) for name, expected in (("the mean of V", mean_of_v), ("0", torch.zeros_like(mean_of_v)))},
          atol, rtol)

# %% [markdown]
# The LSE of a row that sees no key depends on the kernel's host route (`plan.route`, spec section 7 item 3, 22
# row 20): rows the prefill kernels do not compute get +inf, while a decode batch without keys gets −3.4e38 on the
# FIA route (−3.40282e38, float32's lowest, on the legacy incremental route), so that a log-sum-exp merge gives it
# weight 0 (`fia_kit.merge_attention` merges either; *Look-alike calls, different routes* below shows which call
# gets which). The mask-only case gives `−1e12 + ln(count)` by the math,
# **[inferred]**.
#
# ## Invalid combinations
#
# Modes 1-4 need `atten_mask`; mode 0 and 4 bands must not be empty (spec section 6.3, *Validity checks*):

# %%
for options in (dict(sparse_mode=3),
                dict(atten_mask=template, sparse_mode=4, pre_tokens=-3, next_tokens=1),
                dict(sparse_mode=5)):
    try:
        explain(**options)
    except fia_kit.FIAArgumentError as error:
        print(type(error).__name__, "->", error)

# %% [markdown]
# ## Look-alike calls, different routes
#
# Before any check, the kernel's host code sends a call down one of four routes (spec section 25.1; the rules of
# each: [docs/rules.md](../docs/rules.md)): the FIA checkers, the TND split-fuse checks, the legacy incremental
# (decode) tiling, or the legacy prompt (prefill) tiling. Which rules apply depends on the route, and so does
# the LSE a batch without keys gets. `Plan.route` says which one a call takes; `Case.describe()`, `fia_kit.lint`
# (`findings.route`) and the explorer show it too.
#
# Below, one decode step (4 heads, D 128, fp16; batch 0 has no keys, batch 1 has 40) and its look-alikes: the
# same step with D 256, packed as TND (as serving code packs decode steps), with 128 query heads on one KV
# head, and that with int8 K/V. Each is validated and run on the reference; the LSE column is what the call
# returns for batch 0.

# %%
step = Case(q_lens=(1, 1), kv_lens=(0, 40), heads=4, kv_heads=4, head_dim=128, dtype=torch.float16,
            layout="BSND")
look_alikes = {
    "decode step, BSND, D 128": step,
    "  the same with D 256": step.replace(head_dim=256),
    "  the same packed as TND": step.replace(layout="TND"),
    "  128 query heads, 1 KV head": step.replace(heads=128, kv_heads=1),
    "  ... and int8 K/V": step.replace(heads=128, kv_heads=1, kv_quant="tensor"),
}
print(f"{'call':32s} {'route':11s} {'LSE, batch without keys':>24s}  the kit says")
for name, case in look_alikes.items():
    try:
        p = fia_kit.plan(case)
    except fia_kit.FIAArgumentError as error:
        print(f"{name:32s} {'-':11s} {'-':>24s}  refused: {error.rule_id} ({error.source.split('/')[-1]})")
        continue
    lse = fia_kit.run(p, "reference").softmax_lse
    no_keys = lse[0] if p.layout.name == "TND" else lse[0, 0]  # TND: (T, N, 1); BSND: (B, N, S, 1)
    print(f"{name:32s} {p.route:11s} {float(no_keys.flatten()[0]):>24.9g}  accepted")

# %% [markdown]
# Five calls that differ in one field each, four routes' worth of behaviour:
#
# * **D 256** takes the legacy incremental route (the kernel prefers its old template for MHA decode with D
#   256), whose kernel writes −FLT_MAX = −3.40282347e38 for a batch without keys; the FIA route's decode kernel
#   writes float32(−3.4e38) = −3.39999995e38. Both merge with weight 0 (`fia_kit.merge_attention`).
# * **TND** sends the same step down the split-fuse route, which computes a batch without keys like prefill: +inf.
#   A log-sum-exp merge of +inf gives NaN; a context-parallel merge must treat it as "no keys".
# * **128 query heads on 1 KV head** (DeepSeek-style decode without tensor parallelism) is accepted on the FIA
#   route, which has no cap on the group size; **int8 K/V** never takes the FIA route on A2/A3, and the legacy
#   incremental route's check refuses a group above 64. That rule exists on one route only.
#
# The route is printed with every description of a call:

# %%
print(look_alikes["  the same packed as TND"].describe().splitlines()[-1])

# %% [markdown]
# ## Tree mask (sparse_mode 9) and where versions differ
#
# For speculative decoding, v2 MLA (D = 512) takes a **tree mask** (spec section 6.6, 25.1): per batch the first
# `L_kv − L_q` keys (the context) are all visible, and key `j ≥ L_kv − L_q` is hidden from row `i` where
# `mask[b, i, j − (L_kv − L_q)]` is 1. The mask is `(B, S_q, S_q)` (TND: the per-batch `L_q × L_q` masks
# concatenated in 1-D). Here three draft tokens follow two context keys; tokens 1 and 2 are siblings under token 0:

# %%
tree = torch.tensor([[[0, 1, 1], [0, 0, 1], [0, 1, 0]]], dtype=torch.int8)
q_nope, q_rope = torch.randn(1, 3, 2, 512), torch.randn(1, 3, 2, 64)
k_nope, k_rope = torch.randn(1, 5, 1, 512), torch.randn(1, 5, 1, 64)
tree_call = dict(query_rope=q_rope, key_rope=k_rope, num_query_heads=2, num_key_value_heads=1, input_layout="BSND",
                 softmax_scale=576 ** -0.5, sparse_mode=9, atten_mask=tree)
visibility_map(fia_kit.plan("v2", q_nope, k_nope, k_nope, **tree_call))

# %% [markdown]
# Some rules depend on the product and the CANN version; `fia_kit.target` chooses them (default: the newest
# A2/A3 stack), and such an error names the rule and the target (the whole table: [docs/targets.md](../docs/targets.md)).
# The tree mask is in the 2026-08 kernels and refused on Ascend950; a TND query longer than its last cumulative
# length is accepted by the same newer kernels and refused by older ones:

# %%
t_query = torch.zeros(6, 2, 64)
for product, cann in (("A3", "9.1"), ("A2", "8.3"), ("Ascend950", "9.1")):
    with fia_kit.target(product=product, cann=cann):
        for name, build in (("tree mask", lambda: fia_kit.plan("v2", q_nope, k_nope, k_nope, **tree_call)),
                            ("TND T > last", lambda: fia_kit.plan("v1", t_query, t_query, t_query, num_heads=2,
                                                                  input_layout="TND", actual_seq_lengths=[4],
                                                                  actual_seq_lengths_kv=[4]))):
            try:
                build()
                print(f"{product} / CANN {cann}: {name}: accepted")
            except fia_kit.FIAArgumentError as error:
                print(f"{product} / CANN {cann}: {name}: refused by rule {error.rule.split('[rule ')[1].split()[0]}")

# %% [markdown]
# ## Summary
#
# | mode | visible when | origin | mask |
# |---|---|---|---|
# | 0, no mask | always | – | none; pre/next ignored |
# | 0, mask | not masked and `-pre ≤ j-i ≤ next` | top-left | full |
# | 1 | not masked | – | full |
# | 2 | `j ≤ i` | top-left | 2048 template |
# | 3 | `j ≤ i + δ` | bottom-right, `δ = P + L_kv − L_q` | 2048 template |
# | 4 | `i + δ − pre ≤ j ≤ i + δ + next` | bottom-right | 2048 template |
# | 9 (v2 MLA) | `j < L_kv − L_q`, or the tree mask does not hide it | bottom-right | (B, S_q, S_q) tree |
#
# With S_q = 1 (decode) sparse_mode, pre and next are ignored: notebook 05.
# Next: [04 · sequence lengths](04_sequence_lengths.ipynb).
