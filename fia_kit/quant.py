"""Quantisation math of the op: K/V dequantisation, int8 full quantisation, output quantisation (spec 16, 22).

The one place that turns integers into floats and floats into int8:

- K/V antiquant (16.3): ``K_fp = scale * (K_int + offset)`` (kernel ``AscendAntiQuant``; spec 22 row 4), modes 0-5.
- v1 int8 full quant (16.2): ``S = (Q_i8 K_i8^T) * dequant_scale1 * scale``; ``P~ = exp(S - rowmax)``;
  ``P_i8 = round(P~ * quant_scale1)``; ``O = (P_i8 V_i8) * dequant_scale2 / sum(P~)`` (spec 22 row 5).
- v2 MLA full quant (16.4): ``Q_fp = Q_i8 * dequant_scale_query[b, n, s]``, K/V per-tensor antiquant [inferred].
- Output quant (16.1): ``out_i8 = saturate(round_half_even(O * scale + offset))``.

[inferred] (spec 23 q.4, q.5): rounding is half-to-even (``torch.round``) with saturation to [-128, 127], done in
the compute dtype (float32); packed int4 holds element 0 in the low nibble of each int32 (little-endian).

Validation of the quant arguments lives in ``fia_kit.quant_checks``; this module holds the data and the math, plus
public builders that make the op's quant inputs from float tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import paged

INT4_PER_INT32 = 8
INT8_RANGE = (-128, 127)
INT4_RANGE = (-8, 7)
TRANS_QUANT_FLAG = 1 << 46  # bit 46 of npu_trans_quant_param's uint64 (spec 16.2)
FP19_MASK = 0xFFFFE000

# Antiquant modes (spec 16.3): which axes one scale value covers.
KV_MODES = {0: "per-channel (per-tensor if one value)", 1: "per-token", 2: "per-head", 3: "per-token per-head",
            4: "per-token, paged", 5: "per-token per-head, paged"}
PER_TOKEN_MODES = (1, 3, 4, 5)


@dataclass(frozen=True)
class KVDequant:
    """How one of key/value goes from integers to floats: ``scale * (x + offset)`` (spec 16.3).

    Attributes:
        mode: 0-5 (KV_MODES).
        scale, offset: normalised; mode 0: (N_kv, 1, D) or (1, 1, 1); 1: (B, S'); 2: (N_kv, 1, 1);
            3: (B, N_kv, S'); 4: (num_blocks, block_size); 5: (num_blocks, N_kv, block_size). offset may be None.
        int4: the tensor is int32 holding 8 int4 values per element.
    """

    mode: int
    scale: torch.Tensor
    offset: torch.Tensor | None
    int4: bool


@dataclass(frozen=True)
class FullQuant:
    """v1 int8 full quantisation's per-tensor scales (spec 16.2), decoded to floats."""

    dequant_scale1: float
    quant_scale1: float
    dequant_scale2: float


@dataclass(frozen=True)
class OutputQuant:
    """Output quantisation to int8 (spec 16.1): scale and offset as (N_q, 1, Dv) or (1, 1, 1); offset may be None."""

    scale: torch.Tensor
    offset: torch.Tensor | None


@dataclass(frozen=True)
class QuantSpec:
    """Everything quantised about one call; Plan.quant (None when nothing is).

    Attributes:
        key, value: K/V dequantisation, or None for float K/V (and for v1 full quant, whose K/V stay integers).
        query_scale: v2 MLA full quant's dequant_scale_query in canonical (B, N_q, S_q) or (1, N_q, T), or None.
        full: v1 int8 full quantisation, or None.
        output: int8 output quantisation, or None.
    """

    key: KVDequant | None = None
    value: KVDequant | None = None
    query_scale: torch.Tensor | None = None
    full: FullQuant | None = None
    output: OutputQuant | None = None


# ---------------------------------------------------------------------------------------------------- compute

def dequantize_kv(rows: torch.Tensor, dq: KVDequant, batch: int, start: int, block_ids: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """Dequantise one batch's gathered key or value rows.

    Args:
        rows: (N_kv, L, D) int8, or (N_kv, L, D/8) int32 packed int4, already gathered (paged or dense).
        dq: the tensor's KVDequant.
        batch: the batch index b (per-token modes 1/3 read scale[b, ...]).
        start: physical position of the first row on the S_kv axis (left padding), for modes 1/3.
        block_ids: (max_blocks,) this batch's block_table row, for modes 4/5.
        dtype: the compute dtype.
    Returns:
        (N_kv, L, D) ``scale * (x + offset)`` in ``dtype``.
    """
    x = (unpack_int4(rows) if dq.int4 else rows).to(dtype)
    length, num_kv = x.shape[1], x.shape[0]

    def per_row(t: torch.Tensor) -> torch.Tensor:
        if dq.mode in (0, 2):
            return t
        if dq.mode == 1:
            return t[batch, start:start + length].view(1, length, 1)
        if dq.mode == 3:
            return t[batch, :, start:start + length].unsqueeze(-1)
        heads = 1 if dq.mode == 4 else num_kv
        return paged.gather_sequence(t.unsqueeze(-1), block_ids, length, heads)

    if dq.offset is not None:
        x = x + per_row(dq.offset).to(dtype)
    return x * per_row(dq.scale).to(dtype)


def dequantize_query(q: torch.Tensor, query_scale: torch.Tensor, index: int, start: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """v2 MLA full quant: (N_q, L, D) int8 rows times dequant_scale_query[index, :, start:start+L] (spec 16.4)."""
    return q.to(dtype) * query_scale[index, :, start:start + q.shape[1]].unsqueeze(-1).to(dtype)


def quantize_probs(probs: torch.Tensor, full: FullQuant) -> torch.Tensor:
    """P_i8 = saturate(round(P~ * quant_scale1)) as float, P~ the unnormalised probabilities in [0, 1] (spec 16.2).

    The kernel quantises block-wise with a running max; the reference uses the row's max over the keys of the
    tile, so it matches the kernel only to about a quantisation step [inferred].
    """
    return saturate_round(probs * full.quant_scale1, INT8_RANGE)


def quantize_output(out: torch.Tensor, oq: OutputQuant) -> torch.Tensor:
    """(B, N_q, S, Dv) float output -> int8: saturate(round_half_even(O * scale + offset)) (spec 16.1) [inferred].

    Padding rows (0 in float) become saturate(round(offset)); the hardware leaves them undefined (spec 5.4).
    """
    y = out * oq.scale.to(out.dtype)
    if oq.offset is not None:
        y = y + oq.offset.to(out.dtype)
    return saturate_round(y, INT8_RANGE).to(torch.int8)


def saturate_round(x: torch.Tensor, bounds: tuple[int, int]) -> torch.Tensor:
    """Round half to even, then clamp to ``bounds``; same dtype as x ([inferred], spec 23 q.4)."""
    return torch.round(x).clamp_(*bounds)


# ---------------------------------------------------------------------------------------------------- int4

def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(..., D/8) int32 -> (..., D) int8 in [-8, 7]; element 0 is the low nibble ([inferred], spec 23 q.5)."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nibbles = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF
    signed = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return signed.reshape(*packed.shape[:-1], packed.shape[-1] * INT4_PER_INT32).to(torch.int8)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """(..., D) integers in [-8, 7], D % 8 == 0 -> (..., D/8) int32, low nibble first ([inferred], spec 23 q.5)."""
    if values.shape[-1] % INT4_PER_INT32:
        raise ValueError(f"the last dim ({values.shape[-1]}) must be a multiple of 8 to pack int4")
    if values.numel() and (int(values.min()) < INT4_RANGE[0] or int(values.max()) > INT4_RANGE[1]):
        raise ValueError("int4 values must lie in [-8, 7]")
    nibbles = (values.to(torch.int64) & 0xF).reshape(*values.shape[:-1], -1, INT4_PER_INT32)
    shifts = torch.arange(0, 32, 4, device=values.device, dtype=torch.int64)
    word = (nibbles << shifts).sum(-1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


# ---------------------------------------------------------------------------------------------------- uint64 scales

def encode_trans_quant_param(scale: torch.Tensor) -> torch.Tensor:
    """float32 scale(s) -> torch.uint64 as torch_npu.npu_trans_quant_param makes them (spec 16.2).

    Low 32 bits: the fp32 bit pattern with its 13 low mantissa bits cleared (``& 0xFFFFE000``, "FP19"); bit 46 set;
    no offset (bits 37-45 zero). Shape kept.
    """
    bits = scale.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((bits & FP19_MASK) | TRANS_QUANT_FLAG).to(torch.uint64)


def decode_trans_quant_param(encoded: torch.Tensor) -> torch.Tensor:
    """uint64 (or int64 holding the same bits) -> float32: ``float32(bits & 0xFFFFFFFF)`` (spec 16.2). Shape kept."""
    low = encoded.view(torch.int64) & 0xFFFFFFFF
    return torch.where(low >= 2**31, low - 2**32, low).to(torch.int32).view(torch.float32)


# ---------------------------------------------------------------------------------------------------- builders

GRANULARITIES = ("tensor", "channel", "token", "head", "token_head")


def quantize_kv(kv: torch.Tensor, granularity: str, *, bits: int = 8,
                asymmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantise canonical K or V so that ``scale * (ints + offset)`` reconstructs it within half a step.

    Args:
        kv: (B, N_kv, S, D) float (canonical BNSD).
        granularity: "tensor" (mode 0, scale (1,)), "channel" (mode 0, (1, N_kv, 1, D)), "token" (mode 1,
            (1, B, S)), "head" (mode 2, (N_kv,)), "token_head" (mode 3, (B, N_kv, S)); the op's shapes (spec 16.3).
        bits: 8 (int8) or 4 (int4 values in int8; pack them with ``pack_int4``).
        asymmetric: also return an integer-valued offset (the op's offset = -zero_point).
    Returns:
        (ints (B, N_kv, S, D) int8, scale, offset or None), scale/offset float32 in the op's shape.
    """
    reduce = {"tensor": (0, 1, 2, 3), "channel": (0, 2), "token": (1, 3), "head": (0, 2, 3),
              "token_head": (3,)}[granularity]
    shape = {"tensor": (1,), "channel": (1, kv.shape[1], 1, kv.shape[3]), "token": (1, kv.shape[0], kv.shape[2]),
             "head": (kv.shape[1],), "token_head": tuple(kv.shape[:3])}[granularity]
    ints, scale, offset = quantize(kv, reduce, bits=bits, asymmetric=asymmetric)
    return ints, scale.reshape(shape), None if offset is None else offset.reshape(shape)


def quantize(x: torch.Tensor, reduce_dims: tuple[int, ...], *, bits: int = 8,
             asymmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Generic min/max quantisation of ``x`` over ``reduce_dims`` (kept as size-1 dims in scale/offset).

    Returns (ints int8, scale float32, offset float32 or None) with ``x ~= scale * (ints + offset)``.
    """
    lo_q, hi_q = INT8_RANGE if bits == 8 else INT4_RANGE
    x32 = x.to(torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    if asymmetric:
        lo, hi = x32.amin(reduce_dims, keepdim=True), x32.amax(reduce_dims, keepdim=True)
        scale = ((hi - lo) / (hi_q - lo_q)).clamp(min=tiny)
        offset = torch.round(lo / scale) - lo_q
        ints = saturate_round(x32 / scale - offset, (lo_q, hi_q))
        return ints.to(torch.int8), scale, offset
    scale = (x32.abs().amax(reduce_dims, keepdim=True) / hi_q).clamp(min=tiny)
    return saturate_round(x32 / scale, (lo_q, hi_q)).to(torch.int8), scale, None


def full_quant_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, p_scale: float = 127.0,
                      encode: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """int8 Q/K/V and v1 full-quant keywords from float Q/K/V (any one layout; spec 16.2).

    Per-tensor symmetric scales s_q, s_k, s_v give dequant_scale1 = s_q * s_k, quant_scale1 = p_scale (P~ in [0, 1]
    maps onto [0, p_scale]) and dequant_scale2 = s_v / p_scale; ``encode`` writes the two dequant scales in
    npu_trans_quant_param's uint64 form.
    Returns:
        (query_i8, key_i8, value_i8, {"dequant_scale1", "quant_scale1", "dequant_scale2"} each of shape (1,)).
    """
    everything = tuple(range(query.dim()))
    (qi, sq, _), (ki, sk, _), (vi, sv, _) = (quantize(t, everything) for t in (query, key, value))
    dequant1, dequant2 = (sq * sk).reshape(1), (sv / p_scale).reshape(1)
    if encode:
        dequant1, dequant2 = encode_trans_quant_param(dequant1), encode_trans_quant_param(dequant2)
    return qi, ki, vi, {"dequant_scale1": dequant1, "quant_scale1": torch.tensor([p_scale]),
                        "dequant_scale2": dequant2}


def paged_token_scales(per_token: torch.Tensor, block_table: torch.Tensor, block_size: int,
                       num_blocks: int) -> torch.Tensor:
    """Per-token scales laid out like a paged cache, for modes 4 and 5 (spec 16.3).

    Args:
        per_token: (B, S) (mode 1 / "token" without its leading 1) or (B, N_kv, S) (mode 3).
        block_table: (B, max_blocks) int; token t of batch b lives in block block_table[b, t // block_size].
    Returns:
        (num_blocks, block_size) or (num_blocks, N_kv, block_size) float32; unused slots hold 0.
    """
    per_head = per_token.dim() == 3
    per_token = per_token if per_head else per_token.unsqueeze(1)
    b, n, s = per_token.shape
    out = torch.zeros(num_blocks, n, block_size, dtype=torch.float32, device=per_token.device)
    for i in range(b):
        for t0 in range(0, s, block_size):
            chunk = per_token[i, :, t0:t0 + block_size]
            out[int(block_table[i, t0 // block_size]), :, :chunk.shape[-1]] = chunk
    return out if per_head else out[:, 0]
