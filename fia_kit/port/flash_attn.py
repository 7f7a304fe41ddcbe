"""flash-attn's three inference entry points -> FIA, and their float64 contracts (``contracts``).

    flash_attn_func(q (B, S_q, H, D), k (B, S_k, H_kv, D), v, dropout_p=0.0, softmax_scale=None, causal=False,
        window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)
    flash_attn_varlen_func(q (total_q, H, D), k (total_k, H_kv, D), v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k, ..., block_table=None)
    flash_attn_with_kvcache(q (B, S_q, H, D), k_cache, v_cache, ..., cache_seqlens=None, block_table=None,
        softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
        return_softmax_lse=False)

Signatures: Dao-AILab/flash-attention @ 0251105a, flash_attn/flash_attn_interface.py:1156, 1391, 1485.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FIAArgumentError
from . import contracts
from .common import (
    Translation,
    default_scale,
    lengths_from_cumulative,
    no_key_as,
    pse_dtype,
    tensor,
    untranslatable,
    window_band,
)

FUNC = "flash_attn.flash_attn_func"
VARLEN = "flash_attn.flash_attn_varlen_func"
KVCACHE = "flash_attn.flash_attn_with_kvcache"


def func_signature(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                   softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn_func (flash_attn_interface.py:1156)."""


def varlen_signature(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                     softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                     deterministic=False, return_attn_probs=False, block_table=None):
    """flash_attn_varlen_func (flash_attn_interface.py:1391)."""


def kvcache_signature(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                      cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                      softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                      alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """flash_attn_with_kvcache (flash_attn_interface.py:1485)."""


def _refuse_common(a: dict[str, Any]) -> None:
    if a.get("dropout_p"):
        raise untranslatable("dropout_p", "FIA is inference only and never drops probabilities; pass 0.0",
                             a["dropout_p"])
    if a["softcap"]:
        raise untranslatable("softcap", "FIA has no logit soft-capping (softcap * tanh(s / softcap)); it would "
                             "need a non-additive score transform", a["softcap"])


def _window(a: dict[str, Any]) -> tuple[int, int]:
    w = a["window_size"]
    if not isinstance(w, (tuple, list)) or len(w) != 2:
        raise FIAArgumentError("window_size", "must be a pair (left, right), -1 = unbounded", w)
    return int(w[0]), int(w[1])


def _alibi_pse(slopes: torch.Tensor, q: torch.Tensor, q_len: int, kv_lens: list[int], width: int,
               notes: list[str]) -> torch.Tensor:
    """(B|1, H, S_q, width) pse: -slope * abs(i + L_k[b] - S_q - j), 0 past each batch's keys."""
    per_batch = slopes.dim() == 2
    i = torch.arange(q_len, dtype=torch.float64)[:, None]
    j = torch.arange(width, dtype=torch.float64)[None, :]
    planes = []
    for b, n in enumerate(kv_lens if per_batch or len(set(kv_lens)) > 1 else kv_lens[:1]):
        s = (slopes[b] if per_batch else slopes).double()
        planes.append(-s[:, None, None] * (i + n - q_len - j).abs())
    pse = torch.stack(planes).to(device=q.device, dtype=pse_dtype(q))
    notes.append(f"alibi_slopes {tuple(slopes.shape)} -> pse_shift {tuple(pse.shape)} "
                 f"{str(pse.dtype).removeprefix('torch.')} = -slope * |i + S_k - S_q - j| (rounded to the query's "
                 "dtype for float16/bfloat16)")
    return pse


def _alibi_lse_shift(a: dict[str, Any], slopes: torch.Tensor, q_len: int, kv_lens: list[int], seqlen_k: int,
                     notes: list[str]) -> torch.Tensor | None:
    """(B, H, S_q) to add to FIA's LSE where flash-attn's causal kernel adds slope * j, not the docstring's
    -slope * |i + S_k - S_q - j| (the pse FIA gets): slope * (i + L_k[b] - S_q); None off that path."""
    left, right = _window(a)
    if not contracts.flash_attn_kernel_causal(a["causal"], left, right, seqlen_k):
        return None
    i = torch.arange(q_len, dtype=torch.float64)
    per_batch = slopes.double() if slopes.dim() == 2 else slopes.double().expand(len(kv_lens), -1)
    notes.append("alibi_slopes on flash-attn's causal kernel: it adds slope * j (csrc mask.h), so its LSE is FIA's "
                 "plus slope * (i + S_k - S_q); lse_to_source adds that")
    return torch.stack([s[:, None] * (i + n - q_len)[None, :] for s, n in zip(per_batch, kv_lens, strict=True)])


def _lse_note(notes: list[str], shape: str) -> None:
    notes.append(f"softmax_lse: FIA's -> flash-attn's {shape}, natural log both (rows without keys: +inf both)")


def translate_func(a: dict[str, Any]) -> Translation:
    q, k, v = tensor(a, "q", 4), tensor(a, "k", 4), tensor(a, "v", 4)
    _refuse_common(a)
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    kw: dict[str, Any] = {"input_layout": "BSND", "num_heads": q.shape[2], "num_key_value_heads": k.shape[2]}
    notes.append("q/k/v (B, S, H, D) -> input_layout='BSND' (the same axes)")
    kw["scale"] = default_scale(a["softmax_scale"], q.shape[-1], "softmax_scale", notes)
    left, right = _window(a)
    kw.update(window_band(left, right, a["causal"], "causal/window_size", notes))
    shift = None
    if a["alibi_slopes"] is not None:
        lengths = [k.shape[1]] * q.shape[0]
        kw["pse_shift"] = _alibi_pse(a["alibi_slopes"], q, q.shape[1], lengths, k.shape[1], notes)
        derived["pse_shift"] = pse_dtype(q)
        shift = _alibi_lse_shift(a, a["alibi_slopes"], q.shape[1], lengths, k.shape[1], notes)
    lse = None
    if a["return_attn_probs"]:
        kw["softmax_lse_flag"] = True
        _lse_note(notes, "(B, H, S_q)")
        notes.append("return_attn_probs: S_dmask (the probabilities) has no FIA counterpart and is not returned")
        lse = _lse_back(shift)
    return Translation("v1", q, k, v, kw, notes, lse_to_source=lse, derived=derived)


def translate_varlen(a: dict[str, Any]) -> Translation:
    q = tensor(a, "q", 3)
    k, v = tensor(a, "k", (3, 4)), tensor(a, "v", (3, 4))
    _refuse_common(a)
    notes: list[str] = []
    kw: dict[str, Any] = {"input_layout": "TND", "num_heads": q.shape[1]}
    kw["actual_seq_lengths"] = lengths_from_cumulative("cu_seqlens_q", a["cu_seqlens_q"], q.shape[0])
    notes.append(f"cu_seqlens_q {_as_list(a['cu_seqlens_q'])} -> actual_seq_lengths {kw['actual_seq_lengths']} "
                 "(cumulative without the leading 0)")
    if a["block_table"] is not None:
        lengths = _paged_lengths(a)
        kw.update(_paged(k, v, a["block_table"], notes))
        kw["actual_seq_lengths_kv"] = lengths
        notes.append(f"cu_seqlens_k {_as_list(a['cu_seqlens_k'])} -> actual_seq_lengths_kv {lengths}: PER-BATCH "
                     "lengths with a paged cache, even in TND (spec 5.2, 11)")
        key, value = kw.pop("key"), kw.pop("value")
    else:
        kw["actual_seq_lengths_kv"] = lengths_from_cumulative("cu_seqlens_k", a["cu_seqlens_k"], k.shape[0])
        notes.append(f"cu_seqlens_k {_as_list(a['cu_seqlens_k'])} -> actual_seq_lengths_kv "
                     f"{kw['actual_seq_lengths_kv']} (cumulative without the leading 0)")
        kw["num_key_value_heads"] = k.shape[1]
        key, value = k, v
    notes.append("max_seqlen_q/max_seqlen_k: FIA reads the lengths themselves (dropped)")
    kw["scale"] = default_scale(a["softmax_scale"], q.shape[-1], "softmax_scale", notes)
    left, right = _window(a)
    kw.update(window_band(left, right, a["causal"], "causal/window_size", notes))
    if a["alibi_slopes"] is not None:
        raise untranslatable("alibi_slopes", "FIA's pse_shift is not allowed with packed (TND) layouts (spec 9); "
                             "pad the sequences and call flash_attn_func's translation (BSND) instead", "given")
    lse = None
    if a["return_attn_probs"]:
        kw["softmax_lse_flag"] = True
        _lse_note(notes, "(H, total_q): FIA's (T, N, 1) transposed")
        lse = lambda x: no_key_as(x.squeeze(-1).transpose(0, 1), float("inf"))  # noqa: E731
    return Translation("v1", q, key, value, kw, notes, lse_to_source=lse)


def translate_kvcache(a: dict[str, Any]) -> Translation:
    q = tensor(a, "q", 4)
    k_cache, v_cache = tensor(a, "k_cache", 4), tensor(a, "v_cache", 4)
    _refuse_common(a)
    for name, needs in (("k", "FIA reads the cache, it never appends to it: write k/v into the cache first "
                               "(torch_npu.scatter_update / index_copy_) and raise cache_seqlens"),
                        ("v", "as for k: append to the cache first"),
                        ("rotary_cos", "FIA applies no rotary embedding: rotate q and the new keys first"),
                        ("rotary_sin", "FIA applies no rotary embedding: rotate q and the new keys first"),
                        ("cache_batch_idx", "FIA reads batch b's cache at b (or its block_table row): gather "
                                            "the rows, or use a block_table"),
                        ("cache_leftpad", "FIA's kv_padding_size is one pad for all batches with right-aligned "
                                          "keys (spec 15), not a per-batch start")):
        if a[name] is not None:
            raise untranslatable(name, needs, a[name])
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    batch, s_q = q.shape[0], q.shape[1]
    kw: dict[str, Any] = {"input_layout": "BSND", "num_heads": q.shape[2]}
    paged = a["block_table"] is not None
    if paged:
        kw.update(_paged(k_cache, v_cache, a["block_table"], notes))
        key, value = kw.pop("key"), kw.pop("value")
        width = a["block_table"].shape[1] * k_cache.shape[1]
    else:
        if k_cache.shape[0] != batch:
            raise FIAArgumentError("k_cache", "without cache_batch_idx or block_table it must have the query's "
                                   f"batch ({batch}) rows", k_cache)
        kw["num_key_value_heads"] = k_cache.shape[2]
        key, value, width = k_cache, v_cache, k_cache.shape[1]
    seqlens = a["cache_seqlens"]
    if seqlens is None:
        lengths = [width] * batch
    elif isinstance(seqlens, int):
        lengths = [seqlens] * batch
    else:
        lengths = [int(x) for x in seqlens.tolist()]
    kw["actual_seq_lengths_kv"] = lengths
    notes.append(f"cache_seqlens -> actual_seq_lengths_kv {lengths} (per batch)")
    kw["scale"] = default_scale(a["softmax_scale"], q.shape[-1], "softmax_scale", notes)
    left, right = _window(a)
    if s_q == 1:
        kw.update(_decode_window(left, 0 if a["causal"] else right, lengths, width, q.device, notes))
    else:
        kw.update(window_band(left, right, a["causal"], "causal/window_size", notes))
    shift = None
    if a["alibi_slopes"] is not None:
        kw["pse_shift"] = _alibi_pse(a["alibi_slopes"], q, s_q, lengths, width, notes)
        derived["pse_shift"] = pse_dtype(q)
        shift = _alibi_lse_shift(a, a["alibi_slopes"], s_q, lengths, width, notes)
    lse = None
    if a["return_softmax_lse"]:
        kw["softmax_lse_flag"] = True
        _lse_note(notes, "(B, H, S_q)")
        lse = _lse_back(shift)
    return Translation("v1", q, key, value, kw, notes, lse_to_source=lse, derived=derived)


def _lse_back(shift: torch.Tensor | None) -> Any:
    """FIA's (B, N, S_q, 1) LSE as flash-attn's (B, H, S_q), plus the causal-ALiBi shift where there is one; a row
    without keys +inf (softmax.h:180), also where FIA's decode path writes -3.4e38."""
    if shift is None:
        return lambda x: no_key_as(x.squeeze(-1), float("inf"))
    return lambda x: no_key_as(x.squeeze(-1), float("inf")) + shift.to(x)


def _decode_window(left: int, right: int, lengths: list[int], width: int, device: torch.device,
                   notes: list[str]) -> dict[str, Any]:
    """With S_q == 1 FIA ignores sparse modes (spec 6.5): a window becomes a (B, 1, 1, width) decode mask."""
    if left < 0:
        if right >= 0:
            notes.append("causal with S_q == 1: the one row sees every key -> no mask (FIA ignores sparse_mode "
                         "for S_q == 1, spec 6.5)")
        return {}
    j = torch.arange(width, device=device)[None, :]
    last = torch.tensor(lengths, device=device)[:, None] - 1
    hidden = j < last - left
    notes.append(f"window_size left={left} with S_q == 1 -> atten_mask (B, 1, 1, {width}) hiding keys before "
                 "L_kv - 1 - left (sparse modes do not apply to decode, spec 6.5)")
    return {"atten_mask": hidden[:, None, None, :]}


def _paged(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, notes: list[str],
           ) -> dict[str, Any]:
    """flash-attn's (num_blocks, page, H_kv, D) cache as FIA's 3-D BnBsH cache (a reshape, no copy when
    contiguous) with block_table int32 as is."""
    if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2:
        raise FIAArgumentError("block_table", "must be a 2-D (B, max_blocks) tensor", block_table)
    blocks, page, heads, dim = k_cache.shape
    if page % 256:
        raise FIAArgumentError("k_cache", "flash-attn refuses a paged cache whose page_block_size is not a "
                               "multiple of 256 (csrc/flash_attn/flash_api.cpp:613, 1305)", page)
    notes.append(f"paged k_cache (num_blocks, {page}, {heads}, {dim}) -> (num_blocks, {page}, {heads * dim}) "
                 f"(BnBsH), block_size={page}; block_table as int32")
    return {"key": k_cache.reshape(blocks, page, heads * dim),
            "value": v_cache.reshape(blocks, page, heads * v_cache.shape[-1]),
            "block_table": block_table.to(torch.int32), "block_size": page, "num_key_value_heads": heads}


def _paged_lengths(a: dict[str, Any]) -> list[int]:
    values = _as_list(a["cu_seqlens_k"])
    if len(values) < 2 or values[0] != 0:
        raise FIAArgumentError("cu_seqlens_k", "must start at 0 and have batch_size + 1 entries", values)
    return [b - x for x, b in zip(values, values[1:], strict=False)]


def _as_list(x: Any) -> list[int]:
    return [int(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


# ------------------------------------------------------------------------------------------------ contracts

def _finish_lse(lse: torch.Tensor) -> torch.Tensor:
    """flash-attn writes +inf for a row without keys (softmax.h:180)."""
    return lse.masked_fill(torch.isneginf(lse), float("inf"))


def contract_func(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    q, k, v = a["q"], a["k"], a["v"]
    scale = a["softmax_scale"] if a["softmax_scale"] is not None else q.shape[-1] ** -0.5
    left, right = _window(a)
    outs, lses = [], []
    for b in range(q.shape[0]):
        l_q, l_k = q.shape[1], k.shape[1]
        keep = contracts.bottom_right_keep(l_q, l_k, a["causal"], left, right)
        bias = _contract_alibi(a, b, l_q, l_k, l_k)
        o, lse = contracts.attend(q[b].transpose(0, 1), k[b].transpose(0, 1), v[b].transpose(0, 1), scale, keep,
                                  bias)
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    return torch.stack(outs), (_finish_lse(torch.stack(lses)) if a["return_attn_probs"] else None)


def contract_varlen(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    q, k, v = a["q"], a["k"], a["v"]
    cu_q, cu_k = _as_list(a["cu_seqlens_q"]), _as_list(a["cu_seqlens_k"])
    scale = a["softmax_scale"] if a["softmax_scale"] is not None else q.shape[-1] ** -0.5
    left, right = _window(a)
    outs, lses = [], []
    for b in range(len(cu_q) - 1):
        qb = q[cu_q[b]:cu_q[b + 1]].transpose(0, 1)
        l_k = cu_k[b + 1] - cu_k[b]
        if a["block_table"] is not None:
            kb = contracts.pages_to_dense(k, a["block_table"][b], l_k, "NHD")
            vb = contracts.pages_to_dense(v, a["block_table"][b], l_k, "NHD")
        else:
            kb, vb = k[cu_k[b]:cu_k[b + 1]].transpose(0, 1), v[cu_k[b]:cu_k[b + 1]].transpose(0, 1)
        keep = contracts.bottom_right_keep(qb.shape[1], l_k, a["causal"], left, right)
        o, lse = contracts.attend(qb, kb, vb, scale, keep)
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    return torch.cat(outs), (_finish_lse(torch.cat(lses, dim=1)) if a["return_attn_probs"] else None)


def contract_kvcache(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    q, k_cache, v_cache = a["q"], a["k_cache"], a["v_cache"]
    scale = a["softmax_scale"] if a["softmax_scale"] is not None else q.shape[-1] ** -0.5
    left, right = _window(a)
    seqlens = a["cache_seqlens"]
    outs, lses = [], []
    for b in range(q.shape[0]):
        if a["block_table"] is not None:
            full = a["block_table"].shape[1] * k_cache.shape[1]
        else:
            full = k_cache.shape[1]
        l_k = full if seqlens is None else int(seqlens) if isinstance(seqlens, int) else int(seqlens[b])
        if a["block_table"] is not None:
            kb = contracts.pages_to_dense(k_cache, a["block_table"][b], l_k, "NHD")
            vb = contracts.pages_to_dense(v_cache, a["block_table"][b], l_k, "NHD")
        else:
            kb, vb = k_cache[b, :l_k].transpose(0, 1), v_cache[b, :l_k].transpose(0, 1)
        keep = contracts.bottom_right_keep(q.shape[1], l_k, a["causal"], left, right)
        bias = _contract_alibi(a, b, q.shape[1], l_k, full)
        o, lse = contracts.attend(q[b].transpose(0, 1), kb, vb, scale, keep, bias)
        outs.append(o.transpose(0, 1))
        lses.append(lse)
    return torch.stack(outs), (_finish_lse(torch.stack(lses)) if a["return_softmax_lse"] else None)


def _contract_alibi(a: dict[str, Any], b: int, l_q: int, l_k: int, seqlen_k: int) -> torch.Tensor | None:
    slopes = a["alibi_slopes"]
    if slopes is None:
        return None
    causal = contracts.flash_attn_kernel_causal(a["causal"], *_window(a), seqlen_k)
    return contracts.flash_attn_alibi(slopes[b] if slopes.dim() == 2 else slopes, l_q, l_k, causal)
