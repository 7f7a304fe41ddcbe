# %% [markdown]
# # 8 · Quantisation: int8/int4 K/V, int8 output, full int8
#
# Three families (spec section 16), all computed by `fia_kit.quant` in the reference:
#
# 1. **K/V antiquant** (16.3): int8 or int4 K/V with a float query; `K_fp = scale · (K_int + offset)`.
# 2. **Output quantisation** (16.1): int8 output `saturate(round(O · scale + offset))`.
# 3. **Full quantisation**: v1 all-int8 Q/K/V with `dequant_scale1`, `quant_scale1`, `dequant_scale2` (16.2);
#    v2 MLA with `dequant_scale_query` (16.4).
#
# Two details are **[inferred]** and listed as open questions (spec section 23, items 4 and 5): rounding is
# half to even with saturation to [-128, 127], and packed int4 holds element 0 in the **low** nibble.
#
# `fia_kit.quant` also builds the op's inputs from float tensors (`quantize_kv`, `pack_int4`,
# `full_quant_inputs`, `encode_trans_quant_param`): the checks below dequantise by hand and compare with SDPA.

# %%
import torch
from IPython.display import display

import fia_kit
from fia_kit import TOLERANCES, diagrams, parse_call, quant
from fia_kit.diagrams import agreement
from fia_kit.environment import detect

BACKEND = detect().default_backend()  # "npu" on an Ascend box with torch_npu, else "reference"
print("this notebook runs on backend:", BACKEND)

SDPA = torch.nn.functional.scaled_dot_product_attention
atol, rtol = TOLERANCES[torch.float16]
g = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float16):
    return torch.randn(*shape, generator=g).to(dtype)


def op(form, q, k, v, **options):
    result = fia_kit.run(parse_call(form, q, k, v, options), BACKEND)
    return result.attention_out.cpu(), result.softmax_lse.cpu()


# %% [markdown]
# ## int8 K/V antiquant (decode)
#
# The separated form (`key_antiquant_scale`, `value_antiquant_scale`, their offsets and modes) picks what one
# scale covers (spec 16.3 table): mode 0 per channel or per tensor, 1 per token, 2 per head, 3 per token and
# head, 4/5 per token in the paged layout. S_q > 1 allows modes 0 and 1 only.
#
# Which elements share one scale (and one offset)? The figure numbers the scale tensor of each granularity
# 0, 1, 2, ... in the op's shape and colours every element of a small K (B = 2, N_kv = 2, S = 4, D = 8; rows are
# batch, head, token; columns channels) by the scale the op applies to it: one value for the tensor, one per
# (head, channel), one per (batch, token), one per head, one per (batch, head, token). The kit plans a call with each
# scale and reads the numbers back through its own dequantisation (`fia_kit.diagrams.scale_indices`).

# %% tags=["nbval-ignore-output"]
# Figure output is ignored by nbval (tag nbval-ignore-output): plotly's JSON is machine-variable.
diagrams.antiquant_scale_figure().show()

# %% [markdown]
# `quant.quantize_kv` returns the int8 tensor and the scale in the op's shape for a granularity:

# %%
B, N, N_kv, S_kv, D = 2, 8, 2, 40, 64
q = randn(B, N, 1, D)
k_fp, v_fp = randn(B, N_kv, S_kv, D), randn(B, N_kv, S_kv, D)
k_i8, k_scale, _ = quant.quantize_kv(k_fp, "token_head")   # mode 3: one scale per (b, kv head, token)
v_i8, v_scale, _ = quant.quantize_kv(v_fp, "token_head")
print("key", tuple(k_i8.shape), k_i8.dtype, "| key_antiquant_scale", tuple(k_scale.shape), k_scale.dtype)
out, _ = op("v1", q, k_i8, v_i8, key_antiquant_scale=k_scale, value_antiquant_scale=v_scale,
            key_antiquant_mode=3, value_antiquant_mode=3, num_heads=N, num_key_value_heads=N_kv,
            input_layout="BNSD", scale=D ** -0.5)

k_deq = (k_scale[..., None] * k_i8.float()).repeat_interleave(N // N_kv, 1)   # scale * (x + 0), by hand
v_deq = (v_scale[..., None] * v_i8.float()).repeat_interleave(N // N_kv, 1)
exact = SDPA(q.float(), k_fp.float().repeat_interleave(4, 1), v_fp.float().repeat_interleave(4, 1), scale=D ** -0.5)
display(agreement({"vs SDPA on the hand-dequantised K/V": (out, SDPA(q.float(), k_deq, v_deq, scale=D ** -0.5))},
                  atol, rtol))
agreement({"vs float attention on the unquantised K/V (int8 rounding only)": (out, exact)}, 0.02, 0)

# %% [markdown]
# ### Offsets: `scale · (x + offset)`
#
# The offset is added **before** scaling (kernel `AscendAntiQuant`; spec 22 row 4), so an asymmetric
# quantiser's offset is `-zero_point`. Per-channel (mode 0) scale and offset of shape `(1, N_kv, 1, D)`:

# %%
k_i8, k_scale, k_offset = quant.quantize_kv(k_fp, "channel", asymmetric=True)
v_i8, v_scale, v_offset = quant.quantize_kv(v_fp, "channel", asymmetric=True)
k_scale, k_offset, v_scale, v_offset = (t.half() for t in (k_scale, k_offset, v_scale, v_offset))  # mode 0: query dtype
out, _ = op("v1", q, k_i8, v_i8, key_antiquant_scale=k_scale, key_antiquant_offset=k_offset,
            value_antiquant_scale=v_scale, value_antiquant_offset=v_offset, num_heads=N,
            num_key_value_heads=N_kv, input_layout="BNSD", scale=D ** -0.5)
k_deq = (k_scale.float() * (k_i8.float() + k_offset.float())).repeat_interleave(4, 1)
v_deq = (v_scale.float() * (v_i8.float() + v_offset.float())).repeat_interleave(4, 1)
# (A per-channel key offset shifts each score row by a constant, which softmax ignores: V shows the order.)
v_wrong = (v_scale.float() * v_i8.float() + v_offset.float()).repeat_interleave(4, 1)
print("offsets", tuple(k_offset.shape), "of kv head 0, channels 0..5:", k_offset[0, 0, 0, :6].tolist())
agreement({"vs SDPA with K, V = scale·(x + offset)": (out, SDPA(q.float(), k_deq, v_deq, scale=D ** -0.5)),
           "vs SDPA with V = scale·x + offset": (out, SDPA(q.float(), k_deq, v_wrong, scale=D ** -0.5))}, atol, rtol)

# %% [markdown]
# ## int4 K/V: eight values per int32
#
# int4 K/V arrive as int32 with `D / 8` elements on the last axis (D a multiple of 64; modes 0, 1 and 3; no
# paging, no output quantisation). Which nibble holds element 0 is not documented: the kit assumes
# **little-endian, element 0 in the low nibble** **[inferred]**, open question 5 in spec section 23. If the
# real op disagrees, only `quant.pack_int4` / `quant.unpack_int4` change.

# %%
word = quant.pack_int4(torch.tensor([[1, 2, 3, 4, 5, 6, 7, -8]]))
print("pack_int4([1, 2, 3, 4, 5, 6, 7, -8]) as hex:", format(int(word) & 0xFFFFFFFF, "08X"), "(element 0 = low nibble)")
print("unpack round trip:", quant.unpack_int4(word).tolist())

# %%
k_i4, k_scale, _ = quant.quantize_kv(k_fp, "channel", bits=4)
v_i4, v_scale, _ = quant.quantize_kv(v_fp, "channel", bits=4)
k_packed, v_packed = quant.pack_int4(k_i4), quant.pack_int4(v_i4)
print("packed key:", tuple(k_packed.shape), k_packed.dtype, "| int4 values from", int(k_i4.min()), "to",
      int(k_i4.max()))
out, _ = op("v1", q, k_packed, v_packed, key_antiquant_scale=k_scale.half(), value_antiquant_scale=v_scale.half(),
            num_heads=N, num_key_value_heads=N_kv, input_layout="BNSD", scale=D ** -0.5)
k_deq = (k_scale.half().float() * k_i4.float()).repeat_interleave(4, 1)
v_deq = (v_scale.half().float() * v_i4.float()).repeat_interleave(4, 1)
agreement({"vs SDPA on the hand-unpacked, dequantised K/V": (out, SDPA(q.float(), k_deq, v_deq, scale=D ** -0.5))},
          atol, rtol)

# %% [markdown]
# ## int8 output: `quant_scale2` / `quant_offset2` (v2: `quant_scale_out` / `quant_offset_out`)
#
# The output becomes int8: `saturate(round(O · scale + offset))`, per tensor or per channel (spec 16.1). The
# kit rounds **half to even** (`torch.round`) in float32 and saturates to [-128, 127] **[inferred]**, open
# question 4: whether the per-tensor path rounds from an fp16 intermediate is not settled.

# %%
print("round half to even + saturate:", quant.saturate_round(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0]),
                                                             quant.INT8_RANGE).tolist())

# %%
q, k, v = randn(1, 4, 6, 64), randn(1, 4, 10, 64), randn(1, 4, 10, 64)
float_out, _ = op("v1", q, k, v, num_heads=4, input_layout="BNSD", scale=0.125)
for out_scale in (100.0, 2000.0):
    out_i8, _ = op("v1", q, k, v, quant_scale2=torch.tensor([out_scale]), quant_offset2=torch.tensor([3.0]),
                   num_heads=4, input_layout="BNSD", scale=0.125)
    by_hand = (float_out.float() * out_scale + 3.0).round().clamp(-128, 127)
    off_by = (out_i8.float() - by_hand).abs()
    print(f"scale {out_scale:6.0f}: dtype {out_i8.dtype}, saturated {float((out_i8.abs() >= 127).float().mean()):.0%}"
          f" | largest |out_i8 - round(O·scale + offset)| from the fp16 output: {float(off_by.max()):.0f}")

# %% [markdown]
# ## v1 full quantisation: int8 Q, K and V
#
# With an int8 query the v1 op runs all-int8 (spec 16.2), with three per-tensor scales:
#
# * `S = (Q_i8 · K_i8ᵀ) · dequant_scale1 · scale`; `P~ = exp(S − rowmax)` in [0, 1];
# * `P_i8 = round(P~ · quant_scale1)`; `O = (P_i8 · V_i8) · dequant_scale2 / Σ P~`.
#
# So `dequant_scale1 = s_q · s_k` and `dequant_scale2 = s_v / quant_scale1`. The two dequant scales are passed
# as **uint64** in the encoding of `torch_npu.npu_trans_quant_param`: the float32 bit pattern with its 13 low
# mantissa bits cleared ("FP19") in the low 32 bits, and bit 46 set. `quant.full_quant_inputs` builds it all:

# %%
encoded = quant.encode_trans_quant_param(torch.tensor([0.01]))
bits = int(encoded.view(torch.int64))
print("dtype:", encoded.dtype, "| bit 46:", bits >> 46 & 1, "| low 32 bits:", format(bits & 0xFFFFFFFF, "08X"))
print("float32 bits of 0.01:", format(int(torch.tensor([0.01]).view(torch.int32)) & 0xFFFFFFFF, "08X"),
      "-> 13 low bits cleared")
decoded = float(quant.decode_trans_quant_param(encoded))
print(f"decoded {decoded:.8f}: relative error {abs(decoded - 0.01) / 0.01:.1e}, under 2**-10 = {2 ** -10:.1e} "
      "(FP19 keeps 10 mantissa bits)")

# %%
q, k, v = randn(1, 4, 8, 64), randn(1, 4, 16, 64), randn(1, 4, 16, 64)
q_i8, k_i8, v_i8, scales = quant.full_quant_inputs(q, k, v, encode=True)
print({name: (tuple(t.shape), str(t.dtype)) for name, t in scales.items()})
out, _ = op("v1", q_i8, k_i8, v_i8, **scales, num_heads=4, input_layout="BNSD", scale=0.125)
exact = SDPA(q.float(), k.float(), v.float(), scale=0.125)
print("output dtype:", out.dtype)
agreement({"int8 Q, K, V and P vs float attention": (out, exact)}, 0.05, 0)

# %% [markdown]
# ## v2 MLA full quantisation: `dequant_scale_query`
#
# The v2 op's int8 path is decode MLA (D = 512, `N_kv = 1`): int8 query with a float32 per-token per-head
# `dequant_scale_query` (the query's shape without D) and `query_quant_mode = 3`, int8 K/V with per-tensor
# `(1,)` float32 `dequant_scale_key` / `dequant_scale_value` (the v2 names of v1's `key_antiquant_scale` /
# `value_antiquant_scale`), bfloat16 rope parts (spec 16.4). The
# K/V per-tensor dequantisation is **[inferred]**.

# %%
B, N, S_kv = 2, 8, 24
q_nope, k_nope = randn(B, N, 1, 512), randn(B, 1, S_kv, 512)
q_pe, k_pe = randn(B, N, 1, 64, dtype=torch.bfloat16), randn(B, 1, S_kv, 64, dtype=torch.bfloat16)
q_i8, q_scale, _ = quant.quantize(q_nope, (3,))        # per token and head: (B, N, 1, 1)
k_i8, k_scale, _ = quant.quantize(k_nope, (0, 1, 2, 3))  # per tensor
scale = (512 + 64) ** -0.5
out, _ = op("v2", q_i8, k_i8, k_i8, query_rope=q_pe, key_rope=k_pe, dequant_scale_query=q_scale[..., 0],
            query_quant_mode=3, dequant_scale_key=k_scale.reshape(1), dequant_scale_value=k_scale.reshape(1),
            num_query_heads=N, num_key_value_heads=1, input_layout="BNSD", softmax_scale=scale)
q_deq = torch.cat([q_scale * q_i8.float(), q_pe.float()], -1)
k_deq = torch.cat([k_scale * k_i8.float(), k_pe.float()], -1).expand(B, N, S_kv, 576)
v_deq = (k_scale * k_i8.float()).expand(B, N, S_kv, 512)
expected = SDPA(q_deq, k_deq, v_deq, scale=scale)
print("output:", tuple(out.shape), out.dtype)
agreement({"vs SDPA on the dequantised concatenation": (out, expected)}, *TOLERANCES[torch.bfloat16])

# %% [markdown]
# ## Summary
#
# * Antiquant: `scale · (x + offset)`; modes choose the scale's axes; int4 packs 8 per int32, low nibble first
#   **[inferred]** (open question 5).
# * int8 output: half-to-even rounding and saturation **[inferred]** (open question 4).
# * v1 full quant: uint64 `npu_trans_quant_param` scales (FP19 + bit 46); v2: MLA with `dequant_scale_query`.
#
# Next: [09 · graph mode and profiling](09_graph_mode_and_profiling.ipynb).
