"""Validate a parsed call and resolve its geometry into an ``Plan`` (spec 4-14, 18).

Every rule the op enforces is checked here, before any compute, and a broken rule raises ``FIAArgumentError``
naming the parameter, the rule and the value. The resulting problem holds canonical (B, N, S, D) views of the
tensors and, per batch, where its query rows and keys are and which band of keys each row may see.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import paged, shapes, targets
from .call import FIACall, check_devices
from .errors import FIAArgumentError
from .finite import check_finite, check_output_range
from .layouts import Layout, parse_layout, to_canonical
from .lengths import cumulative_lengths, per_batch_lengths, read_lengths
from .masks import (
    COMPRESSED_MASK_SIZE,
    INT_MAX,
    SPARSE_MODES,
    TREE_MODE,
    Band,
    is_compressed_causal_mask,
    sparse_band,
    tree_visibility,
)
from .quant import QuantSpec
from .quant_checks import QuantContext, check_input_dtypes, check_output_quant_rows, check_quant, int4_factor
from .rules import book
from .rules.routes import RouteFacts, decide, legacy_ifa_flag
from .signatures import spelled

if TYPE_CHECKING:
    from .visibility import Visibility

OP_FLOAT_DTYPES = (torch.float16, torch.bfloat16)  # what the NPU op takes; float32/64 are the kit's extension
MASK_DTYPES = (torch.bool, torch.int8, torch.uint8)
ROPE_DIM = 64

# Reserved (key_rope_antiquant_scale, spec 1.6) or Ascend950-only (quant_scale_p, spec 1.6): rejected by name.
UNSUPPORTED_TENSORS = ("key_rope_antiquant_scale", "quant_scale_p")
RESERVED_DTYPE_HINTS = ("query_dtype", "key_dtype", "value_dtype", "query_rope_dtype", "key_rope_dtype",
                        "key_shared_prefix_dtype", "value_shared_prefix_dtype", "dequant_scale_query_dtype",
                        "dequant_scale_key_dtype", "dequant_scale_value_dtype", "dequant_scale_key_rope_dtype")
MLA_LAYOUTS = {
    512: {"BSH", "BSND", "BNSD", "BNSD_NBSD", "BSND_NBSD", "BSH_NBSD", "TND", "TND_NTD"},
    128: {"BSH", "BSND", "TND", "BNSD", "NTD", "BSH_BNSD", "BSND_BNSD", "BNSD_BSND", "NTD_TND"},
}


@dataclass(frozen=True)
class BatchPlan:
    """Where batch b's data lies, in canonical coordinates, and which keys its rows see.

    Attributes:
        q_index, q_start, q_len: query rows are ``query[q_index, :, q_start:q_start+q_len]`` (canonical).
        kv_index, kv_start, kv_len: dense keys are ``key[kv_index, :, kv_start:kv_start+kv_len]``; with a paged
            cache, ``kv_index`` is the block_table row and kv_start is 0.
        band: the sparse-mode band over (row i, key j) in batch-local coordinates (prefix keys first).
        mask_origin: (row, col) of the batch's first query row / key in atten_mask and pse_shift; non-zero only
            with left padding, where they are addressed in physical coordinates (spec 15).
    """

    q_index: int
    q_start: int
    q_len: int
    kv_index: int
    kv_start: int
    kv_len: int
    band: Band
    mask_origin: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Plan:
    """A validated call with its geometry resolved; what the kernel, the figures and the tests read.

    Tensors are canonical views: query (B, N_q, S_q, D) or (1, N_q, T_q, D) for packed layouts; key/value likewise
    with N_kv, or the paged cache as given; prefix (1, N_kv, P_S, D); pse (B|1, N_q, S_q', S_kv'); atten_mask as
    (B|1, S_q', S_kv') for prefill or (B|1, S_kv') for decode, bool, True = masked.
    """

    form: str
    layout: Layout
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    query_rope: torch.Tensor | None
    key_rope: torch.Tensor | None
    prefix_key: torch.Tensor | None
    prefix_value: torch.Tensor | None
    prefix_len: int
    block_table: torch.Tensor | None
    block_size: int
    pse: torch.Tensor | None
    atten_mask: torch.Tensor | None
    learnable_sink: torch.Tensor | None
    batch: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    value_dim: int
    scale: float
    sparse_mode: int
    pre_tokens: int
    next_tokens: int
    inner_precise: int
    return_lse: bool
    decode: bool
    batches: tuple[BatchPlan, ...]
    out_dtype: torch.dtype
    out_shape: tuple[int, ...]
    lse_shape: tuple[int, ...]
    key_columns: int  # the key axis atten_mask and pse_shift cover: P + S_kv (``shapes.key_axis_width``)
    quant: QuantSpec | None = None  # quantised inputs/outputs (spec 16); None when nothing is quantised
    route: str = "fia"  # the kernel's host route (``fia_kit.rules.ROUTES``): which checks apply, which LSE sentinel
    call: FIACall | None = field(default=None, repr=False, compare=False)  # the parsed call this plan resolves

    def keywords(self, form: str | None = None) -> dict:
        """The keywords the caller gave, spelled as ``form`` ("v1"/"v2"; default the call's own) spells them."""
        return self.call.keywords(form)

    @property
    def paged(self) -> bool:
        return self.block_table is not None

    @property
    def group_size(self) -> int:
        """G = N_q / N_kv: query heads n uses kv head n // G (spec 10)."""
        return self.num_heads // self.num_kv_heads

    @property
    def q_len(self) -> tuple[int, ...]:
        return tuple(p.q_len for p in self.batches)

    @property
    def kv_len(self) -> tuple[int, ...]:
        return tuple(p.kv_len for p in self.batches)

    @property
    def visibility(self) -> Visibility:
        """The visibility rule of this plan: which keys each row sees, which rows are computed."""
        from .visibility import Visibility

        return Visibility(self)


def build_plan(call: FIACall) -> Plan:
    """Check every rule of the op on ``call`` and resolve its geometry. Raises FIAArgumentError."""
    o = call.options
    check_devices(call)
    _reject_unsupported(call)
    _check_out_dtype(call)
    layout = parse_layout(o["input_layout"])
    query, key, value = call.query, call.key, call.value
    check_input_dtypes(query, key, value)
    paged_kv = o["block_table"] is not None
    _check_ranks(layout, query, key, value, paged_kv)
    num_heads, num_kv_heads = _head_counts(call, layout, paged_kv)
    q4 = to_canonical(query, layout.query, num_heads)
    rope = o["query_rope"] is not None or o["key_rope"] is not None
    if paged_kv:
        k4, v4 = key, value
        head_dim = paged.cache_head_dim(key, num_kv_heads) * int4_factor(key)
        value_dim = paged.cache_head_dim(value, num_kv_heads) * int4_factor(value)
    else:
        k4, v4 = to_canonical(key, layout.query, num_kv_heads), to_canonical(value, layout.query, num_kv_heads)
        head_dim, value_dim = k4.shape[-1] * int4_factor(key), v4.shape[-1] * int4_factor(value)
        if not layout.packed and k4.shape[0] != q4.shape[0]:
            raise FIAArgumentError("key", f"batch size must equal the query's ({q4.shape[0]})", key)
    if head_dim != q4.shape[-1]:
        raise FIAArgumentError("key", f"head dim must equal the query's ({q4.shape[-1]})", key)
    _check_key_value_shapes(layout, k4, v4, paged_kv, head_dim, value_dim, o["sparse_mode"])
    decode = not layout.packed and q4.shape[2] == 1 and not rope  # with rope, S_q == 1 keeps modes 0/3/4 (6.5)

    block_table, block_size = _check_paging(call, num_kv_heads, decode) if paged_kv else (None, 0)
    capacity = block_table.shape[1] * block_size if paged_kv else None
    batch, plans_q, plans_kv = _resolve_lengths(call, layout, q4, k4, capacity, decode)
    facts = _route_facts(call, layout, q4, plans_q, head_dim, value_dim, num_heads, num_kv_heads, block_size)
    route = decide(facts)
    _check_group_size(call, route, rope, num_heads, num_kv_heads)
    checked = _as_kernel_sees_it(call, route, facts)
    if paged_kv:
        _check_block_table(block_table, batch, block_size, [kv[2] for kv in plans_kv], key.shape[0])
    plans_q, plans_kv, left_padded = _apply_left_padding(call, layout, q4, k4, plans_q, plans_kv, decode)

    query_rope, key_rope = _check_rope(call, layout, q4, k4, num_heads, num_kv_heads, paged_kv, route) if rope \
        else (None, None)
    prefix_key, prefix_value, prefix_len = _check_prefix(call, layout, num_kv_heads, head_dim, value_dim,
                                                         paged_kv, rope)
    key_columns = shapes.key_axis_width(k4.shape[2], [kv[2] for kv in plans_kv], packed=layout.packed,
                                        paged_capacity=capacity, prefix_len=prefix_len)
    kv_axis = key_columns - prefix_len
    q_axis = max((q[2] for q in plans_q), default=0) if layout.packed else q4.shape[2]
    sparse_mode, pre_tokens, next_tokens = _check_sparse(checked, rope, head_dim, value_dim, decode,
                                                          facts, route)
    atten_mask = _check_mask(checked, layout, batch, q_axis, key_columns, decode, rope, head_dim, value_dim,
                             paged_kv)
    if sparse_mode == TREE_MODE:
        atten_mask = _tree_mask(checked, layout, plans_q, plans_kv, q_axis, kv_axis)
    pse = _check_pse(call, layout, batch, num_heads, q_axis, key_columns, decode, rope, head_dim != value_dim)
    sink = _check_sink(call, layout, num_heads, head_dim, value_dim, pse, route)
    inner_precise = _check_inner_precise(o["inner_precise"], route)
    scale = _check_scale(o["scale"], _spelled(call, "scale"))
    return_lse = _check_lse_flag(o["softmax_lse_flag"], rope, head_dim, value_dim, route,
                                 _spelled(call, "softmax_lse_flag"))
    quant = check_quant(call, QuantContext(
        layout, batch, num_heads, num_kv_heads, head_dim, value_dim, kv_axis, decode, paged_kv,
        key.shape[0] if paged_kv else 0, block_size, rope, _left_padding_given(call), return_lse,
        key.dim() if paged_kv else 0))
    if left_padded and sparse_mode == 0:
        pre_tokens = next_tokens = INT_MAX  # spec 15, 6.3

    batches = []
    for (qi, qs, ql), (ki, ks, kl) in zip(plans_q, plans_kv, strict=True):
        delta = prefix_len + kl - ql
        band = sparse_band(sparse_mode, pre_tokens, next_tokens, delta, atten_mask is not None, decode)
        _check_band_per_batch(sparse_mode, pre_tokens, next_tokens, ql, kl + prefix_len, atten_mask is not None,
                              decode, len(batches))
        origin = (qs, ks) if left_padded else (0, 0)
        batches.append(BatchPlan(qi, qs, ql, ki, ks, kl, band, origin))
    check_output_quant_rows(call, sparse_mode, pre_tokens, next_tokens, atten_mask is not None, decode,
                            [(p.band, p.q_len, p.kv_len + prefix_len) for p in batches])

    out_shape = shapes.out_shape(layout, q4, value_dim)
    lse_shape = shapes.lse_shape(layout, q4, return_lse)
    problem = Plan(
        form=call.form, layout=layout, query=q4, key=k4, value=v4, query_rope=query_rope, key_rope=key_rope,
        prefix_key=prefix_key, prefix_value=prefix_value, prefix_len=prefix_len, block_table=block_table,
        block_size=block_size, pse=pse, atten_mask=atten_mask, learnable_sink=sink, batch=batch,
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, value_dim=value_dim, scale=scale,
        sparse_mode=sparse_mode, pre_tokens=pre_tokens, next_tokens=next_tokens, inner_precise=inner_precise,
        return_lse=return_lse, decode=decode, batches=tuple(batches), out_dtype=_out_dtype(call, quant),
        out_shape=out_shape, lse_shape=lse_shape, key_columns=key_columns, quant=quant, route=route, call=call,
    )
    check_finite(problem)  # last: it reads the regions the resolved geometry names
    check_output_range(problem)
    return problem


def _route_facts(call: FIACall, layout: Layout, q4: torch.Tensor, plans_q: list[tuple[int, int, int]],
                 head_dim: int, value_dim: int, num_heads: int, num_kv_heads: int, block_size: int) -> RouteFacts:
    """What the kernel's router reads of ``call`` (``fia_kit.rules.routes``)."""
    o = call.options
    sink, rope = o.get("learnable_sink"), o["query_rope"]
    scale, offset = o.get("antiquant_scale"), o.get("antiquant_offset")
    query_s = max((q[2] for q in plans_q), default=0) if layout.packed else q4.shape[2]
    return RouteFacts(
        product=targets.current().product, query_dtype=call.query.dtype, key_dtype=call.key.dtype,
        layout=layout.name, query_s=query_s, head_dim=head_dim, value_dim=value_dim,
        rope_dim=ROPE_DIM if rope is not None else 0, num_heads=num_heads, num_kv_heads=num_kv_heads,
        paged=o["block_table"] is not None, cache_rank=call.key.dim(), block_size=block_size,
        prefix=o.get("key_shared_prefix") is not None or o.get("value_shared_prefix") is not None,
        sparse_mode=_int_or_0(o["sparse_mode"]), mask=o["atten_mask"] is not None,
        inner_precise=_int_or_0(o["inner_precise"]), sink_dtype=sink.dtype if isinstance(sink, torch.Tensor) else None,
        quant_out=o.get("quant_scale2") is not None,
        antiquant_float=all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in (scale, offset)))


def _int_or_0(value: Any) -> int:
    """An int attribute as the router reads it (a bad value is refused later by its own check)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_kernel_sees_it(call: FIACall, route: str, facts: RouteFacts) -> FIACall:
    """The call the kernel's checks read: on A2/A3, a decode call the FIA route treats as the old incremental op has
    sparse_mode 0 and pre/next_tokens INT_MAX before any check (FIA-MASK-003); otherwise ``call`` itself.

    The compressed 2048 template of modes 2-4 is dropped with the mode: with S_q == 1 only an explicit mask counts
    (spec 6.5). [inferred] The host keeps the tensor; whether the kernel then reads the template as a sparse-0 mask
    is not settled by the host code (docs section 23).
    """
    if not (route == "fia" and legacy_ifa_flag(facts) and targets.rule("decode_sparse_forced_zero")):
        return call
    options = dict(call.options, sparse_mode=0, pre_tokens=INT_MAX, next_tokens=INT_MAX)
    if _int_or_0(call.options.get("sparse_mode")) in (2, 3, 4):
        options["atten_mask"] = None
    return dataclasses.replace(call, options=options)


def _check_group_size(call: FIACall, route: str, rope: bool, num_heads: int, num_kv_heads: int) -> None:
    """N_q / N_kv <= 64 on the legacy routes (IFA without rope, PFA); the FIA route has no cap (spec 10)."""
    ratio = targets.rule("gqa_ratio")
    rule_id = {"legacy-ifa": None if rope else "IFA-GQA-001", "legacy-pfa": "PFA-GQA-001"}.get(route)
    if ratio is None or rule_id is None or num_heads // num_kv_heads <= ratio:
        return
    heads_name = _spelled(call, "num_heads")
    raise targets.refuse("num_key_value_heads", "gqa_ratio", f"{heads_name} / num_key_value_heads = "
                         f"{num_heads // num_kv_heads} must be at most {ratio} on the {route} route (the FIA route "
                         "has no cap) (spec 10)", num_kv_heads, **_ids(rule_id))


def _ids(rule_id: str) -> dict[str, str]:
    """The book's id and kernel source for an error of ``rule_id``."""
    entry = book.rule_by_id(rule_id)
    return {"rule_id": entry.id, "source": entry.source}


# ---------------------------------------------------------------------------------------------------------- checks

def _reject_unsupported(call: FIACall) -> None:
    o = call.options
    for name in UNSUPPORTED_TENSORS:
        if o.get(name) is not None:
            raise FIAArgumentError(_spelled(call, name), "is reserved (key rope antiquant) or Ascend950-only "
                                   "(quant_scale_p) and not modelled by the reference (spec 1.2, 1.6)", o[name])
    for name in RESERVED_DTYPE_HINTS:
        if o.get(name) in shapes.ASCEND950_DTYPE_CODES:
            raise targets.refuse(name, "fp8_inputs", f"{shapes.ASCEND950_DTYPE_CODES[o[name]]} inputs are "
                                 "Ascend950 only, not modelled by the kit (spec 25.3)", o[name])
        if o.get(name) is not None:
            raise FIAArgumentError(name, "is a reserved storage-reinterpretation hint (spec 1.2): pass None",
                                   o[name])
    for name in ("query", "key", "value", "query_rope", "key_rope"):
        t = call.query if name == "query" else call.key if name == "key" else call.value if name == "value" \
            else o.get(name)
        if isinstance(t, torch.Tensor) and t.dtype in shapes.ASCEND950_TORCH_DTYPES:
            raise targets.refuse(name, "fp8_inputs", f"{t.dtype} (FP8 / FP4) inputs are Ascend950 only, not "
                                 "modelled by the kit (spec 25.3)", t)


def _spelled(call: FIACall, canonical: str) -> str:
    return spelled(canonical, call.form)


def _out_dtype(call: FIACall, quant: QuantSpec | None) -> torch.dtype:
    """int8 with output quantisation; for an int8 query v2's out_dtype if given, else the rope's dtype (v2 MLA) or
    float16 (spec 4.3, 25.1)."""
    code = call.options.get("out_dtype")
    if quant is not None and quant.output is not None:
        return torch.int8
    if call.query.dtype == torch.int8:
        if code is not None:
            return shapes.DTYPE_CODES[code]
        rope = call.options["query_rope"]
        return rope.dtype if rope is not None else torch.float16
    return call.query.dtype


def _check_out_dtype(call: FIACall) -> None:
    """v2 out_dtype (spec 1.2, 25.1): with an int8 query it picks float16 (5) or bfloat16 (15); with
    quant_scale_out, int8 (1); FP8/HiFloat8 codes are Ascend950's. Elsewhere the op ignores it: refused."""
    code = call.options.get("out_dtype")
    if code is None:
        return
    if code in shapes.ASCEND950_DTYPE_CODES:
        raise targets.refuse("out_dtype", "fp8_inputs", f"{shapes.ASCEND950_DTYPE_CODES[code]} output is Ascend950 "
                             "only, not modelled by the kit (spec 25.3)", code)
    if call.options.get("quant_scale2") is not None:
        if code != 1:
            raise FIAArgumentError("out_dtype + quant_scale_out", "with quant_scale_out the output is int8 (code 1) "
                                   "on A2/A3 (spec 16.1, 25.1)", code)
        return
    if call.query.dtype != torch.int8:
        raise FIAArgumentError("out_dtype", "selects the output dtype only with an int8 query or quant_scale_out; "
                               "with a float query the op ignores it, so the kit refuses it (spec 1.2, 25.1)", code)
    if code not in (5, 15):
        raise FIAArgumentError("out_dtype", "with an int8 query must be 5 (float16) or 15 (bfloat16) (spec 25.1)",
                               code)


def _left_padding_given(call: FIACall) -> bool:
    o = call.options
    return o.get("query_padding_size") is not None or o.get("kv_padding_size") is not None


def _apply_left_padding(call: FIACall, layout: Layout, q4: torch.Tensor, k4: torch.Tensor,
                        plans_q: list[tuple[int, int, int]], plans_kv: list[tuple[int, int, int]], decode: bool,
                        ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], bool]:
    """Right-align each batch's valid rows/keys before ``padding`` trailing pad rows (v1 only, spec 15).

    Valid query rows [S_q - qpad - L_q, S_q - qpad), keys [S_kv - kvpad - L_kv, S_kv - kvpad). Only element [0] of
    each int64 padding tensor is read, negative counts as 0, and each takes effect only with its actual-length
    argument (query padding only for S_q > 1). A kv start below 0 is an error for S_q > 1 (PFA: "unpredictable")
    and, for decode, leaves that batch without keys: an all-zero output (spec 15, 25.1). Returns the shifted plans
    and whether any shift applies.
    """
    o = call.options
    if not _left_padding_given(call):
        return plans_q, plans_kv, False
    for other, bad, rule_id in (
            ("block_table", o["block_table"] is not None, "FIA-PAD-001"),
            ("input_layout", layout.packed or layout.name in ("BSH_BNSD", "BSND_BNSD"), "FIA-PAD-002"),
            ("query_rope", o["query_rope"] is not None, "FIA-MLA-003"),
            ("key_shared_prefix", o.get("key_shared_prefix") is not None, "FIA-PREFIX-004")):
        if bad:
            raise FIAArgumentError(f"query_padding_size/kv_padding_size + {other}", "left padding cannot be "
                                   "combined with paging, BSH_BNSD/BSND_BNSD/packed (TND-family) layouts, MLA rope "
                                   "or a shared prefix (spec 14, 15)",
                                   layout.name if other == "input_layout" else "given", **_ids(rule_id))
    shifted = False
    for name, lengths, plans, s in (("query_padding_size", "actual_seq_lengths", plans_q, q4.shape[2]),
                                    ("kv_padding_size", "actual_seq_lengths_kv", plans_kv, k4.shape[2])):
        pad = o[name]
        if pad is None:
            continue
        if not isinstance(pad, torch.Tensor) or pad.dtype != torch.int64 or pad.numel() < 1:
            raise FIAArgumentError(name, "must be a non-empty int64 tensor; only element [0] is read (spec 15)", pad)
        if o[lengths] is None or (name == "query_padding_size" and decode):
            continue  # no effect without the actual lengths (or for S_q == 1): right padding (spec 15)
        pad_value = max(0, int(pad.reshape(-1)[0]))
        for b, (index, _, length) in enumerate(plans):
            start = s - pad_value - length
            if start < 0 and decode:
                plans[b] = (index, 0, 0)  # IFA: an all-zero output for that batch, no error (spec 15, 25.1)
                shifted = True
                continue
            if start < 0:
                raise FIAArgumentError(f"{name} + {lengths}", f"batch {b}: S - padding - length = {s} - "
                                       f"{pad_value} - {length} < 0 (spec 15)", pad_value)
            plans[b] = (index, start, length)
            shifted = True
    return plans_q, plans_kv, shifted


def _check_ranks(layout: Layout, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 paged_kv: bool) -> None:
    if query.dim() != layout.rank:
        raise FIAArgumentError("query", f"input_layout {layout.name} needs a {layout.rank}-D query "
                               f"({layout.query}) (spec 4.2)", query)
    if paged_kv:
        if key.dim() not in paged.CACHE_LAYOUTS:
            raise FIAArgumentError("key", "a paged cache (block_table given) must be 3-D (BnBsH), 4-D (BnNBsD) "
                                   "or 5-D (NZ) (spec 11)", key)
    elif key.dim() != layout.rank:
        raise FIAArgumentError("key", f"must have the query's rank {layout.rank} ({layout.query}) unless paged "
                               "(spec 4.2)", key)
    if value.dim() != key.dim():
        raise FIAArgumentError("value", f"must have the key's rank {key.dim()} (spec 4.2)", value)


def _head_counts(call: FIACall, layout: Layout, paged_kv: bool) -> tuple[int, int]:
    o = call.options
    heads_name = _spelled(call, "num_heads")
    num_heads, num_kv = o["num_heads"], o["num_key_value_heads"]
    if not isinstance(num_heads, int) or num_heads < 1:
        raise FIAArgumentError(heads_name, "must be an int >= 1", num_heads)
    if not isinstance(num_kv, int) or num_kv < 0:
        raise FIAArgumentError("num_key_value_heads", "must be an int >= 0 (0 means num_heads)", num_kv)
    num_kv = num_kv or num_heads
    query, key = call.query, call.key
    if layout.heads_explicit:
        n_axis = layout.query.index("N")
        if query.shape[n_axis] != num_heads:
            raise FIAArgumentError(heads_name, f"must equal the query's N axis ({query.shape[n_axis]}) for "
                                   f"{layout.query} (spec 10)", num_heads)
    elif query.shape[2] % num_heads:
        raise FIAArgumentError(heads_name, f"must divide the query's H ({query.shape[2]}) for BSH (spec 10)",
                               num_heads)
    if num_heads % num_kv:
        raise FIAArgumentError("num_key_value_heads", f"must divide {heads_name}={num_heads} (GQA, spec 10)",
                               num_kv)
    key_heads = paged.cache_num_heads(key) if paged_kv else (
        key.shape[layout.query.index("N")] if layout.heads_explicit else None)
    if key_heads is not None and key_heads != num_kv:
        hint = "set num_key_value_heads (0 means 'same as the query heads')" if o["num_key_value_heads"] == 0 \
            else None
        raise FIAArgumentError("num_key_value_heads", f"the key has {key_heads} heads; num_key_value_heads "
                               f"(or {heads_name} when it is 0) must equal that (spec 10)",
                               o["num_key_value_heads"], hint=hint)
    h_axis = key.shape[-1] if (key_heads is None) else None
    if h_axis is not None and h_axis % num_kv:
        raise FIAArgumentError("num_key_value_heads", f"must divide the key's H ({h_axis}) (spec 10)", num_kv)
    return num_heads, num_kv


def _check_key_value_shapes(layout: Layout, k4: torch.Tensor, v4: torch.Tensor, paged_kv: bool, head_dim: int,
                            value_dim: int, sparse_mode: int) -> None:
    """K and V share all axes but D; Q/K D may differ from V D only as the target allows (rule qk_v_head_dims)."""
    if _shape_without_head_dim(k4, paged_kv) != _shape_without_head_dim(v4, paged_kv):
        raise FIAArgumentError("value", f"must have the key's shape {tuple(k4.shape)} except the head dim "
                               "(spec 4.2)", v4)
    if value_dim == head_dim:
        return
    packed_192 = layout.packed and head_dim == 192 and value_dim == 128
    small = head_dim <= 128 and value_dim <= 128 and sparse_mode in (0, 2, 3)
    if targets.rule("qk_v_head_dims") == "any":
        ok, allowed = packed_192 or small, "TND-family Q/K D=192 with V D=128, or all D <= 128 with sparse_mode 0/2/3"
    else:
        ok, allowed = packed_192 or (layout.packed and small), "TND-family Q/K D=192 with V D=128, or (TND family) " \
            "all D <= 128 with sparse_mode 0/2/3; other layouts need Ascend950"
    if not ok:
        rule_id = "FIA-AXIS-002" if max(head_dim, value_dim) > 128 else "FIA-MASK-005" \
            if sparse_mode not in (0, 2, 3) else None
        raise targets.refuse("value", "qk_v_head_dims", f"head dim {value_dim} differs from the key's {head_dim}: "
                             f"allowed only for {allowed}", v4, **(_ids(rule_id) if rule_id else {}))


def _shape_without_head_dim(t: torch.Tensor, paged_kv: bool) -> tuple[int, ...]:
    """Axes that key and value must share: all but D (for an NZ cache, all but D/c and c)."""
    if paged_kv and t.dim() == 5:
        return (t.shape[0], t.shape[1], t.shape[3])
    return tuple(t.shape[:-1])


def _check_paging(call: FIACall, num_kv_heads: int, decode: bool) -> tuple[torch.Tensor, int]:
    o = call.options
    block_table, block_size = o["block_table"], o["block_size"]
    if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2 or block_table.dtype != torch.int32:
        raise FIAArgumentError("block_table", "must be a 2-D int32 tensor (B, max_blocks_per_seq) (spec 11)",
                               block_table, **_ids("FIA-PA-001"))
    if not isinstance(block_size, int) or block_size <= 0:
        raise FIAArgumentError("block_size", "must be > 0 when block_table is given (spec 11)", block_size)
    low, high = targets.rule("block_size")
    if block_size % 16 or block_size > 1024:
        raise targets.refuse("block_size", "block_size", "must be a multiple of 16 and at most 1024", block_size,
                             **_ids("FIA-PA-003"))
    if not decode and (block_size % low or not low <= block_size <= high):
        raise targets.refuse("block_size", "block_size", f"prefill (S_q > 1) paging needs {low}..{high} in steps "
                             f"of {low}", block_size)
    if o["actual_seq_lengths_kv"] is None:
        raise FIAArgumentError(_spelled(call, "actual_seq_lengths_kv"), "is required with paged attention "
                               "(block_table) (spec 5.1, 11)", None, **_ids("FIA-PA-002"))
    key = call.key
    if paged.cache_block_size(key) != block_size:
        raise FIAArgumentError("block_size", f"must equal the cache's block axis "
                               f"({paged.cache_block_size(key)}) for a {key.dim()}-D cache (spec 11)", block_size)
    if key.dim() == 3 and key.shape[2] > 65535:
        raise FIAArgumentError("key", "a 3-D (BnBsH) cache needs N_kv*D <= 65535 (spec 11)", key)
    if key.dim() == 3 and key.shape[2] % num_kv_heads:
        raise FIAArgumentError("num_key_value_heads", f"must divide the cache's H ({key.shape[2]})", num_kv_heads)
    return block_table, block_size


def _check_block_table(block_table: torch.Tensor, batch: int, block_size: int, kv_lens: list[int],
                       num_blocks: int) -> None:
    if block_table.shape[0] != batch:
        raise FIAArgumentError("block_table", f"needs one row per batch ({batch}) (spec 11)", block_table)
    needed = max((-(-n // block_size) for n in kv_lens), default=0)
    if block_table.shape[1] < needed:
        raise FIAArgumentError("block_table", f"needs at least ceil(max kv length / block_size) = {needed} "
                               "columns (spec 11)", block_table)
    table = block_table.cpu()
    for b, n in enumerate(kv_lens):
        used = table[b, : -(-n // block_size)]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_blocks):
            raise FIAArgumentError("block_table", f"row {b} reads block ids {used.tolist()}, but the cache has "
                                   f"{num_blocks} blocks (ids must lie in [0, {num_blocks}))", block_table)


def _resolve_lengths(call: FIACall, layout: Layout, q4: torch.Tensor, k4: torch.Tensor, capacity: int | None,
                     decode: bool) -> tuple[int, list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Per batch: (q_index, q_start, q_len) and (kv_index, kv_start, kv_len)."""
    o = call.options
    q_name, kv_name = _spelled(call, "actual_seq_lengths"), _spelled(call, "actual_seq_lengths_kv")
    q_values = read_lengths(q_name, o["actual_seq_lengths"])
    kv_values = read_lengths(kv_name, o["actual_seq_lengths_kv"])
    if layout.packed:
        q_starts, q_lens = cumulative_lengths(q_name, q_values, q4.shape[2], "T_q", targets.rule("tnd_last_length"))
        batch = len(q_lens)
        if kv_values is None:
            raise FIAArgumentError(kv_name, "is required for packed layouts (cumulative without paging, "
                                   "per-batch with paging) (spec 5.2)", None)
        if len(kv_values) != batch:
            raise FIAArgumentError(kv_name, f"packed layouts need as many kv lengths as query lengths ({batch}) "
                                   "(spec 5.2)", list(kv_values))
        if capacity is not None:
            kv_lens = per_batch_lengths(kv_name, kv_values, batch, capacity, "block capacity")
            kv_plans = [(b, 0, n) for b, n in enumerate(kv_lens)]
        else:
            kv_starts, kv_lens = cumulative_lengths(kv_name, kv_values, k4.shape[2], "T_kv")
            kv_plans = [(0, s, n) for s, n in zip(kv_starts, kv_lens, strict=True)]
        return batch, [(0, s, n) for s, n in zip(q_starts, q_lens, strict=True)], kv_plans
    batch, s_q = q4.shape[0], q4.shape[2]
    if batch > 65536:
        raise FIAArgumentError("query", "batch size must be at most 65536 (spec 18.2)", q4.shape[0],
                               **_ids("FIA-AXIS-001"))
    q_lens = (1,) * batch if decode else per_batch_lengths(q_name, q_values, batch, s_q, "S_q")
    limit = capacity if capacity is not None else k4.shape[2]
    kv_lens = per_batch_lengths(kv_name, kv_values, batch, limit, "block capacity" if capacity else "S_kv")
    return batch, [(b, 0, n) for b, n in enumerate(q_lens)], [(b, 0, n) for b, n in enumerate(kv_lens)]


def _check_rope(call: FIACall, layout: Layout, q4: torch.Tensor, k4: torch.Tensor, num_heads: int,
                num_kv_heads: int, paged_kv: bool, route: str) -> tuple[torch.Tensor, torch.Tensor]:
    o = call.options
    q_rope, k_rope = o["query_rope"], o["key_rope"]
    if q_rope is None or k_rope is None:
        missing = "key_rope" if k_rope is None else "query_rope"
        raise FIAArgumentError(missing, "query_rope and key_rope come together (spec 12)", None,
                               **_ids("FIA-ROPE-001"))
    if q_rope.dtype != call.query.dtype and call.query.dtype != torch.int8:  # int8: bf16 rope (spec 16.4)
        raise FIAArgumentError("query_rope", f"must have the query's dtype {call.query.dtype} (spec 12)", q_rope,
                               **_ids("FIA-ROPE-004"))
    if k_rope.dtype != call.key.dtype and call.query.dtype != torch.int8:
        raise FIAArgumentError("key_rope", f"must have the key's dtype {call.key.dtype} (spec 12)", k_rope,
                               **_ids("FIA-ROPE-004"))
    d = q4.shape[-1]
    if d not in MLA_LAYOUTS:
        raise FIAArgumentError("query", "with query_rope the query head dim must be 512 (decode MLA) or 128 "
                               "(prefill MLA) (spec 12)", call.query, **_ids("FIA-ROPE-003"))
    if layout.name not in MLA_LAYOUTS[d]:
        raise FIAArgumentError("input_layout", f"MLA with D={d} allows {sorted(MLA_LAYOUTS[d])} (spec 12)",
                               layout.name)
    heads = targets.rule("mla_heads")
    if route == "legacy-ifa":
        heads = (1, 2, 4, 8, 16, 32, 64, 128)  # IFA's CheckMlaAttrs, any dtype
    if d == 512 and (call.query.dtype != torch.int8 or route == "legacy-ifa") and (
            num_kv_heads != 1 or num_heads not in heads):
        rule_id = "IFA-MLA-001" if route == "legacy-ifa" else "FIA-MLA-002" if num_kv_heads != 1 else "FIA-MLA-001"
        shown = f"[1, {heads[-1]}]" if len(heads) > 8 else "{" + ", ".join(map(str, heads)) + "}"
        raise targets.refuse("num_key_value_heads" if num_kv_heads != 1 else _spelled(call, "num_heads"),
                             "mla_heads", f"MLA with D=512 needs N_kv = 1 and N_q in {shown} (so G = N_q up to "
                             f"{heads[-1]}; N_q={num_heads}, N_kv={num_kv_heads})",
                             num_kv_heads if num_kv_heads != 1 else num_heads, **_ids(rule_id))
    if d == 512 and layout.packed and not paged_kv:
        raise FIAArgumentError("block_table", "MLA D=512 with TND needs a paged cache (spec 12)", None)
    if q_rope.dim() != layout.rank:
        raise FIAArgumentError("query_rope", f"must be laid out as the query ({layout.query})", q_rope)
    qr4 = to_canonical(q_rope, layout.query, num_heads)
    if qr4.shape[:-1] != q4.shape[:-1] or qr4.shape[-1] != ROPE_DIM:
        raise FIAArgumentError("query_rope", f"must have the query's shape with head dim {ROPE_DIM} (spec 12)",
                               q_rope, **(_ids("FIA-ROPE-002") if qr4.shape[-1] != ROPE_DIM else {}))
    if paged_kv:
        expected = _rope_shape_of(call.key, num_kv_heads, k_rope.dtype)
        if tuple(k_rope.shape) != expected:
            raise FIAArgumentError("key_rope", f"must be the paged key cache's shape with head dim {ROPE_DIM}: "
                                   f"{expected} (spec 11, 12)", k_rope)
        return qr4, k_rope
    if k_rope.dim() != layout.rank:
        raise FIAArgumentError("key_rope", f"must be laid out as the key ({layout.query})", k_rope)
    kr4 = to_canonical(k_rope, layout.query, num_kv_heads)
    if kr4.shape[:-1] != k4.shape[:-1] or kr4.shape[-1] != ROPE_DIM:
        raise FIAArgumentError("key_rope", f"must have the key's shape with head dim {ROPE_DIM} (spec 12)", k_rope)
    return qr4, kr4


def _rope_shape_of(cache: torch.Tensor, num_kv_heads: int, rope_dtype: torch.dtype) -> tuple[int, ...]:
    """key_rope's paged shape: the key cache's with D = 64; an NZ rope is tiled by 32 bytes of its OWN dtype
    (a bf16 rope beside an int8 key is (blocks, N_kv, 4, bs, 16)) (spec 25.1)."""
    s = tuple(cache.shape)
    if cache.dim() == 3:
        return (s[0], s[1], num_kv_heads * ROPE_DIM)
    if cache.dim() == 4:
        return (*s[:3], ROPE_DIM)
    c = 32 // torch.empty(0, dtype=rope_dtype).element_size()
    return (s[0], s[1], ROPE_DIM // c, s[3], c)


def _check_prefix(call: FIACall, layout: Layout, num_kv_heads: int, head_dim: int, value_dim: int,
                  paged_kv: bool, rope: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    o = call.options
    kp, vp, plen = o.get("key_shared_prefix"), o.get("value_shared_prefix"), o.get("actual_shared_prefix_len")
    if kp is None and vp is None:
        if plen is not None:
            raise FIAArgumentError("actual_shared_prefix_len", "needs key_shared_prefix and value_shared_prefix "
                                   "(spec 14)", plen)
        return None, None, 0
    if kp is None or vp is None:
        missing = "key_shared_prefix" if kp is None else "value_shared_prefix"
        raise FIAArgumentError(missing, "key_shared_prefix and value_shared_prefix come together (spec 14)", None)
    for other, bad, rule_id in (
            ("block_table", paged_kv, "FIA-PREFIX-001"),
            ("input_layout", layout.packed or layout.name in ("BSH_BNSD", "BSND_BNSD"), "FIA-PREFIX-002"),
            ("query_rope", rope, "FIA-PREFIX-003")):
        if bad:
            raise FIAArgumentError(f"key_shared_prefix + {other}", "a shared prefix cannot be combined with "
                                   "paging, BSH_BNSD/BSND_BNSD/packed (TND-family) layouts or MLA rope (spec 14)",
                                   layout.name if other == "input_layout" else "given", **_ids(rule_id))
    for name, t in (("key_shared_prefix", kp), ("value_shared_prefix", vp)):
        if t.dtype != call.key.dtype or t.dim() != call.key.dim():
            raise FIAArgumentError(name, f"must have the key's dtype and rank ({call.key.dtype}, "
                                   f"{call.key.dim()}-D) (spec 14)", t)
    kp4, vp4 = to_canonical(kp, layout.query, num_kv_heads), to_canonical(vp, layout.query, num_kv_heads)
    if kp4.shape[0] != 1 or kp4.shape[1] != num_kv_heads or kp4.shape[3] != head_dim:
        raise FIAArgumentError("key_shared_prefix", f"must have batch 1 and the key's N/D "
                               f"({num_kv_heads}, {head_dim}) in layout {layout.query} (spec 14)", kp)
    if vp4.shape[:3] != kp4.shape[:3] or vp4.shape[3] != value_dim:
        raise FIAArgumentError("value_shared_prefix", "must have key_shared_prefix's batch, heads and length "
                               f"and the value's head dim {value_dim} (spec 14)", vp)
    prefix_s = kp4.shape[2]
    values = read_lengths("actual_shared_prefix_len", plen)
    if values is None:
        return kp4, vp4, prefix_s
    if len(values) != 1 or not 0 <= values[0] <= prefix_s:
        raise FIAArgumentError("actual_shared_prefix_len", f"must hold one value in [0, {prefix_s}] (the "
                               "prefix's S) (spec 14)", list(values))
    return kp4, vp4, values[0]


def _check_sparse(call: FIACall, rope: bool, head_dim: int, value_dim: int, decode: bool,
                  facts: RouteFacts, route: str) -> tuple[int, int, int]:
    """sparse_mode and pre/next_tokens as the kernel's checks on ``route`` read them (spec 6.3, 6.5)."""
    o = call.options
    mode, pre, nxt = o["sparse_mode"], o["pre_tokens"], o["next_tokens"]
    for name, v in (("sparse_mode", mode), ("pre_tokens", pre), ("next_tokens", nxt)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise FIAArgumentError(name, "must be an int", v)
    if mode == TREE_MODE:
        _check_tree_mode(call, rope, head_dim)
    elif mode not in SPARSE_MODES:
        raise FIAArgumentError("sparse_mode", "must be 0-4, or 9 (the tree mask: v2, MLA); modes 5-8 are not "
                               "supported by FIA (spec 6.3, 6.6)", mode, **_ids("FIA-MASK-001"))
    if rope and head_dim == 512 and route == "fia" and mode not in (0, 3, 4, TREE_MODE):
        raise FIAArgumentError("sparse_mode", "MLA with D=512 allows sparse_mode 0, 3, 4 or 9 (v2) (spec 6.5, 12)",
                               mode, **_ids("FIA-MASK-004"))
    if rope and route == "legacy-ifa":
        _check_legacy_mla_sparse(mode, facts, call.query.dtype == torch.int8, o["atten_mask"] is not None)
    if decode and mode != 0 and call.key.dtype in (torch.int8, torch.int32) and call.query.dtype != torch.int8:
        raise FIAArgumentError("sparse_mode", "with S_q == 1 and int8/int4 K/V, sparse_mode must be 0: the kernel "
                               "refuses others (mask_checker CheckAntiquantSparseMode) (spec 25.1)", mode,
                               **_ids("FIA-MASK-008"))
    if mode != 0 and o["atten_mask"] is None:
        raise FIAArgumentError("atten_mask", f"should not be null when sparse_mode is {mode} (modes 1-4 need a "
                               "mask; 2-4 the compressed 2048x2048 template) (spec 6.3)", None,
                               **_ids("SF-MASK-002" if route == "split-fuse" else "FIA-MASK-002"))
    if route == "split-fuse" and o["atten_mask"] is not None and mode not in (3, 4):
        kind = "MHA" if facts.mha else "GQA"
        raise FIAArgumentError("sparse_mode + atten_mask", f"on the split-fuse route (TND, {kind}, D <= 256) a "
                               f"mask needs sparse_mode 3 or 4, got {mode} (spec 6.3)", mode,
                               **_ids("SF-MASK-003"))
    uses_band = not decode and (mode == 4 or (mode == 0 and o["atten_mask"] is not None))
    if uses_band and nxt < -pre:
        both = "; pre_tokens and next_tokens cannot both be negative" if pre < 0 and nxt < 0 else ""
        raise FIAArgumentError("pre_tokens + next_tokens", f"next_tokens < -pre_tokens leaves no band{both} "
                               "(spec 6.3)", (pre, nxt), **_ids("FIA-TOKENS-001"))
    return mode, pre, nxt


def _check_legacy_mla_sparse(mode: int, facts: RouteFacts, full_quant: bool, has_mask: bool) -> None:
    """The legacy incremental MLA (quantised, spec 6.5): TND takes sparse_mode 0 without a mask, 3 or 9; other
    layouts take 0 with S_q = 1 and 3 (antiquant) or 3/9 (full quant) with S_q > 1."""
    if facts.layout in ("TND", "TND_NTD"):
        if mode not in (0, 3, TREE_MODE) or (mode == 0 and has_mask):
            raise FIAArgumentError("sparse_mode", "the legacy incremental MLA with TND takes sparse_mode 0 (no "
                                   "mask), 3 or 9 (spec 6.5)", mode, **_ids("IFA-MASK-003"))
        return
    allowed = (3, TREE_MODE) if full_quant else (3,)
    if facts.query_s == 1 and mode != 0:
        raise FIAArgumentError("sparse_mode", "the legacy incremental MLA (quantised K/V) with S_q = 1 takes "
                               "sparse_mode 0 only (spec 6.5)", mode, **_ids("IFA-MASK-001"))
    if facts.query_s > 1 and mode not in allowed:
        raise FIAArgumentError("sparse_mode", "the legacy incremental MLA (quantised K/V) with S_q > 1 takes "
                               f"sparse_mode {' or '.join(map(str, allowed))} only (spec 6.5)", mode,
                               **_ids("IFA-MASK-002"))


def _check_tree_mode(call: FIACall, rope: bool, head_dim: int) -> None:
    """sparse_mode 9 (spec 6.6, 18.3, 25.1): v2, MLA D=512, a mask; no pse, no int8 output; by target."""
    o = call.options
    if not targets.rule("tree_mask"):
        raise targets.refuse("sparse_mode", "tree_mask", "sparse_mode 9 (the tree mask) is not available", 9)
    if call.form != "v2":
        raise FIAArgumentError("sparse_mode", "9 (the tree mask) is v2 only (spec 6.6)", 9)
    if not rope or head_dim != 512:
        raise FIAArgumentError("sparse_mode + query_rope", "9 (the tree mask) is for MLA (query_rope/key_rope, "
                               "D=512) only (spec 6.6, 25.1)", head_dim)
    if o["atten_mask"] is None:
        raise FIAArgumentError("atten_mask", "sparse_mode 9 needs the tree mask (B, S_q, S_q), or for TND the "
                               "per-batch L_q x L_q masks concatenated in 1-D (spec 6.6)", None)
    for name in ("pse_shift", "quant_scale2"):
        if o.get(name) is not None:
            raise FIAArgumentError(f"sparse_mode + {_spelled(call, name)}", "the tree mask cannot be combined with "
                                   "pse or int8 output (spec 18.3)", "given")


def _tree_mask(call: FIACall, layout: Layout, plans_q: list[tuple[int, int, int]],
               plans_kv: list[tuple[int, int, int]], q_axis: int, kv_axis: int) -> torch.Tensor:
    """The tree mask as the kit's prefill mask plane (B, q_axis, kv_axis) bool in batch-local coordinates."""
    mask = call.options["atten_mask"]
    if not isinstance(mask, torch.Tensor) or mask.dtype not in MASK_DTYPES:
        raise FIAArgumentError("atten_mask", "dtype must be bool, int8 or uint8 (1 = masked out) (spec 6.1)", mask)
    batch = len(plans_q)
    q_lens = [q[2] for q in plans_q]
    for b, (lq, (_, _, lkv)) in enumerate(zip(q_lens, plans_kv, strict=True)):
        if lq > lkv:
            raise FIAArgumentError("sparse_mode + actual_seq_kvlen", f"the tree mask needs L_q <= L_kv per batch; "
                                   f"batch {b} has L_q={lq}, L_kv={lkv} (spec 6.6)", (lq, lkv))
    if layout.packed:
        total = sum(n * n for n in q_lens)
        if mask.dim() != 1 or mask.numel() != total:
            raise FIAArgumentError("atten_mask", f"a TND tree mask is 1-D, the per-batch L_q x L_q masks "
                                   f"concatenated: sum L_q^2 = {total} elements (spec 6.6, 25.1)", mask)
        offsets = [sum(n * n for n in q_lens[:b]) for b in range(batch)]
        trees = [mask[o:o + n * n].view(n, n) for o, n in zip(offsets, q_lens, strict=True)]
    else:
        s_q = call.query.shape[layout.query.index("S")]
        if tuple(mask.shape) != (batch, s_q, s_q):
            raise FIAArgumentError("atten_mask", f"a tree mask is (B, S_q, S_q) = {(batch, s_q, s_q)} for "
                                   f"{layout.query} (spec 6.6, 25.1)", mask)
        trees = [mask[b, :n, :n] for b, n in enumerate(q_lens)]
    plane = torch.ones(batch, q_axis, kv_axis, dtype=torch.bool, device=mask.device)
    for b, (tree, (_, _, lkv)) in enumerate(zip(trees, plans_kv, strict=True)):
        plane[b, :q_lens[b]] = tree_visibility(tree, q_lens[b], lkv, kv_axis)
    return plane


def _check_band_per_batch(mode: int, pre: int, nxt: int, q_len: int, kv_len: int, has_mask: bool,
                          decode: bool, b: int) -> None:
    """Per-batch pre/next rules of spec 6.3 (kv_len includes the prefix)."""
    if decode or q_len == 0:
        return
    if mode == 0 and has_mask:
        if pre <= -kv_len:
            raise FIAArgumentError("pre_tokens", f"with sparse_mode 0 and a mask, must be > -(L_kv + P) = "
                                   f"{-kv_len} (batch {b}) (spec 6.3)", pre)
        if nxt < 0 and -nxt >= q_len:
            raise FIAArgumentError("next_tokens", f"a negative next_tokens must satisfy |next| < L_q = {q_len} "
                                   f"(batch {b}) (spec 6.3)", nxt)
    if mode == 4:
        if pre <= -q_len:
            raise FIAArgumentError("pre_tokens", f"sparse_mode 4 needs pre_tokens > -L_q = {-q_len} (batch {b}) "
                                   "(spec 6.3)", pre)
        if nxt <= -kv_len:
            raise FIAArgumentError("next_tokens", f"sparse_mode 4 needs next_tokens > -(L_kv + P) = {-kv_len} "
                                   f"(batch {b}) (spec 6.3)", nxt)
        if pre + nxt < 0:
            raise FIAArgumentError("pre_tokens + next_tokens", "sparse_mode 4 needs pre + next >= 0 (spec 6.3)",
                                   (pre, nxt))


def _check_mask(call: FIACall, layout: Layout, batch: int, q_axis: int, kv_axis: int, decode: bool, rope: bool,
                head_dim: int, value_dim: int, paged_kv: bool) -> torch.Tensor | None:
    """Validate atten_mask; return it as (B|1, S_q', S_kv') or, for decode, (B|1, S_kv') bool, or None."""
    o = call.options
    mask, mode = o["atten_mask"], o["sparse_mode"]
    if mask is None or mode == TREE_MODE:
        return None  # the tree mask is read by _tree_mask
    if not isinstance(mask, torch.Tensor) or mask.dtype not in MASK_DTYPES:
        raise FIAArgumentError("atten_mask", "dtype must be bool, int8 or uint8 (True/1 = masked out) "
                               "(spec 6.1)", mask)
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise FIAArgumentError("atten_mask", "int8/uint8 masks must hold only 0 and 1 (spec 6.1)", mask)
    if mode in (2, 3, 4):
        size = COMPRESSED_MASK_SIZE
        if tuple(mask.shape) not in ((size, size), (1, size, size), (1, 1, size, size)):
            raise FIAArgumentError("atten_mask", f"sparse_mode {mode} needs the compressed ({size}, {size}) mask, "
                                   f"optionally with leading 1-dims (spec 6.4)", mask,
                                   hint="use fia_kit.masks.compressed_causal_mask()", **_ids("FIA-MASK-006"))
        if not is_compressed_causal_mask(mask):
            raise FIAArgumentError("atten_mask", f"sparse_mode {mode} needs exactly "
                                   f"torch.triu(torch.ones({size}, {size}), diagonal=1) (1 above the diagonal) "
                                   "(spec 6.4)", mask, hint="use fia_kit.masks.compressed_causal_mask()")
        return None
    mask = mask.to(torch.bool)
    if decode:
        plane = _decode_mask(mask, batch)
    else:
        plane = _prefill_mask(mask, layout, batch, rope, head_dim, value_dim)
        if plane.shape[1] < q_axis:
            raise FIAArgumentError("atten_mask", f"its query axis must be at least S_q = {q_axis} (spec 6.2)", mask)
    if plane.shape[-1] < kv_axis:
        what = "block_table.shape[1] * block_size" if paged_kv else "S_kv (+ prefix length)"
        raise FIAArgumentError("atten_mask", f"its key axis must be at least {what} = {kv_axis} (spec 6.2)", mask)
    return plane


def _prefill_mask(mask: torch.Tensor, layout: Layout, batch: int, rope: bool, head_dim: int,
                  value_dim: int) -> torch.Tensor:
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise FIAArgumentError("atten_mask", "a 4-D mask is (B or 1, 1, S_q, S_kv): the mask has no head "
                                   "axis (spec 6.1)", mask)
        mask = mask[:, 0]
    if mask.dim() == 2:
        two_d_ok = layout.name in ("BSH", "BSND", "BNSD", "BNSD_BSND") and not rope and head_dim == value_dim
        if not two_d_ok:
            raise FIAArgumentError("atten_mask", "a 2-D (S_q, S_kv) mask is only accepted for BSH/BSND/BNSD/"
                                   "BNSD_BSND without rope and with equal Q/K/V D; use (B, S_q, S_kv) or "
                                   "(B, 1, S_q, S_kv) (spec 6.2)", mask)
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[0] not in (1, batch):
        raise FIAArgumentError("atten_mask", f"must be (B, 1, S_q, S_kv), (1, 1, S_q, S_kv), (B, S_q, S_kv) or "
                               f"(1, S_q, S_kv) with B = {batch} (spec 6.2)", mask)
    return mask


def _decode_mask(mask: torch.Tensor, batch: int) -> torch.Tensor:
    if mask.dim() not in (2, 3, 4) or mask.shape[0] not in (1, batch) or any(s != 1 for s in mask.shape[1:-1]):
        raise FIAArgumentError("atten_mask", f"with S_q == 1 the mask is (B, S_kv), (B, 1, S_kv) or "
                               f"(B, 1, 1, S_kv), with B = {batch} or 1; it has no head axis (spec 6.2, 6.5)", mask)
    return mask.reshape(mask.shape[0], mask.shape[-1])


def _check_pse(call: FIACall, layout: Layout, batch: int, num_heads: int, q_axis: int, kv_axis: int,
               decode: bool, rope: bool, qk_v_differ: bool) -> torch.Tensor | None:
    pse = call.options["pse_shift"]
    if pse is None:
        return None
    if qk_v_differ:
        raise FIAArgumentError("pse_shift", "cannot be combined with a Q/K head dim different from V's (spec 9)",
                               "given", **_ids("FIA-PSE-003"))
    if rope:
        raise FIAArgumentError("pse_shift", "cannot be combined with MLA rope (spec 9)", "query_rope given",
                               **_ids("FIA-PSE-001"))
    if layout.packed or layout.name in ("BSH_BNSD", "BSND_BNSD"):
        raise FIAArgumentError("pse_shift", "cannot be combined with BSH_BNSD, BSND_BNSD or packed (TND-family) "
                               "layouts (spec 9)", layout.name, **_ids("FIA-PSE-002"))
    q = call.query
    ok = (pse.dtype == torch.float16) if q.dtype == torch.int8 else \
        (pse.dtype == q.dtype) if (decode or q.dtype not in OP_FLOAT_DTYPES) else \
        (pse.dtype in OP_FLOAT_DTYPES and pse.dtype == q.dtype)
    if not ok:
        raise FIAArgumentError("pse_shift", f"dtype must match the query's ({q.dtype}): float16 pse with a float16 "
                               "query, bfloat16 with bfloat16 (spec 9)", pse)
    if pse.dim() != 4 or pse.shape[0] not in (1, batch) or pse.shape[1] != num_heads:
        raise FIAArgumentError("pse_shift", f"must be (B or 1, N_q={num_heads}, S_q, S_kv): it has a per-head "
                               "axis and is not broadcast over heads (spec 9)", pse)
    if pse.shape[2] < (1 if decode else q_axis) or pse.shape[3] < kv_axis:
        raise FIAArgumentError("pse_shift", f"its last two axes must be at least ({1 if decode else q_axis}, "
                               f"{kv_axis}) (S_q, S_kv + prefix, or the paged capacity) (spec 9)", pse)
    return pse


def _check_sink(call: FIACall, layout: Layout, num_heads: int, head_dim: int, value_dim: int,
                pse: torch.Tensor | None, route: str) -> torch.Tensor | None:
    """learnable_sink (spec 13); on the FIA route also the A2/A3 sink checker (learnable_sink_checker.cpp)."""
    sink = call.options.get("learnable_sink")
    if sink is None:
        return None
    if layout.name not in ("TND", "NTD_TND"):
        raise FIAArgumentError("learnable_sink", "needs input_layout TND or NTD_TND (spec 13)", layout.name)
    fia_route = route == "fia"
    allowed = (call.query.dtype,) if call.query.dtype not in OP_FLOAT_DTYPES or route == "split-fuse" else \
        (torch.bfloat16,) if fia_route else (torch.bfloat16, torch.float16)
    if not isinstance(sink, torch.Tensor) or sink.shape != (num_heads,) or sink.dtype not in allowed:
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        rule_id = {"fia": "FIA-SINK-001", "split-fuse": "SF-SINK-001"}.get(route)
        raise FIAArgumentError("learnable_sink", f"must be a ({num_heads},) {names} tensor, one logit per query "
                               f"head (spec 13; on A2/A3 bfloat16 on the FIA route, the query's dtype on the "
                               f"split-fuse route)", sink, **(_ids(rule_id) if rule_id else {}))
    if value_dim > 128:
        raise FIAArgumentError("learnable_sink", "needs value head dim <= 128 (spec 13)", value_dim,
                               **_ids("FIA-SINK-004"))
    op_dtype = call.query.dtype in OP_FLOAT_DTYPES  # float32/64 examples keep any D, as for TND (tnd_head_dims)
    if fia_route and op_dtype and (head_dim not in (64, 128, 192) or value_dim not in (64, 128)):
        raise FIAArgumentError("learnable_sink", f"on the FIA route needs Q/K D in {{64, 128, 192}} and V D in "
                               f"{{64, 128}} (got {head_dim}/{value_dim}) (spec 13)", (head_dim, value_dim),
                               **_ids("FIA-SINK-004"))
    if pse is not None:
        raise FIAArgumentError("learnable_sink + pse_shift", "cannot be combined (spec 13)", "both given")
    if route in ("fia", "split-fuse") and call.options["inner_precise"] != 0:
        rule_id = "FIA-SINK-003" if fia_route else "SF-SINK-002"
        raise FIAArgumentError("learnable_sink + inner_precise", f"on the {route} route the sink needs "
                               "inner_precise 0 (spec 13)", call.options["inner_precise"], **_ids(rule_id))
    return sink


def _check_inner_precise(value: object, route: str) -> int:
    """0-3 (spec 7); the legacy incremental route takes 0/1 only (IFA-PREC-001). The FIA route also takes S_q = 1
    with 2/3 (its checker allows [0, 4]; 4 has no documented meaning and stays refused)."""
    allowed = (0, 1) if route == "legacy-ifa" else (0, 1, 2, 3)
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        where = " on the legacy-ifa route (quantised or D 256 MHA decode)" if route == "legacy-ifa" else ""
        raise FIAArgumentError("inner_precise", f"must be one of {allowed}{where} (spec 7)", value,
                               **(_ids("IFA-PREC-001") if route == "legacy-ifa" and value in (2, 3) else {}))
    return value


def _check_scale(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FIAArgumentError(name, "must be a finite float (pass 1/sqrt(D) yourself: the default is 1.0) "
                               "(spec 18.5)", value)
    return float(value)


def _check_lse_flag(value: object, rope: bool, head_dim: int, value_dim: int, route: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise FIAArgumentError(name, "must be a bool", value)
    if value and rope and head_dim == 512 and not targets.rule("mla_d512_lse"):
        raise targets.refuse(name, "mla_d512_lse", "MLA with D=512 does not return softmax_lse", value)
    if value and route == "fia" and not rope and head_dim != value_dim and (head_dim, value_dim) != (192, 128):
        raise FIAArgumentError(name, f"must be False when Q/K D ({head_dim}) differs from V D ({value_dim}) "
                               "without rope (spec 8)", value, **_ids("FIA-LSE-001"))
    return value  # MLA D=512: accepted, vllm-ascend's context-parallel MLA decode uses it (spec 25.1)


def plan(target: Any, query: torch.Tensor | None = None, key: torch.Tensor | None = None,
         value: torch.Tensor | None = None, /, **kwargs: Any) -> Plan:
    """Parse and validate a call once; every backend, figure, lint and profile takes the returned plan.

        p = fia_kit.plan("v1", q, k, v, num_heads=8, input_layout="BNSD", ...)   # a form and the op's arguments
        p = fia_kit.plan(case)              # a fia_kit.case.Case in its natural form ("v2" when it uses sinks)
        p = fia_kit.plan(case, form="v2")   # ... or in a given form; a parsed FIACall, a built call, a Plan (as is)

    Forms are ``fia_kit.signatures.FORMS``: "v1", "v2", "torchair-v1", "torchair-v2" (lengths as int64 tensors).
    Raises FIAArgumentError before any compute when the call breaks a rule of the op, or for a bad form.
    """
    from .call import parse_call

    if isinstance(target, str):
        return build_plan(parse_call(target, query, key, value, kwargs))
    form = kwargs.pop("form", None)
    if query is not None or kwargs:
        raise FIAArgumentError("target", "takes tensors and keywords only after a form name ('v1', 'v2', ...)",
                               type(target).__name__)
    if form is not None:
        if not callable(getattr(target, "build", None)):
            raise FIAArgumentError("form", "picks the form a case is built in; this target already has one",
                                   type(target).__name__)
        return build_plan(target.build(form).to_fia_call())
    if isinstance(target, Plan):
        return target
    if isinstance(target, FIACall):
        return build_plan(target)
    if callable(getattr(target, "to_fia_call", None)):
        return build_plan(target.to_fia_call())
    raise FIAArgumentError("target", "must be a form name, a Plan, a parsed call or a case",
                           type(target).__name__)
