"""Validation of the quantisation arguments (spec 16, 17, 18.3): from a call to a ``QuantSpec``, or an error.

Called by ``fia_kit.planning.build_plan``; every rule raises FIAArgumentError naming the parameters involved
(v2 spellings in v2 calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .call import FIACall
from .errors import FIAArgumentError
from .layouts import Layout, to_canonical
from .masks import Band
from .quant import (
    INT4_PER_INT32,
    PER_TOKEN_MODES,
    FullQuant,
    KVDequant,
    OutputQuant,
    QuantSpec,
    decode_trans_quant_param,
)
from .signatures import spelled

FLOAT_QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
QUANT_LAYOUTS = ("BSH", "BNSD", "BSND", "BNSD_BSND")  # full quant and output quant (spec 16.1, 16.2)
ANTIQUANT_NAMES = ("antiquant_scale", "antiquant_offset", "key_antiquant_scale", "key_antiquant_offset",
                   "value_antiquant_scale", "value_antiquant_offset")
FULL_NAMES = ("dequant_scale1", "quant_scale1", "dequant_scale2")


@dataclass(frozen=True)
class QuantContext:
    """What the quant rules need to know about the rest of the call (resolved by build_plan)."""

    layout: Layout
    batch: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    value_dim: int
    kv_axis: int  # S_kv, or block_table.shape[1] * block_size when paged
    decode: bool
    paged: bool
    num_blocks: int
    block_size: int
    rope: bool
    left_padding: bool
    return_lse: bool
    cache_rank: int = 0  # rank of the paged cache (3, 4, 5 = NZ); 0 when not paged


def check_input_dtypes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """Query float (or int8 for full quant); K/V the query's float dtype, or int8 / int32-packed int4 (spec 17)."""
    if query.dtype not in (*FLOAT_QUERY_DTYPES, torch.int8):
        raise FIAArgumentError("query", "dtype must be float16 or bfloat16 (float32/float64 as the kit's "
                               "extension), or int8 for full quantisation (spec 16.2, 16.4, 17)", query)
    for name, t in (("key", key), ("value", value)):
        if query.dtype == torch.int8 and t.dtype != torch.int8:
            raise FIAArgumentError(name, "with an int8 query, key and value must be int8 (spec 17)", t)
        if t.dtype not in (query.dtype, torch.int8, torch.int32):
            raise FIAArgumentError(name, f"must have the query's dtype {query.dtype}, or be int8 / int32 (packed "
                                   "int4) for antiquant (spec 16.3, 17)", t)
    if key.dtype != value.dtype:
        raise FIAArgumentError("key + value", "must have the same dtype (spec 17)", (key.dtype, value.dtype))


def int4_factor(t: torch.Tensor) -> int:
    """8 for an int32 (packed int4) key/value, whose last axis holds D/8 words; else 1 (spec 4.3)."""
    return INT4_PER_INT32 if t.dtype == torch.int32 else 1


def check_quant(call: FIACall, ctx: QuantContext) -> QuantSpec | None:
    """Validate every quantisation argument of ``call``; return the QuantSpec, or None when nothing is quantised."""
    o, q, k = call.options, call.query, call.key
    int_kv = k.dtype in (torch.int8, torch.int32)
    anything = int_kv or q.dtype == torch.int8 or any(o.get(n) is not None for n in (
        *ANTIQUANT_NAMES, *FULL_NAMES, "quant_scale2", "quant_offset2", "dequant_scale_query")) or any(
        o.get(n, 0) != 0 for n in ("antiquant_mode", "key_antiquant_mode", "value_antiquant_mode",
                                   "query_quant_mode"))
    if not anything:
        return None
    if ctx.layout.packed and q.dtype != torch.int8:  # v2 MLA full quant does take TND (spec 16.4, 19)
        raise FIAArgumentError("input_layout", "antiquant and output quantisation are not available for the TND "
                               "family (spec 18.3)", ctx.layout.name)
    if o.get("learnable_sink") is not None:
        raise FIAArgumentError("learnable_sink", "cannot be combined with any quantisation (spec 13)", "given")
    full, query_scale, key_dq, value_dq = None, None, None, None
    if q.dtype == torch.int8:
        if call.form == "v1":
            full = _check_full(call, ctx)
        else:
            query_scale, key_dq, value_dq = _check_mla_full(call, ctx)
    else:
        for name in (*FULL_NAMES, "dequant_scale_query"):
            if o.get(name) is not None:
                raise FIAArgumentError(_name(call, name), "only applies to an int8 query (full quantisation, "
                                       "spec 16.2, 16.4)", o[name])
        if o.get("query_quant_mode", 0) != 0:
            raise FIAArgumentError("query_quant_mode", "only applies to an int8 query (spec 16.4)",
                                   o["query_quant_mode"])
        key_dq, value_dq = _check_antiquant(call, ctx) if int_kv else (None, None)
        if not int_kv:
            _reject_given(call, ANTIQUANT_NAMES, "needs an int8 or int4 key/value (antiquant, spec 16.3)")
            for name in ("antiquant_mode", "key_antiquant_mode", "value_antiquant_mode"):
                if o.get(name, 0) != 0:
                    raise FIAArgumentError(_name(call, name), "needs an int8 or int4 key/value (spec 16.3)",
                                           o[name])
    output = _check_output_quant(call, ctx, key_dq)
    return QuantSpec(key=key_dq, value=value_dq, query_scale=query_scale, full=full, output=output)


def check_output_quant_rows(call: FIACall, sparse_mode: int, pre: int, nxt: int, has_mask: bool, decode: bool,
                            bands: list[tuple[Band, int, int]]) -> None:
    """With int8 output: no band with negative pre/next; with quant_offset2, no uncomputed rows (spec 6.3, 16.1).

    Args:
        pre, nxt: the effective pre/next tokens (left padding forces INT_MAX in mode 0).
        bands: per batch (its sparse-mode band, L_q, L_kv + P); a row is uncomputed when no key lies in the band.
    """
    o = call.options
    if o.get("quant_scale2") is None or decode:
        return
    band_mode = sparse_mode == 4 or (sparse_mode == 0 and has_mask)
    if band_mode and (pre < 0 or nxt < 0):
        raise FIAArgumentError(f"{_name(call, 'quant_scale2')} + pre_tokens + next_tokens", "int8 output rejects "
                               "a band with negative pre_tokens or next_tokens (spec 6.3, 16.1)", (pre, nxt))
    if o.get("quant_offset2") is None or sparse_mode not in (0, 3, 4):
        return  # modes 1 and 2 compute every row that has keys (spec 16.1 lists modes 0, 3 and 4)
    for b, (band, lq, keys) in enumerate(bands):
        restricted = band.lo is not None or band.hi is not None
        if restricted and not bool(band.computed_rows(lq, keys).all()):
            raise FIAArgumentError(f"{_name(call, 'quant_offset2')} + sparse_mode", f"batch {b} would leave query "
                                   "rows uncomputed, which an output offset does not allow (spec 16.1)",
                                   (sparse_mode, lq, keys))


# ---------------------------------------------------------------------------------------------------- full quant

def _check_full(call: FIACall, ctx: QuantContext) -> FullQuant:
    o = call.options
    if any(o.get(n) is None for n in FULL_NAMES):
        raise FIAArgumentError(" + ".join(FULL_NAMES), "an int8 query (full quantisation) needs all three "
                               "per-tensor scales (spec 16.2)", [n for n in FULL_NAMES if o.get(n) is None])
    if ctx.decode:
        raise FIAArgumentError("query", "all-int8 Q/K/V is not supported for S_q == 1 (spec 16.2)", call.query)
    if ctx.layout.name not in QUANT_LAYOUTS:
        raise FIAArgumentError("input_layout", f"full quantisation allows {QUANT_LAYOUTS} (spec 16.2)",
                               ctx.layout.name)
    if ctx.paged:
        raise FIAArgumentError("block_table + query", "paging is not available with an int8 query (spec 11, 16.2)",
                               "given")
    if o.get("key_shared_prefix") is not None:
        raise FIAArgumentError("key_shared_prefix + query", "a shared prefix cannot be combined with all-int8 "
                               "Q/K/V (spec 14)", "given")
    if ctx.rope:
        raise FIAArgumentError("query_rope + dequant_scale1", "v1 full quantisation has no MLA path (spec 12, 16.2)",
                               "given")
    _reject_given(call, ANTIQUANT_NAMES, "does not apply with full quantisation: K/V use dequant_scale1/2 "
                  "(spec 16.2)")
    values = {}
    for name in FULL_NAMES:
        t = o[name]
        ok_dtypes = (torch.float32,) if name == "quant_scale1" else (torch.float32, torch.uint64, torch.int64)
        if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.dtype not in ok_dtypes:
            raise FIAArgumentError(name, f"must be a one-value per-tensor tensor of dtype {ok_dtypes} (uint64 in "
                                   "npu_trans_quant_param's encoding) (spec 16.2)", t)
        values[name] = float(decode_trans_quant_param(t) if t.dtype != torch.float32 else t.reshape(()))
    return FullQuant(values["dequant_scale1"], values["quant_scale1"], values["dequant_scale2"])


def _check_mla_full(call: FIACall, ctx: QuantContext) -> tuple[torch.Tensor, KVDequant, KVDequant]:
    o, q = call.options, call.query
    if o["dequant_scale_query"] is None or o["query_quant_mode"] != 3:
        raise FIAArgumentError("dequant_scale_query + query_quant_mode", "an int8 query in v2 (MLA full quant) "
                               "needs dequant_scale_query with query_quant_mode=3 (spec 16.4)",
                               o["query_quant_mode"])
    if not ctx.rope or ctx.head_dim != 512:
        raise FIAArgumentError("query_rope", "an int8 query in v2 is MLA D=512 full quantisation: query_rope/"
                               "key_rope are required (spec 16.4)", o["query_rope"])
    if ctx.num_kv_heads != 1 or not 1 <= ctx.num_heads <= 128:
        raise FIAArgumentError("num_key_value_heads + num_query_heads", "MLA full quantisation needs N_kv = 1 and "
                               "N_q in 1..128 (spec 25.1)", (ctx.num_heads, ctx.num_kv_heads))
    for name in ("query_rope", "key_rope"):
        if o[name].dtype != torch.bfloat16:
            raise FIAArgumentError(name, "must be bfloat16 with MLA full quantisation (spec 16.4)", o[name])
    for name in ("key_antiquant_offset", "value_antiquant_offset", "quant_scale2", "quant_offset2"):
        if o.get(name) is not None:
            raise FIAArgumentError(_name(call, name), "MLA full quantisation takes no offsets and no output "
                                   "quantisation (spec 16.4)", o[name])
    for name in ("key_antiquant_mode", "value_antiquant_mode"):
        if o[name] != 0:
            raise FIAArgumentError(_name(call, name), "must be 0 with MLA full quantisation (spec 16.4)", o[name])
    dq = []
    for name in ("key_antiquant_scale", "value_antiquant_scale"):
        t = o[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (1,) or t.dtype != torch.float32:
            raise FIAArgumentError(_name(call, name), "MLA full quantisation needs a per-tensor (1,) float32 "
                                   "scale (spec 16.4)", t)
        dq.append(KVDequant(0, t.reshape(1, 1, 1), None, False))
    scale = o["dequant_scale_query"]
    part = ctx.layout.query
    expected = (*q.shape[:-1], ctx.num_heads) if part == "BSH" else tuple(q.shape[:-1])
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 \
            or [s for s in scale.shape if s != 1] != [s for s in expected if s != 1]:
        raise FIAArgumentError("dequant_scale_query", f"must be float32 per-token per-head: the query's shape "
                               f"without D, {expected} (size-1 axes may be added) (spec 16.4)", scale)
    grid = scale.reshape(expected)
    canonical = to_canonical(grid if part == "BSH" else grid.unsqueeze(-1), part, ctx.num_heads)[..., 0]
    return canonical, dq[0], dq[1]


# ---------------------------------------------------------------------------------------------------- antiquant

def _check_antiquant(call: FIACall, ctx: QuantContext) -> tuple[KVDequant, KVDequant]:
    o, k = call.options, call.key
    int4 = k.dtype == torch.int32
    if ctx.rope:
        raise FIAArgumentError("query_rope + key", "MLA does not take int8/int4 K/V with a float query "
                               "(spec 12, 18.3)", k)
    if ctx.paged and not ctx.decode:
        raise FIAArgumentError("block_table + key", "prefill (S_q > 1) paging excludes antiquant (spec 11)", k)
    if int4 and ctx.paged:
        raise FIAArgumentError("block_table + key", "int4 K/V with a float query cannot be paged (spec 11)", k)
    if int4 and ctx.left_padding:
        raise FIAArgumentError("kv_padding_size + key", "int4 K/V with a float query excludes left padding "
                               "(spec 15)", k)
    if int4 and ctx.head_dim % 64:
        raise FIAArgumentError("key", f"int4 needs D % 64 == 0 (D = {ctx.head_dim}) (spec 16.3)", k)
    separated = o["key_antiquant_scale"] is not None or o["value_antiquant_scale"] is not None
    if separated:
        return _check_separated(call, ctx, int4)
    if o.get("antiquant_scale") is not None:
        return _check_combined(call, ctx, int4)
    for name in ("key_antiquant_offset", "value_antiquant_offset", "antiquant_offset"):
        if o.get(name) is not None:
            raise FIAArgumentError(_name(call, name), "an offset needs its scale (spec 16.3)", o[name])
    raise FIAArgumentError(f"{_name(call, 'key_antiquant_scale')} + {_name(call, 'value_antiquant_scale')}",
                           "int8/int4 K/V with a float query need antiquant scales (spec 16.3)", None)


def _check_separated(call: FIACall, ctx: QuantContext, int4: bool) -> tuple[KVDequant, KVDequant]:
    o = call.options
    ks, vs, ko, vo = (o[n] for n in ("key_antiquant_scale", "value_antiquant_scale", "key_antiquant_offset",
                                     "value_antiquant_offset"))

    def pair(first: str, second: str) -> str:
        return f"{_name(call, first)} + {_name(call, second)}"

    if ks is None or vs is None:
        raise FIAArgumentError(pair("key_antiquant_scale", "value_antiquant_scale"), "come together (spec 16.3)",
                               "one missing")
    if (ko is None) != (vo is None):
        raise FIAArgumentError(pair("key_antiquant_offset", "value_antiquant_offset"), "offsets are all-or-none "
                               "(spec 16.3)", "one missing")
    kmode, vmode = o["key_antiquant_mode"], o["value_antiquant_mode"]
    modes = pair("key_antiquant_mode", "value_antiquant_mode")
    for m in (kmode, vmode):
        if m not in range(6):
            raise FIAArgumentError(modes, "modes are 0-5 (spec 16.3)", (kmode, vmode))
    if kmode != vmode and (kmode, vmode) != (0, 1):
        raise FIAArgumentError(modes, "must be equal, except key 0 (per-channel) with value 1 (per-token) "
                               "(spec 16.3)", (kmode, vmode))
    if not ctx.decode and {kmode, vmode} - {0, 1}:
        raise FIAArgumentError(modes, "S_q > 1 supports modes 0 and 1 only (spec 16.3)", (kmode, vmode))
    s_q = call.query.shape[ctx.layout.query.index("S")]
    if not ctx.decode and s_q > 16:
        raise FIAArgumentError(f"{_name(call, 'key_antiquant_scale')} + query", "the separated antiquant form "
                               f"with S_q > 1 needs S_q <= 16 (A2/A3 doc; S_q = {s_q}) (spec 16.3)", call.query)
    if o.get("key_shared_prefix") is not None and {kmode, vmode} & set(PER_TOKEN_MODES):
        raise FIAArgumentError(f"{modes} + key_shared_prefix", "per-token scales have no positions for a shared "
                               "prefix: use a per-channel/tensor (0) or per-head (2) mode [inferred] (spec 14, 16.3)",
                               (kmode, vmode))
    if kmode in (4, 5) and not ctx.paged:
        raise FIAArgumentError(f"{modes} + block_table", "modes 4 and 5 store scales in the paged layout and need "
                               "block_table (spec 16.3)", kmode)
    if int4 and kmode in (2, 4, 5):
        raise FIAArgumentError(modes, "int4 K/V support modes 0, 1 and 3 (spec 16.3)", kmode)
    return (_kv_dequant(call, ctx, "key", kmode, ks, ko, int4),
            _kv_dequant(call, ctx, "value", vmode, vs, vo, int4))


def _kv_dequant(call: FIACall, ctx: QuantContext, which: str, mode: int, scale: Any, offset: Any,
                int4: bool) -> KVDequant:
    name = _name(call, f"{which}_antiquant_scale")
    d = ctx.head_dim if which == "key" else ctx.value_dim
    n, b, s = ctx.num_kv_heads, ctx.batch, ctx.kv_axis
    if not isinstance(scale, torch.Tensor):
        raise FIAArgumentError(name, "must be a tensor (spec 16.3)", scale)
    shape = sh = tuple(scale.shape)
    if mode == 0 and _gqa_nz_decode(ctx):
        if shape not in ((1,), (n, 1, d)):
            raise FIAArgumentError(name, f"with a BNSD decode query and an NZ (rank-5) cache, a per-channel scale "
                                   f"must be (N_kv, 1, D) = {(n, 1, d)} (or one per-tensor value); the kernel's "
                                   "CheckGqaAntiQuantPerChannel refuses other shapes, (1, N_kv, 1, D) included "
                                   "(spec 25.1)", scale)
        ok, norm = True, (1, 1, 1) if shape == (1,) else (n, 1, d)
    elif mode == 0:
        shapes = [(1,), (1, n, 1, d), (1, n, d), (1, n * d)] + ([] if ctx.decode else [(n, 1, d), (n, d), (n * d,)])
        ok, norm = shape in shapes, (1, 1, 1) if shape == (1,) else (n, 1, d)
    elif mode == 1:
        ok = (len(sh) == 3 and sh[:2] == (1, b) or (not ctx.decode and len(sh) == 2 and sh[0] == b)) and sh[-1] >= s
        norm = (b, sh[-1])
    elif mode == 2:
        ok, norm = shape == (n,), (n, 1, 1)
    elif mode == 3:
        ok, norm = len(sh) == 3 and sh[:2] == (b, n) and sh[2] >= s, sh
    else:
        want = (ctx.num_blocks, ctx.block_size) if mode == 4 else (ctx.num_blocks, n, ctx.block_size)
        ok, norm = shape == want, want
    if not ok:
        raise FIAArgumentError(name, f"has the wrong shape for mode {mode} (spec 16.3 table: mode 0 (1,), "
                               f"(1,N_kv,1,D), (1,N_kv,D), (1,H) [S_q > 1 also without the leading 1]; 1 (1,B,S_kv) "
                               f"[S_q > 1 also (B,S_kv)]; 2 (N_kv,); 3 (B,N_kv,S_kv); 4 (blocks,block_size); "
                               f"5 (blocks,N_kv,block_size); S_kv >= {s})", scale)
    dtypes = (torch.float32,) if mode in (1, 3, 4, 5) else (call.query.dtype, torch.bfloat16)
    if scale.dtype not in dtypes:
        raise FIAArgumentError(name, f"mode {mode} needs dtype {dtypes} (spec 16.3)", scale)
    if offset is not None and (offset.shape != scale.shape or offset.dtype != scale.dtype):
        raise FIAArgumentError(_name(call, f"{which}_antiquant_offset"), f"must have {name}'s shape and dtype "
                               "(spec 16.3)", offset)
    return KVDequant(mode, scale.reshape(norm), None if offset is None else offset.reshape(norm), int4)


def _gqa_nz_decode(ctx: QuantContext) -> bool:
    """GQA int8 decode with a BNSD query and an NZ cache: the path of CheckGqaAntiQuantPerChannel (spec 25.1)."""
    return ctx.decode and ctx.paged and ctx.cache_rank == 5 and ctx.layout.query == "BNSD"


def _check_combined(call: FIACall, ctx: QuantContext, int4: bool) -> tuple[KVDequant, KVDequant]:
    o = call.options
    scale, offset, mode = o["antiquant_scale"], o["antiquant_offset"], o["antiquant_mode"]
    if int4:
        raise FIAArgumentError("antiquant_scale + key", "the combined antiquant form takes int8 K/V only "
                               "(spec 16.3)", call.key)
    if mode not in (0, 1):
        raise FIAArgumentError("antiquant_mode", "must be 0 (per-channel/tensor) or 1 (per-token) (spec 16.3)", mode)
    if mode == 1 and not ctx.decode:
        raise FIAArgumentError("antiquant_mode", "per-token (1) combined antiquant needs S_q == 1 (spec 16.3)", mode)
    for name in ("key_antiquant_mode", "value_antiquant_mode"):
        if o[name] != 0:
            raise FIAArgumentError(f"{name} + antiquant_scale", "the separated modes need the separated scales "
                                   "(spec 16.3)", o[name])
    if not isinstance(scale, torch.Tensor) or scale.dim() < 1 or scale.shape[0] != 2:
        raise FIAArgumentError("antiquant_scale", "the combined form has a leading dim of 2 = [key, value] "
                               "(spec 16.3)", scale)
    if offset is not None and (offset.shape != scale.shape or offset.dtype != scale.dtype):
        raise FIAArgumentError("antiquant_offset", "must have antiquant_scale's shape and dtype (spec 16.3)", offset)
    n, d, b = ctx.num_kv_heads, ctx.head_dim, ctx.batch
    if mode == 1:
        if scale.dim() != 3 or scale.shape[1] != b or scale.shape[2] < ctx.kv_axis or scale.dtype != torch.float32:
            raise FIAArgumentError("antiquant_scale", f"antiquant_mode 1 needs (2, B={b}, S_kv >= {ctx.kv_axis}) "
                                   "float32 (spec 16.3)", scale)
    elif tuple(scale.shape) not in ((2,), (2, n, 1, d), (2, n, d), (2, n * d)) \
            or scale.dtype not in (call.query.dtype, torch.bfloat16):
        raise FIAArgumentError("antiquant_scale", f"antiquant_mode 0 needs (2,), (2,N_kv,1,D), (2,N_kv,D) or (2,H) "
                               f"with N_kv={n}, D={d}, in the query's dtype (spec 16.3)", scale)
    norm = (scale.shape[1], scale.shape[2]) if mode == 1 else (1, 1, 1) if scale.dim() == 1 else (n, 1, d)
    parts = [KVDequant(mode, scale[i].reshape(norm), None if offset is None else offset[i].reshape(norm), False)
             for i in (0, 1)]
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------------- output quant

def _check_output_quant(call: FIACall, ctx: QuantContext, key_dq: KVDequant | None) -> OutputQuant | None:
    o = call.options
    scale, offset = o.get("quant_scale2"), o.get("quant_offset2")
    sname, oname = _name(call, "quant_scale2"), _name(call, "quant_offset2")
    if scale is None:
        if offset is not None:
            raise FIAArgumentError(oname, f"needs {sname} (spec 16.1)", offset)
        return None
    if ctx.layout.name not in QUANT_LAYOUTS:
        raise FIAArgumentError(f"{sname} + input_layout", f"int8 output allows {QUANT_LAYOUTS} (spec 16.1)",
                               ctx.layout.name)
    if key_dq is not None and key_dq.int4:
        raise FIAArgumentError(f"{sname} + key", "int4 antiquant excludes output quantisation (spec 16.1, 18.3)",
                               call.key)
    if ctx.rope:
        raise FIAArgumentError(f"{sname} + query_rope", "MLA excludes output quantisation (spec 12, 16.1)", "given")
    q_dtype = call.query.dtype
    dtypes = (torch.float32, torch.bfloat16) if q_dtype == torch.bfloat16 else (torch.float32,)
    if not isinstance(scale, torch.Tensor) or scale.dtype not in dtypes:
        raise FIAArgumentError(sname, "dtype must be float32 (or bfloat16 with a bfloat16 query) (spec 16.1)", scale)
    if offset is not None and (offset.shape != scale.shape or offset.dtype != scale.dtype):
        raise FIAArgumentError(oname, f"must have {sname}'s shape and dtype (spec 16.1)", offset)
    n, d = ctx.num_heads, ctx.value_dim
    if scale.numel() == 1:
        norm = (1, 1, 1)
    else:
        shapes = {"BSH": [(1, 1, n * d), (n * d,)], "BNSD": [(1, n, 1, d), (n, d)],
                  "BSND": [(1, 1, n, d), (n, d)]}[ctx.layout.out]
        if ctx.layout.out == "BSH" and scale.numel() != n * d:
            raise FIAArgumentError(sname, f"per-tensor (one value) or per-channel with H = {n * d} elements in any "
                                   "shape, e.g. (1, 1, H), (H,), (1, H), (N, D), for output layout BSH "
                                   "(spec 16.1, 25.1)", scale)
        if ctx.layout.out != "BSH" and tuple(scale.shape) not in shapes:
            raise FIAArgumentError(sname, f"per-tensor (one value) or per-channel {shapes} for output layout "
                                   f"{ctx.layout.out} (spec 16.1)", scale)
        for other, bad in (("kv_padding_size", ctx.left_padding), ("softmax_lse_flag", ctx.return_lse),
                           ("value", d % 32 != 0)):
            if bad:
                raise FIAArgumentError(f"{sname} + {_name(call, other)}", "per-channel output quantisation "
                                       "excludes left padding, softmax_lse and D not 32-byte aligned "
                                       "(spec 16.1, 18.3)", d if other == "value" else "given")
        norm = (n, 1, d)
    return OutputQuant(scale.reshape(norm), None if offset is None else offset.reshape(norm))


def _reject_given(call: FIACall, names: tuple[str, ...], rule: str) -> None:
    for name in names:
        if call.options.get(name) is not None:
            raise FIAArgumentError(_name(call, name), rule, call.options[name])


def _name(call: FIACall, canonical: str) -> str:
    return spelled(canonical, call.form)
