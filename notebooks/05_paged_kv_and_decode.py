# %% [markdown]
# # 5 · Paged KV caches and decode
#
# Serving engines keep K/V in a pool of fixed-size blocks; each sequence owns a list of block ids, its row of
# `block_table`. FIA reads the cache through that table. Decoding (one new token per sequence, S_q = 1) takes
# the op's "IncreFlashAttention" path, where a few rules change.
#
# Spec ([docs/](../docs/README.md)): section 11 *Paged attention (block_table)*, section 6.5 *S_q == 1
# (decode / IFA path)*, section 5.1 *Non-packed layouts* (actual lengths ignored for S_q == 1).

# %%
import torch

import fia_kit
from fia_kit import TOLERANCES, builders, diagrams, masks, paged, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

# %% [markdown]
# ## A cache and a block table
#
# Token `t` of sequence `b` lives in block `block_table[b, t // block_size]`, at offset `t % block_size`.
# Blocks need not be contiguous or ordered; unused table entries are never read. `actual_seq_lengths_kv` is
# **required** with paging, and `block_table` is int32 `(B, max_blocks_per_seq)`.
#
# `fia_kit.builders.to_paged` writes per-sequence K (or V) into a cache, placing the blocks at shuffled
# physical ids as an allocator would, and returns the block table; here the pool keeps two spare blocks that no
# sequence uses. The sizes suit the NPU: block_size 128 (prefill paging wants 128..512 in multiples of 128, decode
# a multiple of 16), D = 128.

# %%
g = torch.Generator().manual_seed(0)
B, N, N_KV, D, BLOCK = 3, 4, 2, 128, 128
kv_lens = [300, 77, 512]
S_KV = max(kv_lens)
k = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)   # contiguous K/V, BNSD
v = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)

def paged_cache(x, rank):
    """Sequences of x (B, N_kv, S, D) cut to kv_lens, in a rank-``rank`` cache (same block table each time)."""
    return builders.to_paged([x[b, :, :n] for b, n in enumerate(kv_lens)], BLOCK, cache_rank=rank,
                             extra_blocks=2, generator=torch.Generator().manual_seed(1))

cache_k, block_table = paged_cache(k, 4)   # rank 4: (num_blocks, N_kv, block_size, D)
cache_v, _ = paged_cache(v, 4)
print("cache (rank 4, BnNBsD):", tuple(cache_k.shape), cache_k.dtype)
print("block_table:", tuple(block_table.shape), block_table.dtype)
print(block_table)

b, t = 0, 200                              # token 200 of sequence 0
block, offset = int(block_table[b, t // BLOCK]), t % BLOCK
print(f"token {t} of sequence {b}: block_table[{b}, {t // BLOCK}] = {block}, offset {t} % {BLOCK} = {offset}")
print(f"cache_k[{block}, head 0, {offset}, :4] =", [round(float(x), 3) for x in cache_k[block, 0, offset, :4]])
print(f"k[{b}, head 0, {t}, :4]        =", [round(float(x), 3) for x in k[b, 0, t, :4]])
agreement({f"cache_k[{block}, :, {offset}] vs k[{b}, :, {t}]": (cache_k[block, :, offset], k[b, :, t]),
           "paged.gather_sequence(cache_k, block_table[1], L_kv[1]) vs k[1, :, :L_kv[1]]": (
               paged.gather_sequence(cache_k, block_table[1], kv_lens[1], N_KV), k[1, :, :kv_lens[1]])}, 0, 0)

# %% [markdown]
# The whole table at once: each sequence's row of `block_table` (top; each cell names a cache block, coloured over
# the part of its 128 tokens the sequence's `L_kv` fills, the rest of a last block unused; entries past
# `ceil(L_kv / 128)` are never read) and the cache's blocks (bottom, labelled batch·logical block). Sequence 1
# (77 tokens) uses a single block; its other three table entries are not read, and two cache blocks belong to no
# sequence.

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
problem = fia_kit.plan("v1", torch.zeros(B, N, 1, D, dtype=torch.float16), cache_k, cache_v,
                       num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD",
                       block_table=block_table, block_size=BLOCK, actual_seq_lengths_kv=kv_lens)
diagrams.block_table_figure(problem).show()

# %% [markdown]
# ## Three cache layouts, told apart by rank
#
# With paging the key/value `input_layout` is ignored; the cache layout follows from the tensor's rank
# (spec section 11):
#
# | rank | name | shape |
# |---|---|---|
# | 3 | BnBsH | `(num_blocks, block_size, N_kv·D)` |
# | 4 | BnNBsD | `(num_blocks, N_kv, block_size, D)` |
# | 5 | NZ | `(num_blocks, N_kv, D/16, block_size, 16)` for fp16/bf16 (`/32, 32` for int8) |
#
# All three hold the same tokens; the op gives the same answer with each, and the same as contiguous K/V
# with the same lengths. (BSH/BSND queries accept only BnBsH on A2/A3, and NZ with a float cache is a V5/950
# addition, so this cell runs the three ranks on the reference; the contiguous-vs-paged check below runs on
# `BACKEND`.) Each output is measured against one independent float32 golden, SDPA over each sequence's first
# `L_kv` keys: fp16 outputs of two code paths may differ in a last bit, a golden shows how far each is from the
# answer.

# %%
q_prefill = torch.randn(B, N, 4, D, generator=g, dtype=torch.float16)
caches = {rank: (paged_cache(k, rank)[0], paged_cache(v, rank)[0]) for rank in (3, 4, 5)}
options = dict(num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
               block_table=block_table, block_size=BLOCK, actual_seq_lengths_kv=kv_lens)
contiguous_options = dict(num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
                          actual_seq_lengths_kv=kv_lens)
atol, rtol = TOLERANCES[torch.float16]
golden = torch.cat([torch.nn.functional.scaled_dot_product_attention(   # (B, N, 4, D) float32
    q_prefill[b:b + 1].float(), k[b:b + 1, :, :kv_lens[b]].float(), v[b:b + 1, :, :kv_lens[b]].float(),
    scale=D ** -0.5, enable_gqa=True) for b in range(B)])
agreement({"contiguous K/V vs SDPA": (fia_kit.npu_fused_infer_attention_score(q_prefill, k, v,
                                                                              **contiguous_options)[0], golden),
           **{f"rank {rank} {paged.CACHE_LAYOUTS[rank]} {tuple(ck.shape)} cache vs SDPA": (
               fia_kit.npu_fused_infer_attention_score(q_prefill, ck, cv, **options)[0], golden)
              for rank, (ck, cv) in caches.items()}}, atol, rtol)

# %% [markdown]
# ## Paged == contiguous on the backend

# %%
paged_out = fia_kit.run(parse_call("v1", q_prefill, cache_k, cache_v, options), BACKEND).attention_out.cpu()
contiguous_out = fia_kit.run(parse_call("v1", q_prefill, k, v, contiguous_options), BACKEND).attention_out.cpu()
agreement({"prefill, paged rank-4 cache vs SDPA": (paged_out, golden),
           "prefill, contiguous K/V vs SDPA": (contiguous_out, golden)}, atol, rtol)

# %% [markdown]
# Paging rules the kit checks before compute: `block_size` non-zero, `block_table` with B rows and enough
# columns for the longest sequence (`ceil(max L_kv / block_size)`), `actual_seq_lengths_kv` given:

# %%
for bad in (dict(actual_seq_lengths_kv=None), dict(block_table=block_table[:, :2]), dict(block_size=0)):
    try:
        fia_kit.reference.explain("v1", q_prefill, cache_k, cache_v, **{**options, **bad})
    except fia_kit.FIAArgumentError as error:
        print(type(error).__name__, "->", error)

# %% [markdown]
# ## Decode: S_q == 1
#
# With one query row per sequence (and no MLA rope input) the op runs its decode path, where
# **`sparse_mode`, `pre_tokens`, `next_tokens` and `actual_seq_lengths` are ignored** (spec sections 6.5 and
# 5.1). The single query sees every key `0 .. P + L_kv − 1` that an explicit mask does not hide. A right-down
# causal mask would give the same answer, so the semantics agree.

# %%
q_decode = torch.randn(B, N, 1, D, generator=g, dtype=torch.float16)
decode = lambda **extra: fia_kit.run(parse_call("v1", q_decode, cache_k, cache_v, {**options, **extra}),  # noqa: E731
                             BACKEND).attention_out.cpu()
plain = decode()
expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
    q_decode[b:b + 1].float(), k[b:b + 1, :, :kv_lens[b]].float(), v[b:b + 1, :, :kv_lens[b]].float(),
    scale=D ** -0.5, enable_gqa=True) for b in range(B)])
template = masks.compressed_causal_mask()
capacity = block_table.shape[1] * BLOCK                        # key axis of a paged decode mask
no_mask = torch.zeros(B, capacity, dtype=torch.bool)            # (B, S_kv'): nothing hidden
agreement({
    "decode vs SDPA over each sequence's L_kv keys": (plain, expected),
    "sparse_mode 0, a mask, pre=next=0 (prefill: the diagonal only) vs plain decode": (
        decode(atten_mask=no_mask, pre_tokens=0, next_tokens=0), plain),
    "sparse_mode 4, pre=next=0 vs plain decode": (
        decode(atten_mask=template, sparse_mode=4, pre_tokens=0, next_tokens=0), plain),
    "sparse_mode 2 (prefill: key 0 only) vs plain decode": (decode(atten_mask=template, sparse_mode=2), plain),
    "actual_seq_lengths=[0, 0, 0] vs plain decode": (decode(actual_seq_lengths=[0, 0, 0]), plain),
}, atol, rtol)

# %% [markdown]
# Only the explicit mask applies. With S_q == 1 it is `(B, S_kv')`, `(B, 1, S_kv')` or `(B, 1, 1, S_kv')`
# (batch 1 also accepted), and with paging its key axis must cover `block_table.shape[1] × block_size`
# (spec section 6.2). Here it hides the first 10 keys of every sequence.
#
# Use a per-batch `(B, S_kv')` mask when checking hardware: in vLLM-Ascend issue #15503 a `(1, 1, 1, CAP)`
# mask in bf16 paged decode was silently ignored beyond key 512. The spec keeps the documented semantics and
# lists the hardware behaviour as an **open question** (spec section 6.2, section 23 item 7).

# %%
decode_mask = torch.zeros(B, capacity, dtype=torch.bool)
decode_mask[:, :10] = True
masked = decode(atten_mask=decode_mask)
expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
    q_decode[b:b + 1].float(), k[b:b + 1, :, 10:kv_lens[b]].float(), v[b:b + 1, :, 10:kv_lens[b]].float(),
    scale=D ** -0.5, enable_gqa=True) for b in range(B)])
agreement({f"mask {tuple(decode_mask.shape)} hiding keys 0..9 vs SDPA over keys 10..L_kv-1": (masked, expected),
           "the same vs SDPA over all L_kv keys (mask ignored)": (masked, plain)}, atol, rtol)

# %% [markdown]
# ## Summary
#
# * `block_table[b, t // block_size]` and `t % block_size` locate token `t`; `actual_seq_lengths_kv` is
#   required and per batch.
# * The cache rank picks the layout: 3 BnBsH, 4 BnNBsD, 5 NZ.
# * A paged call equals the contiguous call with the same lengths.
# * S_q == 1: sparse_mode, pre/next and `actual_seq_lengths` are ignored; only the mask and `L_kv` apply.
#   (With MLA rope inputs, S_q == 1 keeps sparse modes 0/3/4: spec section 6.5.)
#
# Next: [06 · GQA and MLA](06_gqa_and_mla.ipynb).
