# %% [markdown]
# # 11 · Your own calls
#
# The other notebooks build calls of the op from scratch. Here the calls come from a model: a small decoder,
# written against the op the way serving code is, runs inside `fia_kit.capture`. The capture records every call
# (however the model reached the op), counts repeats, and writes a file that loads without executing code
# (safetensors + JSON). Then each distinct call is linted, replayed on the reference and compared, and one is
# opened in the explorer.
#
# On an Ascend box the same cells wrap torch_npu's op: the decoder calls `torch_npu.npu_fused_infer_attention_score`
# on the NPU and the replays compare it with the reference. Elsewhere the decoder calls the kit's reference.
#
# Docs: [capture.md](../docs/capture.md) (what is recorded, what is not, the file format); the pitfalls lint
# warns about are spec section 25.5 *Pitfalls users report* of the [docs](../docs/README.md).

# %%
import tempfile
from pathlib import Path

import torch
from IPython.display import display

import fia_kit
from fia_kit import Case, masks
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)
if BACKEND == "npu":
    import torch_npu

    DEVICE, ATTENTION = "npu", torch_npu.npu_fused_infer_attention_score
else:
    DEVICE, ATTENTION = "cpu", fia_kit.npu_fused_infer_attention_score

# %% [markdown]
# ## A small decoder with a paged TND cache
#
# Two layers, 2 query heads sharing 1 KV head of D = 64, fp16. Like vllm-ascend's attention backend it packs the
# batch's tokens into one TND query (prefill: every prompt token; decode: one token per sequence), keeps K/V in
# a pool of 128-token blocks (a rank-3 cache, `(num_blocks, block_size, N_kv·D)`) addressed through a block
# table, and asks for causal attention with `sparse_mode=3` and the compressed 2048×2048 mask. TND takes the
# query lengths as cumulative ends, the paged K/V lengths per sequence (spec section 5.2).
#
# It also passes `pre_tokens=65535, next_tokens=0`, copied from an example with a band: mode 3 ignores them.
# That is legal and harmless here, but it is not what whoever wrote it thought; lint will say so.

# %%
HIDDEN, HEADS, KV_HEADS, D, BLOCK, VOCAB = 128, 2, 1, 64, 128, 50
DTYPE = torch.float16
MASK = masks.compressed_causal_mask(device=DEVICE)


class Attention(torch.nn.Module):
    """One attention layer over a paged K/V cache (num_blocks, BLOCK, KV_HEADS * D)."""

    def __init__(self, num_blocks: int, gen: torch.Generator) -> None:
        super().__init__()
        def weight(rows, cols):
            return torch.nn.Parameter(torch.randn(rows, cols, generator=gen, dtype=torch.float32).to(DTYPE)
                                      * cols ** -0.5, requires_grad=False)
        self.wq, self.wk, self.wv = weight(HEADS * D, HIDDEN), weight(KV_HEADS * D, HIDDEN), weight(KV_HEADS * D,
                                                                                                      HIDDEN)
        self.wo = weight(HIDDEN, HEADS * D)
        self.register_buffer("k_cache", torch.zeros(num_blocks, BLOCK, KV_HEADS * D, dtype=DTYPE))
        self.register_buffer("v_cache", torch.zeros(num_blocks, BLOCK, KV_HEADS * D, dtype=DTYPE))

    def forward(self, x, slots, q_ends, kv_lens, block_table):
        """x (T, HIDDEN): the packed tokens; slots (T,): where each token's K/V go in the cache."""
        t = x.shape[0]
        q = (x @ self.wq.T).view(t, HEADS, D)
        self.k_cache.view(-1, KV_HEADS * D)[slots] = x @ self.wk.T
        self.v_cache.view(-1, KV_HEADS * D)[slots] = x @ self.wv.T
        out, _ = ATTENTION(q, self.k_cache, self.v_cache, num_heads=HEADS, num_key_value_heads=KV_HEADS,
                           input_layout="TND", scale=D ** -0.5, sparse_mode=3, atten_mask=MASK,
                           pre_tokens=65535, next_tokens=0,
                           actual_seq_lengths=q_ends, actual_seq_lengths_kv=kv_lens,
                           block_table=block_table, block_size=BLOCK)
        return x + out.reshape(t, HEADS * D) @ self.wo.T


class Decoder(torch.nn.Module):
    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=gen).to(DTYPE), requires_grad=False)
        self.layers = torch.nn.ModuleList([Attention(num_blocks, gen) for _ in range(2)])

    def forward(self, tokens, positions, q_ends, kv_lens, block_table):
        seq, pos = positions  # each packed token's sequence and position in it
        slots = block_table[seq, pos // BLOCK].long() * BLOCK + pos % BLOCK
        x = self.embed[tokens]
        for layer in self.layers:
            x = layer(x, slots, q_ends, kv_lens, block_table)
        return (x @ self.embed.T).argmax(-1)  # greedy next token of every packed row


# %% [markdown]
# `generate` runs one prefill over the three prompts, then decode steps. Every call of the op goes through
# `ATTENTION` as written above: nothing in the model knows about the capture.

# %%
def generate(model, prompts, steps):
    lengths = [len(p) for p in prompts]
    block_table = torch.arange(len(prompts), dtype=torch.int32, device=DEVICE)[:, None]  # one block each
    seq = torch.tensor([b for b, n in enumerate(lengths) for _ in range(n)], device=DEVICE)
    pos = torch.tensor([i for n in lengths for i in range(n)], device=DEVICE)
    tokens = torch.tensor([t for p in prompts for t in p], device=DEVICE)
    q_ends = torch.tensor(lengths).cumsum(0).tolist()
    with torch.no_grad():
        nxt = model(tokens, (seq, pos), q_ends, lengths, block_table)[torch.tensor(q_ends) - 1]
        out = [nxt.tolist()]
        for _ in range(steps):
            pos = torch.tensor(lengths, device=DEVICE)          # the new token's position
            lengths = [n + 1 for n in lengths]
            seq = torch.arange(len(prompts), device=DEVICE)
            nxt = model(nxt, (seq, pos), list(range(1, len(prompts) + 1)), lengths, block_table)
            out.append(nxt.tolist())
    return out


model = Decoder(num_blocks=4).to(DEVICE)
prompts = [[3, 14, 15, 9, 2], [6, 5, 3, 5, 8, 9, 7, 9, 3], [2, 7, 1]]
folder = Path(tempfile.mkdtemp())
with fia_kit.capture(folder / "decoder.fiacap") as recorder:
    generated = generate(model, prompts, steps=3)
print("calls of the op:", recorder.total, "distinct:", recorder.distinct, "tensors left out:", recorder.left_out)

# %% [markdown]
# ## The distinct calls
#
# Calls with the same *signature* (route, shapes, dtypes, strides, scalars, length values, and the contents of
# masks and block tables, but not the values of the data tensors) are one distinct call with a count. Both layers
# of a step make the same call on different caches, so each step is one distinct call made twice; each decode
# step has new K/V lengths, so a new call. With `tensors="auto"` (the default) tensors up to 1 MiB are kept and
# larger ones recorded by shape and stats; this model's tensors are all small, so every replay is exact.

# %%
calls = fia_kit.load_capture(folder / "decoder.fiacap")
for call in calls:
    q = call.arguments["query"]["shape"]
    print(f"call {call.index}: x{call.count}  query {tuple(q)}  kv lengths {call.value('actual_seq_lengths_kv')}"
          f"  tensors {'stored' if call.exact else 'regenerated from their stats (not exact)'}")

# %% tags=["nbval-ignore-output"]
# The full table (its route column says torch_npu on an Ascend box, the reference elsewhere): output ignored.
calls

# %% [markdown]
# ## Lint
#
# `fia_kit.lint(call)` lists every rule the op would refuse (errors, all of them) and the legal calls that most
# likely mean something else (warnings, the pitfalls of section 25.5). Here: the ignored `pre_tokens` and
# `next_tokens`. `fia-kit lint decoder.fiacap` prints the same as a table from the command line.

# %%
for call in calls:
    print(f"call {call.index}:", [f"{f.severity} {f.parameter} [{f.rule}]" for f in fia_kit.lint(call)])
print()
print(fia_kit.lint(calls[0])[0].message)

# %% [markdown]
# A fixed call gives no finding at all. And a broken variant shows every refusal, not only the first one: here a
# per-sequence query length list (TND wants cumulative ends) and a block size the cache does not have.

# %%
query, key, value, keywords = calls[0].args()
fixed = {n: x for n, x in keywords.items() if n not in ("pre_tokens", "next_tokens")}
print("fixed:", fia_kit.lint("v1", query, key, value, **fixed))
broken = {**fixed, "actual_seq_lengths": [5, 9, 3], "block_size": 64}
for finding in fia_kit.lint("v1", query, key, value, **broken):
    print(f"{finding.severity} {finding.parameter} [{finding.rule}]")

# %% [markdown]
# ## When the NPU refuses a call: explain its log
#
# On an Ascend box a refused call does not come back as a readable rule. torch_npu raises a RuntimeError with a
# bare aclnn status ("error code is 561002": the host tiling refused the call), and the checker's own message
# follows in the error manager's report, or only in the CANN log (plog). `fia_kit.explain(text)` reads whatever
# you paste (a traceback, plog lines, one line) against the kit's book of the kernel's host checks and says which
# rule broke, where it lives in the kernel's source, what it means and how to fix it. `fia-kit explain npu.log`
# (or `... | fia-kit explain -`) prints the same as a table from the command line; `--capture decoder.fiacap`
# checks it against the captured call that raised.
#
# Suppose a later version of the decoder drops `sparse_mode=3` from its decode steps but keeps passing the mask.
# This is the log a worker prints for that call (each line as torch_npu, CANN's error manager and the kernel's
# check `CheckFAIMask` write it): the packed decode step takes the TND split-fuse route, whose check refuses a
# mask with sparse_mode 0.

# %%
LOG = """\
(Worker_TP0 pid=2312) ERROR 09-02 10:00:00 [model_runner.py:1421] RuntimeError: npu_fused_infer_attention_score:\
build/CMakeFiles/torch_npu.dir/compiler_depend.ts:275 NPU function error: call aclnnFusedInferAttentionScoreV3 \
failed, error code is 561002
(Worker_TP0 pid=2312) ERROR 09-02 10:00:00 [model_runner.py:1421] [ERROR] 2026-09-02-10:00:00 (PID:2312, Device:0, \
RankID:-1) ERR00100 PTA call acl api failed.
(Worker_TP0 pid=2312) ERROR 09-02 10:00:00 [model_runner.py:1421] E89999: Inner Error!
(Worker_TP0 pid=2312) ERROR 09-02 10:00:00 [model_runner.py:1421] E89999[PID: 2312] 2026-09-02-10:00:00.123.456 \
(E89999):  When attnMask is provided, sparseMode must be 3 or 4[FUNC:CheckFAIMask]\
[FILE:fused_infer_attention_score_tiling.cpp][LINE:1351]
(Worker_TP0 pid=2312) ERROR 09-02 10:00:00 [model_runner.py:1421]         TraceBack (most recent call last):
"""
for finding in fia_kit.explain(LOG):
    print(finding)

# %% [markdown]
# Given the call that failed (a captured call, a plan, or a dict of the op's arguments), `explain` validates it
# and says whether the kit refuses it by the same rule: confirmed. With the call, even the bare status line
# names the rule.

# %%
query, key, value, keywords = calls[1].args()  # the first decode step
broken_step = {"query": query, "key": key, "value": value, **keywords, "sparse_mode": 0}
confirmed = fia_kit.explain(LOG, call=broken_step)[0]
print("confirmed:", confirmed.confirmed, "-", confirmed.confirmation.split(": ")[0])
bare = fia_kit.explain("call aclnnFusedInferAttentionScoreV3 failed, error code is 561002", call=broken_step)[0]
print(f"a bare 561002 with the call: [{bare.rule_id}] {bare.parameter}: {bare.rule}")
print("the fixed call:", fia_kit.explain(LOG, call=calls[1])[0].confirmation.split(":")[0])

# %% [markdown]
# ## Replay and compare
#
# A captured call works wherever the kit takes a call. `fia_kit.run(call)` replays it (here on the reference: the
# decoder's own first attention output comes back bit for bit), and `fia_kit.compare(call)` runs it on the peers
# of this machine, the NPU's eager and graph modes on an Ascend box, the compiled look-alike elsewhere, against
# the reference, on the rows the op defines.

# %%
replay = fia_kit.run(calls[0], "reference")
query, key, value, keywords = calls[0].args()
again = fia_kit.npu_fused_infer_attention_score(query, key, value, **keywords)[0]
display(agreement({"replayed call 0 vs the call made again on the reference": (replay.attention_out, again)}, 0, 0))
for call in calls:
    for row in fia_kit.compare(call).rows:
        print(f"call {call.index}: {row.backend} {'within' if row.within_tolerance else 'OUTSIDE'} the "
              "tolerance of the reference")

# %% tags=["nbval-ignore-output"]
# Measured errors and timings vary by machine: output ignored.
fia_kit.compare(calls[1])

# %% [markdown]
# `Case.from_call(call)` turns a call into a `Case` (lengths, heads, layout, paging, mask, ...), keeping the call's
# own tensors until a field changes; `fia_kit.repro.to_script(call, path)` writes a standalone reproducer.

# %%
case = Case.from_call(calls[1])
print(case.layout, "paged:", case.paged, "q_lens:", case.q_lens, "kv_lens:", case.kv_lens, "mask:", case.mask)
agreement({"the case's query vs the captured call's own": (case.build().query, calls[1].value("query"))}, 0, 0)

# %% [markdown]
# ## One call in the explorer
#
# `fia_kit.explore(call)` opens the explorer on the first decode step with its own tensors: the visibility map
# shows each packed query row seeing every key of its sequence (the causal diagonal sits at the last key), the
# paged-KV tab the block table. Change a control and the explorer builds seeded tensors for the new case.

# %% tags=["nbval-ignore-output"]
# Widget output is ignored by nbval (tag nbval-ignore-output).
fia_kit.explore(calls[1])
