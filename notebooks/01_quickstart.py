# %% [markdown]
# # 1 · Quickstart: the founding TorchAir example, re-created
#
# FIA (`torch_npu.npu_fused_infer_attention_score`, its `_v2` twin and TorchAir's `tng.ops` versions) computes,
# for every batch `b` and query head `n`, `softmax(scale · q·kᵀ + masks) · v` over the *valid* keys of that batch
# (spec section 0, *One-paragraph summary*). The kit's reference implementation is the op on any machine; on an
# Ascend box the same cells run torch_npu's op.
#
# This notebook re-creates the example of the project's founding document, a TorchAir page
# (summarised in docs section 1.3), and reads its output row by row.
#
# Spec ([docs/](../docs/README.md), numbered as cited):
# section 1.3 *The founding document's v2 signature vs the real one*, section 1.4 *TorchAir (`tng.ops`) variants*,
# section 4.3 *Output-shape inference*, section 5.4 *What happens outside the valid lengths*,
# section 8 *softmax_lse*, section 14 *Shared prefix*.

# %%
import math

import torch

import fia_kit
from fia_kit import TOLERANCES, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

# %% [markdown]
# ## The call
#
# The page builds a BNSD query of 164 rows, keys/values of 1024 rows and a *shared prefix* of 1024 rows, then
# calls (inside a `torch.compile`d model, see below):
#
# ```python
# tng.ops.npu_fused_infer_attention_score(q, k, v,
#     actual_seq_lengths=actualSeqLengths,            # tensor([50]) on the NPU
#     actual_seq_lengths_kv=actualSeqLengthkvs,       # tensor([512])
#     key_shared_prefix=k_prefix, value_shared_prefix=v_prefix,
#     actual_shared_prefix_len=actualSeqLengthsPrefix,  # tensor([50])
#     num_heads=8, input_layout="BNSD", scale=1/math.sqrt(128.0), pre_tokens=65535, next_tokens=65535)
# ```
#
# The lengths are **int64 tensors**: TorchAir's schema types them `Tensor?` so that tiling, which runs on the
# device in graph mode, needs no host-to-device copy (spec section 1.4); `fia_kit.builders.length_tensor(values,
# device)` makes one. torch_npu's eager op takes int lists instead; the kit accepts both, and `fia_kit.run`
# hands each backend the type its op wants. Inputs here are seeded float16, the op's dtype.

# %%
g = torch.Generator().manual_seed(0)
q = torch.randn(1, 8, 164, 128, generator=g, dtype=torch.float16)         # (B, N, S_q, D)
k = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)        # (B, N, S_kv, D)
v = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)
k_prefix = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)  # (1, N, P_S, D)
v_prefix = torch.randn(1, 8, 1024, 128, generator=g, dtype=torch.float16)
scale = 1 / math.sqrt(128.0)

options = dict(
    actual_seq_lengths=torch.tensor([50]),        # valid query rows of batch 0
    actual_seq_lengths_kv=torch.tensor([512]),    # valid own keys of batch 0
    key_shared_prefix=k_prefix, value_shared_prefix=v_prefix,
    actual_shared_prefix_len=torch.tensor([50]),  # valid prefix keys, shared by every batch
    num_heads=8, input_layout="BNSD", scale=scale, pre_tokens=65535, next_tokens=65535,
)
for name, t in [("query", q), ("key", k), ("value", v), ("key_shared_prefix", k_prefix)]:
    print(f"{name:18s} {tuple(t.shape)} {t.dtype}")

# %% [markdown]
# ## Run it (eager)
#
# `parse_call` reads the keywords once (as the v1 op spells them); `fia_kit.run` executes the call on a
# backend and returns the op's two outputs (plus timings, not shown: they differ on every run). On an Ascend box `BACKEND` is `"npu"` and this is torch_npu's eager op (lengths
# passed as lists, as its schema wants); elsewhere it is the kit's reference.

# %%
call = parse_call("v1", q, k, v, options)
result = fia_kit.run(call, BACKEND)
out, lse = result.attention_out.cpu(), result.softmax_lse.cpu()
print("attention_out:", tuple(out.shape), out.dtype)
print("softmax_lse:  ", tuple(lse.shape), lse.dtype, "<- empty: softmax_lse_flag was not set")

# %% [markdown]
# The output has the query's shape and dtype (spec section 4.3: output D = value's D, dtype = the query's).
# The LSE is an **empty float32 tensor of shape (0,)** because it was not requested: that is what torch_npu
# returns from branch 7.2.0 on (older versions and the docs say shape (1,); spec section 22, row 2).
#
# `fia_kit.npu_fused_infer_attention_score` is the reference op under torch_npu's own signature, so the page's
# call can also be written directly. `agreement` shows how far two outputs are apart against the fp16 tolerance
# peers use (`atol = rtol = 1e-3`; `fia_kit.compare` applies the same one to every backend): on the reference
# backend the two are the same computation, on an Ascend box the first row is the NPU against the reference.

# %%
atol, rtol = TOLERANCES[torch.float16]  # (1e-3, 1e-3)
out_direct, _ = fia_kit.npu_fused_infer_attention_score(q, k, v, **options)
agreement({f"backend {BACKEND!r} vs the direct reference call": (out, out_direct)}, atol, rtol)

# %% [markdown]
# ## What the output means, row by row
#
# Three lengths decide everything (spec section 2 names them):
#
# * `L_q = 50`: only query rows 0..49 of the 164 are valid. Rows 50..163 are **not computed and written as 0**
#   (spec section 5.4: the kernel zero-fills the output whenever an actual length differs from S_q).
# * `P = 50`: every batch first attends to the first 50 rows of the shared prefix (spec section 14).
# * `L_kv = 512`: then to the first 512 of its own 1024 keys.
#
# So batch 0's key set is `prefix[:50] + kv[:512]`: **562 keys**, prefix first. `pre_tokens`/`next_tokens`
# are **ignored**: `sparse_mode` 0 without `atten_mask` has no band (spec section 6.3). `explain` validates a
# call and returns its resolved geometry without computing anything:

# %%
problem = fia_kit.reference.explain("v1", q, k, v, **options)
plan = problem.batches[0]
print("valid query rows L_q:      ", plan.q_len)
print("shared prefix keys P:      ", problem.prefix_len)
print("own keys L_kv:             ", plan.kv_len)
print("keys per query row P+L_kv: ", problem.prefix_len + plan.kv_len)
print("band (None = unbounded):   ", plan.band)

# %%
row_size = out.float().abs().amax(-1)  # (B, N, S_q): the largest |value| of each output row
print(f"rows 50..163: largest |value| {float(row_size[:, :, 50:].max()):.2g} (written as 0)")
print(f"rows 0..49:   smallest row maximum {float(row_size[:, :, :50].min()):.2g} (computed)")


# %% [markdown]
# ### Check against PyTorch's SDPA on exactly those 562 keys
#
# An independent computation: `torch.nn.functional.scaled_dot_product_attention` over the concatenation
# `prefix[:50] + kv[:512]`, in float32. If the op used any other key set (the whole prefix, all 1024 own
# keys, or the prefix alone), the rows would not match: the last three rows of the table are far outside the
# tolerance.

# %%
def sdpa_rows(keys, values):
    return torch.nn.functional.scaled_dot_product_attention(
        q[:, :, :50].float(), keys.float(), values.float(), scale=scale)

keys = torch.cat([k_prefix[:, :, :50], k[:, :, :512]], dim=2)
values = torch.cat([v_prefix[:, :, :50], v[:, :, :512]], dim=2)
expected = sdpa_rows(keys, values)
valid_rows = out[:, :, :50]
print("key set size:", keys.shape[2])
agreement({
    "rows 0..49 vs SDPA on prefix[:50] + kv[:512]": (valid_rows, expected),
    "rows 0..49 vs SDPA on the whole prefix + kv[:512]": (valid_rows, sdpa_rows(
        torch.cat([k_prefix, k[:, :, :512]], 2), torch.cat([v_prefix, v[:, :, :512]], 2))),
    "rows 0..49 vs SDPA on prefix[:50] + all 1024 keys": (valid_rows, sdpa_rows(
        torch.cat([k_prefix[:, :, :50], k], 2), torch.cat([v_prefix[:, :, :50], v], 2))),
    "rows 0..49 vs SDPA on prefix[:50] alone": (valid_rows, sdpa_rows(k_prefix[:, :, :50], v_prefix[:, :, :50])),
}, atol, rtol)

# %% [markdown]
# ## The LSE output
#
# With `softmax_lse_flag=True` (v2: `return_softmax_lse=True`) the op also returns the log-sum-exp of each
# row's scaled scores: float32, shape `(B, N_q, S_q, 1)` for this layout (`(T, N_q, 1)` for TND/NTD), and in
# the **natural log** (spec section 8; FlashInfer's LSE is base 2: divide by ln 2 to compare). Context-parallel
# callers merge partial outputs with it. Rows beyond `L_q` have no defined LSE (spec section 8: "unspecified";
# the reference writes +inf), so only rows 0..49 are checked.

# %%
lse_result = fia_kit.run(parse_call("v1", q, k, v, {**options, "softmax_lse_flag": True}), BACKEND)
lse = lse_result.softmax_lse.cpu()
print("softmax_lse:", tuple(lse.shape), lse.dtype)
scores = scale * q[:, :, :50].float() @ keys.float().transpose(-1, -2)  # (1, 8, 50, 562)
expected_lse = torch.logsumexp(scores, dim=-1, keepdim=True)              # natural log
print("LSE of row 0, heads 0..3:", [round(float(x), 2) for x in lse[0, :4, 0, 0]])
agreement({"LSE rows 0..49 vs logsumexp(scale · q·kᵀ), natural log": (lse[:, :, :50], expected_lse),
           "log2-based LSE (FlashInfer's) vs natural log": (lse[:, :, :50] / math.log(2), expected_lse),
           "attention_out with the LSE asked for vs without": (lse_result.attention_out.cpu(), out)}, atol, rtol)

# %% [markdown]
# ## Graph mode
#
# The page runs the op inside `torch.compile(model, backend=tng.get_npu_backend(...), dynamic=False,
# fullgraph=True)`: `tng.ops.*` only work in TorchAir's max-autotune (GE graph) mode and raise
# `NotImplementedError` in eager mode (spec section 1.4). The kit picks the closest graph mode this machine has:
#
# * on an Ascend box, `npu-graph`: TorchAir graph mode with int64 device-tensor lengths;
# * elsewhere, `compiled`: `torch.compile(fullgraph=True)` of a look-alike op with TorchAir's schema (lengths
#   are graph inputs, as on the NPU), computed by the reference;
# * if `torch.compile` is unusable here, the reference itself.

# %%
usable = {name: ok for name, (ok, _) in detect().backends().items()}
if BACKEND == "npu" and usable["npu-graph"]:
    GRAPH_BACKEND = "npu-graph"
elif usable["compiled"]:
    GRAPH_BACKEND = "compiled"
else:
    GRAPH_BACKEND = "reference"
print("graph mode runs on backend:", GRAPH_BACKEND)

graph = fia_kit.run(call, GRAPH_BACKEND)
print("graph-mode attention_out:", tuple(graph.attention_out.shape), graph.attention_out.dtype)
agreement({"graph mode vs eager": (graph.attention_out.cpu(), out)}, atol, rtol)

# %% [markdown]
# ## The page is titled v2, but its names are an old document's (spec section 1.3)
#
# The founding page documents `npu_fused_infer_attention_score_v2` with `actual_seq_lengths` /
# `actual_seq_lengths_kv`, `num_key_value_heads=1` and an `inner_precise` without default. That text matches
# an **older TorchAir document**, not any code. The real v2 (torch_npu and TorchAir schemas, current docs):
#
# | founding page (old doc) | real v2 | v1 |
# |---|---|---|
# | `actual_seq_lengths` | `actual_seq_qlen` | `actual_seq_lengths` |
# | `actual_seq_lengths_kv` | `actual_seq_kvlen` | `actual_seq_lengths_kv` |
# | `num_key_value_heads=1` | `num_key_value_heads=0` (0 = same as the query heads) | same as v2 |
# | `inner_precise` (no default) | `inner_precise=0` | same |
# | (`actual_shared_prefix_len` in the prose) | no shared prefix in v2 at all | `actual_shared_prefix_len` |
#
# Other renames: `num_heads` → `num_query_heads`, `scale` → `softmax_scale`, `softmax_lse_flag` →
# `return_softmax_lse`. Note also that the page's *example* calls the **v1**
# `tng.ops.npu_fused_infer_attention_score`: the shared prefix exists only in v1.
#
# All the op's parameters on one page: the v1 and v2 names ("-" where a form lacks the parameter), what TorchAir's
# `tng.ops` change (only the length lists' type), the default, what each does and the docs section that says so.
# Names and defaults are read from the schema strings (`fia_kit.signatures.parameter_table()`; spec section 1.6):

# %%
fia_kit.signatures.parameter_table()

# %% [markdown]
# The kit's v2 accepts the page's names as aliases (spec section 1.3 recommends it). This is the kit's
# extension: torch_npu's v2 rejects them, so the alias cell runs on the reference.

# %%
v2_options = dict(num_query_heads=8, input_layout="BNSD", softmax_scale=scale)
out_v2 = fia_kit.run(parse_call("v2", q, k, v, {**v2_options, "actual_seq_qlen": [50], "actual_seq_kvlen": [512]}),
             BACKEND).attention_out.cpu()
out_alias, _ = fia_kit.npu_fused_infer_attention_score_v2(
    q, k, v, **v2_options, actual_seq_lengths=[50], actual_seq_lengths_kv=[512])
print("v2 output:", tuple(out_v2.shape))
agreement({"the page's names vs the real v2 names": (out_alias, out_v2)}, atol, rtol)

# %% [markdown]
# Giving both spellings of the same length is an error, raised before any compute:

# %%
try:
    fia_kit.npu_fused_infer_attention_score_v2(q, k, v, **v2_options, actual_seq_qlen=[50],
                                               actual_seq_lengths=[50])
except fia_kit.FIAArgumentError as error:
    print(type(error).__name__, "->", error)

# %% [markdown]
# `num_key_value_heads` defaults to **0**, meaning "as many K/V heads as query heads". The page's default of 1
# would silently turn this multi-head call into multi-query attention; the kit checks the number against the
# key's head axis instead:

# %%
print("v2 default num_key_value_heads:", fia_kit.signatures.keyword_defaults("v2")["num_key_value_heads"])
print("resolved K/V heads for the call above:", fia_kit.reference.explain("v2", q, k, v, **v2_options).num_kv_heads)
try:
    fia_kit.npu_fused_infer_attention_score_v2(q, k, v, **v2_options, num_key_value_heads=1)
except fia_kit.FIAArgumentError as error:
    print(type(error).__name__, "->", error)

# %% [markdown]
# The shared prefix has no v2 spelling, so this v1 call cannot be respelled as v2:

# %%
try:
    call.keywords("v2")
except fia_kit.FIAArgumentError as error:
    print(type(error).__name__, "->", error)

# %% [markdown]
# ## Summary
#
# * Valid rows and keys come from the actual lengths: rows `≥ L_q` are zeros; each valid row attends to
#   `prefix[:P] + kv[:L_kv]`.
# * The LSE is float32, natural log, `(B, N_q, S_q, 1)` when asked for, `(0,)` otherwise.
# * TorchAir takes the lengths as int64 device tensors and needs graph mode.
# * Real v2 names: `actual_seq_qlen` / `actual_seq_kvlen`, `num_key_value_heads=0`.
#
# Next: [02 · layouts](02_layouts.ipynb).
