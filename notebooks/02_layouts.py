# %% [markdown]
# # 2 · Layouts: BSH, BSND, BNSD, TND, NTD and the two-part names
#
# `input_layout` says which axis of query, key and value is batch (B), sequence (S), head (N) and head dim (D);
# packed layouts put every batch's tokens on one axis T. A two-part name `X_Y` means the inputs lie as `X` and
# the output is written as `Y`: the op transposes internally.
#
# Spec ([docs/](../docs/README.md)): section 4.1 *Meaning of two-part names*, section 4.2 *Layout table*,
# section 4.3 *Output-shape inference*, section 5.2 *Packed layouts*.

# %%
import torch

import fia_kit
from fia_kit import TOLERANCES, builders, diagrams, figures, layouts, parse_call
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

# %% [markdown]
# ## The table
#
# `fia_kit.layouts.INPUT_LAYOUTS` lists every `input_layout` of spec section 4.2 with its input part and its
# output part. (`NSD` is undocumented: it appears only in the op-plugin/TorchAir layout parsers.)

# %%
for name, (part_in, part_out) in layouts.INPUT_LAYOUTS.items():
    axes_in = ", ".join(part_in)
    print(f"{name:10s} inputs ({axes_in:10s}) -> output {part_out}")

# %% [markdown]
# ## One query, five layouts
#
# The kit works internally on one canonical form, `(B, N, S, D)`. `to_canonical` / `from_canonical` /
# `convert_layout` are the only code that knows how each layout lies in memory. In BSH the head axis is folded
# into `H = N·D`: head `n` occupies columns `[n·D, (n+1)·D)`, so the op needs `num_heads` to split it.

# %%
B, N, S, D = 2, 4, 6, 64
g = torch.Generator().manual_seed(0)
q_bnsd = torch.randn(B, N, S, D, generator=g, dtype=torch.float16)
for part in ("BNSD", "BSND", "BSH"):
    print(f"{part:5s}", tuple(layouts.convert_layout(q_bnsd, "BNSD", part, num_heads=N).shape))
bsh = layouts.convert_layout(q_bnsd, "BNSD", "BSH", num_heads=N)
agreement({f"BSH columns [{D}, {2 * D}) vs BNSD head 1": (bsh[:, :, D:2 * D], q_bnsd[:, 1]),
           f"BSH columns [0, {D}) vs BNSD head 1": (bsh[:, :, :D], q_bnsd[:, 1])}, 0, 0)  # 0, 0: equal or not

# %% [markdown]
# The figure shows the memory order of each layout: one cell per D-vector, coloured by head. BNSD keeps each
# head's rows together; BSH/BSND interleave heads token by token.

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
for name in ("BNSD", "BSND", "BSH"):
    figures.layout_figure(name, batch=2, seq=3, heads=2).show()

# %% [markdown]
# ## The op gives the same attention in every layout
#
# Run one problem (here with grouped K/V heads: 4 query heads, 2 K/V heads) in BNSD, BSND and BSH, convert the
# outputs back to BNSD and compare them with the BNSD result, in units of the fp16 tolerance.

# %%
N_KV, S_KV = 2, 10
k_bnsd = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)
v_bnsd = torch.randn(B, N_KV, S_KV, D, generator=g, dtype=torch.float16)
atol, rtol = TOLERANCES[torch.float16]

def attention(part):
    q, k, v = (layouts.convert_layout(t, "BNSD", part, num_heads=n)
               for t, n in ((q_bnsd, N), (k_bnsd, N_KV), (v_bnsd, N_KV)))
    call = parse_call("v1", q, k, v, dict(num_heads=N, num_key_value_heads=N_KV, input_layout=part,
                                          scale=D ** -0.5))
    return fia_kit.run(call, BACKEND).attention_out.cpu()

outputs = {part: attention(part) for part in ("BNSD", "BSND", "BSH")}
for part, out in outputs.items():
    print(f"{part:5s} output {tuple(out.shape)}")
agreement({f"{part} output, back in BNSD, vs the BNSD output": (layouts.convert_layout(out, part, "BNSD", N),
                                                               outputs["BNSD"]) for part, out in outputs.items()},
          atol, rtol)

# %% [markdown]
# ## Packed layouts: TND and NTD
#
# Packed layouts carry no batch axis. Batch `b`'s tokens are rows `[cum[b-1], cum[b])` of T, and
# `actual_seq_lengths` is then **required and cumulative** (spec section 5.2; notebook 04 covers lengths).
# Here batch 0 uses 4 query tokens and 6 keys, batch 1 uses 6 query tokens and 10 keys.
# `fia_kit.builders.pack_sequences` packs per-batch `(N, L_b, D)` rows into TND or NTD (TND with N first)
# and returns the cumulative lengths.

# %%
q_lens, kv_lens = [4, 6], [6, 10]

def pack(x, lens, part):
    """The first lens[b] rows of each batch of a canonical (B, N, S, D) tensor, packed as ``part``."""
    return builders.pack_sequences([x[b, :, :n] for b, n in enumerate(lens)], part)[0]

packed = {part: [pack(t, lens, part) for t, lens in ((q_bnsd, q_lens), (k_bnsd, kv_lens), (v_bnsd, kv_lens))]
          for part in ("TND", "NTD")}
cum_q, cum_kv = builders.cumulative(q_lens), builders.cumulative(kv_lens)
print("TND query", tuple(packed["TND"][0].shape), " NTD query", tuple(packed["NTD"][0].shape))
print("cumulative lengths: query", cum_q, " key/value", cum_kv)

padded = fia_kit.run(parse_call("v1", q_bnsd, k_bnsd, v_bnsd, dict(
    num_heads=N, num_key_value_heads=N_KV, input_layout="BNSD", scale=D ** -0.5,
    actual_seq_lengths=q_lens, actual_seq_lengths_kv=kv_lens)), BACKEND).attention_out.cpu()
packed_calls, packed_outputs = {}, {}
for part, (q, k, v) in packed.items():
    packed_calls[part] = parse_call("v1", q, k, v, dict(
        num_heads=N, num_key_value_heads=N_KV, input_layout=part, scale=D ** -0.5,
        actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv))
    packed_outputs[part] = fia_kit.run(packed_calls[part], BACKEND).attention_out.cpu()
    print(f"{part}: output {tuple(packed_outputs[part].shape)}")
agreement({f"{part} output vs the padded BNSD output packed as {part}": (out, pack(padded, q_lens, part))
           for part, out in packed_outputs.items()}, atol, rtol)

# %% [markdown]
# Where each batch lies on the packed token axes: the cumulative lengths cut T into the batches' rows (notebook
# 04 adds unequal lengths and a tail of T that no batch uses). `fia_kit.diagrams.packing_figure` draws it from the
# plan, and `layout_figure` shows the memory order of the (t, n) vectors inside T:

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
diagrams.packing_figure(fia_kit.plan(packed_calls["TND"])).show()
figures.layout_figure("TND", batch=2, seq=3, heads=2).show()

# %% [markdown]
# ## Two-part layouts: the output is written in another layout
#
# `BNSD_BSND` reads BNSD inputs and writes a BSND output; `BSH_NBSD` writes `(N, B, S, D)`; `TND_NTD` writes
# NTD. Key/value follow the **input** part. The LSE shape follows the query layout too: `(B, N, S, 1)`, or
# `(T, N, 1)` for the packed family, whatever the output part is (spec section 4.3).
#
# `explain` resolves the shapes without computing. Several two-part layouts are restricted on the NPU (spec
# section 4.2's notes: e.g. `BNSD_NBSD` only for 1 < S_q ≤ 16, the `_NBSD` family mainly for MLA with D = 512),
# so this table is computed by the reference's shape rules on every machine.

# %%
shapes = {"BNSD": q_bnsd, "BSND": layouts.convert_layout(q_bnsd, "BNSD", "BSND", N),
          "BSH": layouts.convert_layout(q_bnsd, "BNSD", "BSH", N)}
kv_shapes = {"BNSD": k_bnsd, "BSND": layouts.convert_layout(k_bnsd, "BNSD", "BSND", N_KV),
             "BSH": layouts.convert_layout(k_bnsd, "BNSD", "BSH", N_KV)}
print(f"{'input_layout':12s} {'query':16s} {'attention_out':16s} softmax_lse")
for name, (part_in, part_out) in layouts.INPUT_LAYOUTS.items():
    if part_in == part_out or part_in not in shapes:
        continue
    problem = fia_kit.reference.explain("v1", shapes[part_in], kv_shapes[part_in], kv_shapes[part_in],
                                        num_heads=N, num_key_value_heads=N_KV, input_layout=name,
                                        softmax_lse_flag=True)
    print(f"{name:12s} {str(tuple(shapes[part_in].shape)):16s} {str(problem.out_shape):16s} {problem.lse_shape}")
q, k, v = packed["TND"]
for name in ("TND", "TND_NTD"):
    problem = fia_kit.reference.explain("v1", q, k, v, num_heads=N, num_key_value_heads=N_KV, input_layout=name,
                                        actual_seq_lengths=cum_q, actual_seq_lengths_kv=cum_kv,
                                        softmax_lse_flag=True)
    print(f"{name:12s} {str(tuple(q.shape)):16s} {str(problem.out_shape):16s} {problem.lse_shape}")

# %% [markdown]
# A two-part layout is exactly the one-part computation followed by a transpose of the output. `BNSD_BSND` is
# the common one (documented for S_q > 1 on A2/A3):

# %%
out = fia_kit.run(parse_call("v1", q_bnsd, k_bnsd, v_bnsd, dict(num_heads=N, num_key_value_heads=N_KV,
                                                         input_layout="BNSD_BSND", scale=D ** -0.5)),
          BACKEND).attention_out.cpu()
print("BNSD_BSND output", tuple(out.shape))
agreement({"BNSD_BSND output vs the BNSD output converted to BSND":
           (out, layouts.convert_layout(outputs["BNSD"], "BNSD", "BSND", N))}, atol, rtol)

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
figures.layout_figure("BNSD_BSND", batch=2, seq=3, heads=2).show()

# %% [markdown]
# ## Wrong ranks and head counts are errors
#
# The query rank must match the layout (spec section 4.2), and in layouts with an explicit head axis
# `num_heads` must equal that axis (spec section 10):

# %%
for options in (dict(input_layout="BSH", num_heads=N),            # a 4-D query in a 3-D layout
                dict(input_layout="BNSD", num_heads=8)):          # the query has 4 heads
    try:
        fia_kit.reference.explain("v1", q_bnsd, k_bnsd, v_bnsd, num_key_value_heads=N_KV, **options)
    except fia_kit.FIAArgumentError as error:
        print(type(error).__name__, "->", error)

# %% [markdown]
# ## Summary
#
# * One-part layouts differ only in memory order; the attention is the same.
# * BSH needs `num_heads` to split `H`; BSND/BNSD need it to equal the head axis.
# * TND/NTD pack batches along T and need cumulative lengths.
# * `X_Y` reads `X`, writes `Y`; the LSE follows the query layout.
#
# Next: [03 · masks and sparse modes](03_masks_and_sparse_modes.ipynb).
