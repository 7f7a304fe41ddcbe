# %% [markdown]
# # 6 · GQA and MLA: sharing K/V heads, extending the head dim
#
# Two features that change *which* key/value head a query head reads and *what* enters the score `q·kᵀ`. Each
# section states the rule, runs the op (the reference here, torch_npu's op on an Ascend box) and compares it with an
# independent computation with PyTorch's `scaled_dot_product_attention` (SDPA).
#
# Spec ([docs/](../docs/README.md)): section 10 *GQA / MQA*, section 12 *MLA: query_rope / key_rope*.

# %%
import math

import torch

import fia_kit
from fia_kit import TOLERANCES, diagrams, parse_call
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
# ## GQA: query head `n` reads KV head `n // G`
#
# With `N_q` query heads and `N_kv` key/value heads (`G = N_q / N_kv` an integer, at most 64), query head `n`
# uses KV head `floor(n / G)`: **contiguous groups**, exactly `repeat_interleave(G, dim=head)` of K and V
# (spec section 10; evidence: the kernels' `n2Idx * gSize + g` indexing). `num_key_value_heads = 0` means
# `N_kv = N_q`. Output and LSE keep `N_q` heads.

# %%
N_q, N_kv, D = 8, 2, 64
G = N_q // N_kv
q, k, v = randn(1, N_q, 5, D), randn(1, N_kv, 7, D), randn(1, N_kv, 7, D)
gqa_call = parse_call("v1", q, k, v, dict(num_heads=N_q, num_key_value_heads=N_kv, input_layout="BNSD",
                                          scale=D ** -0.5))
out = fia_kit.run(gqa_call, BACKEND).attention_out.cpu()
print("query head -> kv head:", {n: n // G for n in range(N_q)})
print("output keeps N_q heads:", tuple(out.shape))

# %% [markdown]
# The same mapping drawn from the call's plan: each column is a query head, coloured by the KV head it reads; the
# bottom row is the mistake of expanding K/V with a tiled `repeat`, which pairs head `n` with `n % N_kv`. The second
# figure is a 64-head model with 8 KV heads (G = 8), as in many served LLMs.

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
diagrams.gqa_figure(fia_kit.plan(gqa_call), tiled_contrast=True).show()
diagrams.gqa_figure(64, 8).show()

# %% [markdown]
# Against SDPA with K/V expanded both ways: only the contiguous groups (`repeat_interleave`) agree.

# %%
interleaved = SDPA(q.float(), k.float().repeat_interleave(G, 1), v.float().repeat_interleave(G, 1), scale=D ** -0.5)
tiled = SDPA(q.float(), k.float().repeat(1, G, 1, 1), v.float().repeat(1, G, 1, 1), scale=D ** -0.5)
agreement({"vs SDPA with repeat_interleave(G) (heads 0..3 -> kv 0, 4..7 -> kv 1)": (out, interleaved),
           "vs SDPA with a tiled repeat (heads 0, 2, 4, 6 -> kv 0)": (out, tiled)}, atol, rtol)

# %% [markdown]
# ## MLA: rope parts are concatenated along D, not rotated
#
# `query_rope` / `key_rope` (both or neither, head dim **64**) join the scores as
# `s = scale · (⟨q_nope, k_nope⟩ + ⟨q_rope, k_rope⟩)`: the same as concatenating them onto q and k along D
# before `q·kᵀ` (spec section 12). The English doc's "RoPE(query, query_rope)" suggests a rotation; none is
# applied (the cube kernel copies the rope parts next to the nope parts in L1 and multiplies once). Values have
# no rope part, so the output D is the value's D. The scale is the caller's: the doc uses `1/sqrt(D + 64)`.
#
# Two shapes exist: **D = 128** (prefill MLA) and **D = 512** (decode MLA, `N_kv = 1`, typically
# `key = value = k_nope` in absorbed MLA as vLLM-Ascend calls it).

# %%
# Prefill MLA: D = 128 (+ 64 rope), GQA 4 -> 1, BNSD.
q, k, v = randn(1, 4, 6, 128), randn(1, 1, 9, 128), randn(1, 1, 9, 128)
q_rope, k_rope = randn(1, 4, 6, 64), randn(1, 1, 9, 64)
scale = 1 / math.sqrt(128 + 64)
out, _ = op("v2", q, k, v, query_rope=q_rope, key_rope=k_rope, num_query_heads=4, num_key_value_heads=1,
            input_layout="BNSD", softmax_scale=scale)
concatenated = SDPA(torch.cat([q, q_rope], -1).float(), torch.cat([k, k_rope], -1).float().expand(1, 4, 9, 192),
                    v.float().expand(1, 4, 9, 128), scale=scale)
without_rope = SDPA(q.float(), k.float().expand(1, 4, 9, 128), v.float().expand(1, 4, 9, 128), scale=scale)
print("output D = value's D:", out.shape[-1])
agreement({"vs SDPA on [q, q_rope]·[k, k_rope] (concatenated along D)": (out, concatenated),
           "vs SDPA ignoring the rope parts": (out, without_rope)}, atol, rtol)

# %%
# Decode MLA: D = 512, N_kv = 1, S_q = 1, key = value = k_nope (absorbed MLA).
q_nope, k_nope = randn(2, 16, 1, 512), randn(2, 1, 32, 512)
q_pe, k_pe = randn(2, 16, 1, 64), randn(2, 1, 32, 64)
scale = 1 / math.sqrt(512 + 64)
out, lse = op("v2", q_nope, k_nope, k_nope, query_rope=q_pe, key_rope=k_pe, num_query_heads=16,
              num_key_value_heads=1, input_layout="BNSD", softmax_scale=scale)
expected = SDPA(torch.cat([q_nope, q_pe], -1).float(), torch.cat([k_nope, k_pe], -1).float().expand(2, 16, 32, 576),
                k_nope.float().expand(2, 16, 32, 512), scale=scale)
print("decode MLA output:", tuple(out.shape))
agreement({"decode MLA vs SDPA on the concatenation": (out, expected)}, atol, rtol)

# %% [markdown]
# Any other query D with rope parts is refused before compute, naming the parameter and the rule
# (`fia_kit.FIAArgumentError`):

# %%
try:
    op("v2", randn(1, 4, 3, 64), randn(1, 4, 5, 64), randn(1, 4, 5, 64), query_rope=randn(1, 4, 3, 64),
       key_rope=randn(1, 4, 5, 64), num_query_heads=4, input_layout="BNSD")
except fia_kit.FIAArgumentError as error:
    print("refused:", error.parameter, "->", error.rule)

# %% [markdown]
# ## Summary
#
# | feature | rule | spec |
# |---|---|---|
# | GQA | query head `n` -> KV head `n // G` (repeat_interleave) | 10 |
# | MLA rope | concatenated along D (no rotation); D = 128 prefill, D = 512 decode with N_kv = 1 | 12 |
#
# Next: [07 · sinks, shared prefix, pse_shift](07_sinks_prefix_pse.ipynb).
