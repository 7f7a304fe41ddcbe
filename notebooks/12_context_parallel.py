# %% [markdown]
# # 12 · Context parallel: FIA's LSE across ranks
#
# When one request's keys live on several devices (decode context parallel, chunked prefill under DCP, speculative
# decoding under DCP, ring prefill), every rank runs a normal FIA call on its share and the partial results are
# merged with the softmax LSE. This notebook runs those patterns as vLLM and vllm-ascend write them, on ranks:
# first as threads of this kernel (`fia_kit.cp.run_in_process`), then on real `torch.distributed` gloo processes
# (`fia_kit.cp.launch`). Each rank's merged output is checked against float64 attention over the whole cache.
#
# Spec ([docs/](../docs/README.md)): section 8 *softmax_lse*, section 7 item 3 and section 25.1 (what a row without
# keys writes), and [context_parallel.md](../docs/context_parallel.md) (the call sites, `npu_attention_update`,
# the pitfalls).

# %%
import torch

import fia_kit
from fia_kit import TOLERANCES, cp
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

atol, rtol = TOLERANCES[torch.float16]  # fp16: 1e-3 / 1e-3
g = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=g).to(torch.float16)


def op(q, k, v, **options):
    """The op on BACKEND: (attention_out, softmax_lse) on the CPU."""
    result = fia_kit.run(fia_kit.plan("v1", q, k, v, **options), BACKEND)
    return result.attention_out.cpu(), result.softmax_lse.cpu()


# %% [markdown]
# ## Why FIA returns the LSE
#
# Split a request's keys in two parts. Each part's call returns its output `O_k` and `lse_k = ln Σ_j exp(s_j)` over
# its keys. Then `lse = ln Σ_k exp(lse_k)` and `O = Σ_k exp(lse_k − lse) · O_k` is attention over all keys: only one
# vector and one number per row cross the network. The kit's own merge is `fia_kit.merge_attention`; the device's
# is `torch_npu.npu_attention_update`, whose twin is `fia_kit.npu_attention_update` (lists of `(N,)` LSEs and
# `(N, D)` outputs, N = tokens × heads).

# %%
H, D, L = 4, 64, 40
q, k, v = randn(1, H, 1, D), randn(1, H, L, D), randn(1, H, L, D)
parts = [op(q, k[:, :, s], v[:, :, s], num_heads=H, input_layout="BNSD", scale=D ** -0.5, softmax_lse_flag=True)
         for s in (slice(0, 25), slice(25, L))]
whole = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=D ** -0.5)
merged, _ = fia_kit.merge_attention([o for o, _ in parts], [lse for _, lse in parts])
twin, _ = fia_kit.npu_attention_update([lse.reshape(-1) for _, lse in parts],
                                       [o.reshape(-1, D).float() for o, _ in parts])
agreement({"merge_attention of the two halves vs SDPA over all 40 keys": (merged, whole),
           "npu_attention_update (twin) of the two halves vs SDPA": (twin.view(1, H, 1, D), whole)}, atol, rtol)

# %% [markdown]
# ## What a rank without keys writes, by route
#
# A rank holding none of a request's keys still runs its call, with `actual_seq_lengths_kv` 0 for that request.
# The LSE it writes there depends on the host route (`Plan.route`, spec 25.1) and the kernel: each row below is a
# real call with its second batch empty. `npu_attention_update` turns +inf into −inf first, so every one of these
# gets weight 0 there; a plain `torch.logsumexp` merge turns +inf into NaN.

# %%
route_calls = {
    "decode BSND, S_q 1, D 256, MHA": (randn(2, 1, 2, 256), randn(2, 8, 2, 256), randn(2, 8, 2, 256),
                                       dict(num_heads=2, input_layout="BSND")),
    "decode BSND, S_q 1, D 64, GQA": (randn(2, 1, 4, 64), randn(2, 8, 2, 64), randn(2, 8, 2, 64),
                                      dict(num_heads=4, num_key_value_heads=2, input_layout="BSND")),
    "decode TND, 1 token each (vllm-ascend GQA DCP)": (randn(2, 4, 64), randn(16, 2, 64), randn(16, 2, 64),
                                                      dict(num_heads=4, num_key_value_heads=2, input_layout="TND",
                                                           actual_seq_lengths=[1, 2])),
    "MLA decode BNSD, D 512 + rope 64 (vllm-ascend MLA DCP)": (
        randn(2, 8, 1, 512), randn(2, 1, 8, 512), randn(2, 1, 8, 512),
        dict(num_heads=8, num_key_value_heads=1, input_layout="BNSD", query_rope=randn(2, 8, 1, 64),
             key_rope=randn(2, 1, 8, 64))),
    "prefill BNSD, S_q 4": (randn(2, 4, 4, 64), randn(2, 2, 8, 64), randn(2, 2, 8, 64),
                            dict(num_heads=4, num_key_value_heads=2, input_layout="BNSD")),
}
print(f"{'call':56} {'Plan.route':11} {'LSE, empty batch':>18}  weight in npu_attention_update")
for name, (rq, rk, rv, options) in route_calls.items():
    empty = [8, 8] if options["input_layout"] == "TND" else [8, 0]  # TND lengths are cumulative
    the_plan = fia_kit.plan("v1", rq, rk, rv, actual_seq_lengths_kv=empty, softmax_lse_flag=True, **options)
    lse = fia_kit.run(the_plan, "reference").softmax_lse
    value = float(lse[-1, 0, 0] if options["input_layout"] == "TND" else lse.reshape(-1)[-1])
    merged_out, _ = fia_kit.npu_attention_update([torch.tensor([value]), torch.tensor([0.0])],
                                                 [torch.zeros(1, 8), torch.ones(1, 8)])
    print(f"{name:56} {the_plan.route:11} {value:>18.9g}  {1 - float(merged_out[0, 0]):.0f}")

# %% [markdown]
# The last column merges that value with a finite partner whose output is 1 and reads back the weight of the empty
# part: 0 everywhere. The same +inf beside a finite part in a `torch.logsumexp` merge:

# %%
lses = torch.tensor([[float("inf")], [0.5]])
lse_total = torch.logsumexp(lses, dim=0)
print("logsumexp:", lse_total.item(), "  weights exp(lse_k - lse):", torch.exp(lses - lse_total).flatten().tolist())

# %% [markdown]
# ## Layouts: which rank holds which token
#
# DCP deals the KV cache out in runs of `interleave_size` tokens, run j to rank j mod W (vllm-ascend's
# `get_dcp_local_seq_lens`). `cp.local_lengths` gives each rank's count per request; a request shorter than
# W × interleave_size leaves some ranks without any of its keys.

# %%
seq_lens, W, interleave = (1, 6, 35), 4, 2
print("local_lengths (rank x request):\n", cp.local_lengths(seq_lens, W, interleave))

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
cp.figures.split_figure(seq_lens, W, interleave).show()
keys = [randn(1, n, 32) for n in seq_lens]
cp.figures.caches_figure(cp.shard_paged(keys, keys, W, block_size=16, interleave_size=interleave)).show()
cp.figures.zigzag_figure(32, W).show()

# %% [markdown]
# ## DCP decode, shape by shape (ranks as threads)
#
# vllm-ascend's GQA decode under DCP (`attention_cp.py::_forward_decode_dcp`): each rank holds `H` query heads and
# its share of every request's cache (one KV head, replicated over the group). It all-gathers the query heads,
# runs one FIA call over its cache (TND, its local `actual_seq_lengths_kv`), concatenates `[out | lse]` in float32,
# sends each rank its heads with `all_to_all_single`, and merges the W partitions with `npu_attention_update`.
# `cp.recipes.dcp_decode` is that code; below its steps are run one by one on 2 in-process ranks.

# %%
W, H, D = 2, 2, 32
seq_lens = (1, 6, 35)
kv = [randn(1, n, D) for n in seq_lens], [randn(1, n, D) for n in seq_lens]
query = randn(len(seq_lens), W * H, D)  # every rank's heads; rank r starts from heads r*H .. r*H + H - 1
caches = cp.shard_paged(*kv, W, block_size=16, interleave_size=2)


def dcp_decode_steps(group):
    shapes = {}
    local_q = query[:, group.rank * H:(group.rank + 1) * H]
    shapes["local query (T, H, D)"] = local_q.shape
    q_all = group.all_gather(local_q, 1)
    shapes["all-gathered query (T, W*H, D)"] = q_all.shape
    cache = caches[group.rank]
    out, lse = cp.fia_op()(q_all, cache.key, cache.value, num_heads=W * H, num_key_value_heads=1,
                           input_layout="TND", scale=D ** -0.5, softmax_lse_flag=True,
                           block_table=cache.block_table, block_size=16,
                           actual_seq_lengths_kv=cache.lengths.tolist(), actual_seq_lengths=[1, 2, 3])
    shapes["FIA out, lse"] = (out.shape, lse.shape)
    sent = cp.recipes.process_attn_out_lse(group, out, lse)
    shapes["[out | lse] after all_to_all (T, W*H, D+1)"] = sent.shape
    merged = cp.recipes.attention_update_merge(sent, D, group.world_size)
    shapes["merged (T, H, D)"] = merged.shape
    return shapes, cache.lengths.tolist(), lse, merged


results = cp.run_in_process(dcp_decode_steps, W)
for step, shape in results[0][0].items():
    print(f"{step:44} {shape}")
for rank, (_, lengths, lse, _) in enumerate(results):
    print(f"rank {rank}: local lengths {lengths}, the LSE values of its call for request 0 (4 heads): "
          f"{ {k: n for k, n in cp.sentinel_counts(lse[0]).items() if n} }")

# %% [markdown]
# Rank 1 holds no key of request 0, and its call (route split-fuse) writes +inf there; the update gives that
# partition weight 0. Against float64 SDPA over each request's whole cache, rank by rank:

# %%
golden = torch.cat([torch.nn.functional.scaled_dot_product_attention(
    query[b:b + 1].transpose(0, 1).double(), kv[0][b].double(), kv[1][b].double(), scale=D ** -0.5).transpose(0, 1)
    for b in range(len(seq_lens))])
agreement({f"rank {r}: merged heads {r * H}..{r * H + H - 1} vs SDPA over the whole cache":
           (results[r][3], golden[:, r * H:(r + 1) * H]) for r in range(W)}, atol, rtol)

# %% [markdown]
# ## The same on real gloo ranks
#
# `cp.launch` starts W processes on 127.0.0.1 with torchrun's environment, gloo on the loopback interface, the whole
# run bounded by its timeout (ranks that outlive it are killed). Each rank runs the worked cases of
# `cp.scenarios`, each a normal kit call per rank, and returns a report against float64 attention: rows beyond the
# tolerance, NaN rows, and the LSE values its own call wrote.

# %%
reports = cp.launch(cp.scenarios.all_cases, 2, timeout=120)
print(cp.validation.table([r for rank in reports for r in rank if r.rank == 1]))

# %% [markdown]
# Rank 1's table (rank 0's agrees). DCP decode, GQA and MLA, vLLM's AG+RS merge and ring prefill agree with the
# golden. Two rows do not: they are the two pitfalls below.
#
# ## Pitfall 1: the chunked-prefill context merge gives NaN
#
# With chunked prefill under DCP, a request's earlier context is split over the ranks like the decode cache. Each
# rank attends the (all-gathered) new tokens to its share; the partitions are merged by vllm-ascend's
# `_update_out_and_lse`, a `torch.logsumexp`. Request 0 has 1 token of context: only rank 0 holds it, rank 1's
# call writes +inf for it (it still runs: it holds context of request 2), and logsumexp turns it into NaN on
# **both** ranks after the all_to_all. Turning +inf into −inf first (what `npu_attention_update` does) fixes it.

# %%
print(cp.validation.table(cp.run_in_process(
    lambda group: [cp.scenarios.chunked_prefill_case(group), cp.scenarios.chunked_prefill_case(group, fixed=True)],
    2)[0]))

# %% [markdown]
# ## Pitfall 2: the MTP mask leaks future tokens on a rank with no earlier key
#
# Speculative decoding under DCP sends 1 + k tokens per request with a per-rank mask
# (`dcp_utils.py::generate_mtp_attention_mask_for_decode`): local key `k` is hidden from a query at position p when
# `k > local_q(p) − 1` **and** `local_q(p) − 1 ≥ 0`. With W = 2, interleave 4 and a history of 3, the new tokens sit
# at positions 3, 4, 5; rank 1 holds positions 4 and 5. The query at position 3 has no earlier key on rank 1, so
# its row is left open and it sees positions 4 and 5: the future. Hiding the whole row fixes it (FIA then writes
# about −1e12 for that row, which the update weighs 0). Rows are queries, columns rank 1's keys, 1 = hidden:

# %%
print("vllm-ascend:\n", cp.mtp_mask([3], [3], 2, rank=1, interleave_size=4)[0].int())
print("fixed:\n", cp.mtp_mask([3], [3], 2, rank=1, interleave_size=4, fixed=True)[0].int())
print(cp.validation.table(cp.run_in_process(
    lambda group: [cp.scenarios.mtp_case(group), cp.scenarios.mtp_case(group, fixed=True)], 2)[1]))

# %% [markdown]
# ## Ring prefill
#
# Prefill context parallel splits one long prompt in 2W chunks, rank r holding chunks r and 2W − 1 − r (the
# zigzag: equal causal work per rank). K/V travel around the ring; at each step every rank attends its queries to
# the visiting K/V with a position mask and folds the result in with `npu_attention_update(update_type=1)`.

# %%
print(cp.validation.table(cp.run_in_process(lambda group: [cp.scenarios.ring_prefill_case(group)], 4)[3]))

# %% [markdown]
# ## On an Ascend box
#
# Every recipe takes the op and the merge as arguments: on an Atlas A2/A3 box pass
# `op=torch_npu.npu_fused_infer_attention_score` and `update=torch_npu.npu_attention_update`, device tensors, and a
# group from `cp.init_from_env("hccl")` (run a script with `torchrun --nproc-per-node 2`, or
# `python -m fia_kit.cp module:function --nproc 2` for gloo). The cell below compares the real
# `npu_attention_update` with its twin on the sentinel cases when torch_npu is there; here it says it skipped.
# The in-process group is exact but leaves out what a real group adds: transport, device streams and their overlap
# with compute, separate memory per rank, failures of a process.

# %%
inf, lowest = float("inf"), -3.4028234663852886e38
sentinel_lse = [torch.tensor([0.0, inf, inf, lowest]), torch.tensor([0.5, 1.0, inf, lowest])]
sentinel_out = [torch.ones(4, 16), 2 * torch.ones(4, 16)]
twin_out, twin_lse = fia_kit.npu_attention_update(sentinel_lse, sentinel_out, 1)
print("twin, per row (finite pair, +inf beside finite, all +inf, all lowest):")
print("  out[:, 0] =", [f"{x:.4f}" for x in twin_out[:, 0].tolist()], " lse_out =",
      [f"{x:.4g}" for x in twin_lse.tolist()])
if BACKEND == "npu":
    import torch_npu

    real_out, real_lse = torch_npu.npu_attention_update([t.npu() for t in sentinel_lse],
                                                        [t.npu() for t in sentinel_out], 1)
    agreement({"torch_npu.npu_attention_update vs twin (finite rows)": (real_out.cpu()[:2], twin_out[:2])}, atol,
              rtol)
else:
    print("no NPU here: the comparison with torch_npu.npu_attention_update is skipped")
