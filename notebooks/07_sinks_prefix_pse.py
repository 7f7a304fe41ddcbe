# %% [markdown]
# # 7 · Learnable sinks, shared prefix, pse_shift
#
# Three features that change *what* a query row attends to: an extra logit in its softmax denominator, a prefix of
# keys every batch shares, an additive bias on its scores. Each section states the rule, runs the op (the reference
# here, torch_npu's op on an Ascend box) and compares it with an independent computation with PyTorch's
# `scaled_dot_product_attention` (SDPA) or plain tensor maths.
#
# Spec ([docs/](../docs/README.md)): section 9 *pse_shift*, section 13 *learnable_sink*, section 14 *Shared prefix*,
# section 8 *softmax_lse*, section 23 *Open questions*.

# %%
import torch
from IPython.display import display

import fia_kit
from fia_kit import TOLERANCES, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

SDPA = torch.nn.functional.scaled_dot_product_attention
atol, rtol = TOLERANCES[torch.float16]  # fp16: 1e-3 / 1e-3
g = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float16):
    return torch.randn(*shape, generator=g).to(dtype)


def op(form, q, k, v, **options):
    """The op on BACKEND: (attention_out, softmax_lse) on the CPU."""
    result = fia_kit.run(parse_call(form, q, k, v, options), BACKEND)
    return result.attention_out.cpu(), result.softmax_lse.cpu()


# %% [markdown]
# ## learnable_sink (v2 only): an extra logit in every row's denominator
#
# `learnable_sink` holds one raw logit per query head (shape `(N_q,)`, bfloat16; **not** multiplied by the
# softmax scale). It joins the softmax denominator but has no value (spec section 13):
#
# `p[i, j] = exp(s[i, j]) / (Σ_j' exp(s[i, j']) + exp(sink[n]))`, `O = Σ_j p[i, j] v_j`
#
# so **each row's weights sum to less than 1**. It is the op-plugin test golden's recipe: append the sink as an
# extra column, softmax, drop the column. Sinks need the TND layout (packed sequences, cumulative lengths) and
# exclude quantisation, pse, left padding and the shared prefix (gpt-oss style models use them with
# sparse_mode 3 and paged K/V).
#
# With `value` all ones the output *is* the row sum of the weights, so it shows the missing mass directly:

# %%
q_lens, kv_lens = [3, 4], [4, 5]            # per batch; TND takes cumulative lengths [3, 7] / [4, 9]
q, k = randn(7, 4, 64), randn(9, 2, 64)     # (T, N, D): two batches packed
ones = torch.ones(9, 2, 64, dtype=torch.float16)
sink = torch.randn(4, generator=g).to(torch.bfloat16)
sink_options = dict(num_query_heads=4, num_key_value_heads=2, input_layout="TND", actual_seq_qlen=[3, 7],
                    actual_seq_kvlen=[4, 9], learnable_sink=sink, softmax_scale=0.125, return_softmax_lse=True)
row_sums, lse = op("v2", q, k, ones, **sink_options)
print("sink logit per head:", [round(float(x), 2) for x in sink])
print("row sums Σ_j p[i, j] (packed row t, then one column per query head):")
for t in range(7):
    print(f"  t={t} (batch {0 if t < 3 else 1}):", "  ".join(f"{float(x):.2f}" for x in row_sums[t, :, 0]))

# %% [markdown]
# An independent golden, as op-plugin's test writes it: per batch, scores in float32, the sink appended as a
# last column, softmax, column dropped, times V. The LSE that comes back is compared with the log-sum-exp of
# the scores **without** the sink: that the kernel leaves the sink out of the LSE is **[inferred]** from its
# order of operations (spec section 8) and is **open question 1** in spec section 23. Check it on an Ascend box
# before you rely on it.

# %%
v = randn(9, 2, 64)
out, lse = op("v2", q, k, v, **sink_options)
golden, lse_without_sink, lse_with_sink = [], [], []
q_start, kv_start = 0, 0
for lq, lk in zip(q_lens, kv_lens, strict=True):
    qb = q[q_start:q_start + lq].float().transpose(0, 1)                          # (N_q, L_q, D)
    kb = k[kv_start:kv_start + lk].float().transpose(0, 1).repeat_interleave(2, 0)  # (N_q, L_kv, D)
    vb = v[kv_start:kv_start + lk].float().transpose(0, 1).repeat_interleave(2, 0)
    s = 0.125 * qb @ kb.transpose(1, 2)                                          # (N_q, L_q, L_kv)
    with_sink = torch.cat([s, sink.float()[:, None, None].expand(4, lq, 1)], -1)
    golden.append((with_sink.softmax(-1)[..., :-1] @ vb).transpose(0, 1))
    lse_without_sink.append(s.logsumexp(-1).transpose(0, 1))
    lse_with_sink.append(with_sink.logsumexp(-1).transpose(0, 1))
    q_start, kv_start = q_start + lq, kv_start + lk
display(agreement({"attention_out vs the golden (softmax over [scores, sink], sink column dropped)":
                   (out, torch.cat(golden))}, atol, rtol))
lse = lse[..., 0]
agreement({"LSE vs logsumexp of the scores without the sink [inferred]": (lse, torch.cat(lse_without_sink)),
           "LSE vs logsumexp with the sink": (lse, torch.cat(lse_with_sink))}, 1e-4, 0)

# %% [markdown]
# ## Shared prefix (v1 only): every batch first attends to the same prefix rows
#
# `key_shared_prefix` / `value_shared_prefix` (batch dim 1) and `actual_shared_prefix_len` (one value `P`)
# make every batch attend to `concat(prefix[:P], own_kv[:L_kv[b]])`, prefix first. Masks, pse columns and the
# causal offsets of modes 3/4 all use that concatenated axis (spec section 14). It exists only in the v1 op;
# the v2 op has no such keyword (spec section 1.2). Not with paging, TND, MLA or left padding.

# %%
q, k, v = randn(2, 4, 3, 64), randn(2, 4, 6, 64), randn(2, 4, 6, 64)
k_prefix, v_prefix = randn(1, 4, 10, 64), randn(1, 4, 10, 64)
P, kv_lens = 7, [6, 4]
out, _ = op("v1", q, k, v, key_shared_prefix=k_prefix, value_shared_prefix=v_prefix, actual_shared_prefix_len=[P],
            actual_seq_lengths_kv=kv_lens, num_heads=4, input_layout="BNSD", scale=0.125)
def sdpa_over(b, keys, values):
    return SDPA(q[b].float(), torch.cat(keys, 1).float(), torch.cat(values, 1).float(), scale=0.125)


agreement({
    **{f"batch {b}: vs SDPA over prefix[:{P}] + kv[:{L}]": (
        out[b], sdpa_over(b, [k_prefix[0, :, :P], k[b, :, :L]], [v_prefix[0, :, :P], v[b, :, :L]]))
       for b, L in enumerate(kv_lens)},
    f"batch 0: vs SDPA over the whole prefix (10 rows) + kv[:{kv_lens[0]}]": (
        out[0], sdpa_over(0, [k_prefix[0], k[0, :, :kv_lens[0]]], [v_prefix[0], v[0, :, :kv_lens[0]]])),
    f"batch 1: vs SDPA over kv[:{kv_lens[1]}] alone": (
        out[1], sdpa_over(1, [k[1, :, :kv_lens[1]]], [v[1, :, :kv_lens[1]]])),
}, atol, rtol)

# %%
try:
    parse_call("v2", q, k, v, dict(num_query_heads=4, key_shared_prefix=k_prefix, value_shared_prefix=v_prefix))
except fia_kit.FIAArgumentError as error:
    print("v2 refuses it:", error.parameter, "->", error.rule, "|", error.hint)

# %% [markdown]
# ## pse_shift: an additive bias, added after scaling, one plane per query head
#
# `s = scale · q·kᵀ + pse` (spec sections 3 and 9): the bias is **not** scaled. Its shape is
# `(B or 1, N_q, S_q', S_kv')` with `S_q' ≥ S_q`, `S_kv' ≥ S_kv` (+ P with a prefix): it has a per-query-head
# axis and is **not broadcast over heads**. A `(1, 1, 1, CAP)` pse was accepted by the hardware and gave wrong
# results (vLLM-Ascend issue #15503); the kit refuses it. Not with MLA, TND or sinks.

# %%
q, k, v = randn(2, 4, 5, 64), randn(2, 4, 8, 64), randn(2, 4, 8, 64)
pse = randn(1, 4, 5, 8)   # batch 1 broadcasts over B; the head axis is required
out, _ = op("v1", q, k, v, pse_shift=pse, num_heads=4, input_layout="BNSD", scale=0.125)
added_after = SDPA(q.float(), k.float(), v.float(), attn_mask=pse.float(), scale=0.125)  # scale*qk + pse
scaled_too = SDPA(q.float(), k.float(), v.float(), attn_mask=0.125 * pse.float(), scale=0.125)
display(agreement({"vs SDPA of scale·q·kᵀ + pse": (out, added_after),
                   "vs SDPA of scale·(q·kᵀ + pse)": (out, scaled_too)}, atol, rtol))
try:
    op("v1", q, k, v, pse_shift=randn(1, 1, 5, 8), num_heads=4, input_layout="BNSD")
except fia_kit.FIAArgumentError as error:
    print("(1, 1, S_q, S_kv) refused:", error.parameter, "->", error.rule)

# %% [markdown]
# ## Summary
#
# | feature | rule | spec |
# |---|---|---|
# | learnable_sink | extra denominator term `exp(sink[n])`, rows sum < 1; LSE without it **[inferred]**, open question 1 | 13, 8, 23 |
# | shared prefix | v1 only; keys = `prefix[:P] + kv[:L_kv]` | 14 |
# | pse_shift | added after scaling; per-head axis, no broadcast over heads | 9 |
#
# Next: [08 · quantisation](08_quantisation.ipynb).
