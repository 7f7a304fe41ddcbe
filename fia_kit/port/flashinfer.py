"""FlashInfer's single prefill and its three batch wrappers -> FIA, and their float64 contracts (``contracts``).

A wrapper call is given as one call: the ``run()`` tensors positionally (q, paged_kv_cache or k, v), the ``plan()``
keywords and the constructor's ``kv_layout`` as keywords:

    port.translate("flashinfer.BatchPrefillWithPagedKVCacheWrapper", q, (k_cache, v_cache), kv_layout="NHD",
                   qo_indptr=..., paged_kv_indptr=..., paged_kv_indices=..., paged_kv_last_page_len=...,
                   num_qo_heads=8, num_kv_heads=2, head_dim_qk=64, page_size=128, causal=True, return_lse=True)

Signatures: flashinfer-ai/flashinfer @ fb28d724, flashinfer/prefill.py:1186 (single), 2120/2696 (paged prefill
plan/run), 3443/4000 (ragged plan/run); flashinfer/decode.py:1280/1851 (decode plan/run).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FIAArgumentError
from . import contracts
from .common import (
    Translation,
    block_table_from_pages,
    default_scale,
    lengths_from_cumulative,
    mask_keywords,
    no_key_as,
    per_batch,
    pse_dtype,
    sink_dtype,
    tensor,
    untranslatable,
    window_band,
)

SINGLE = "flashinfer.single_prefill_with_kv_cache"
PAGED = "flashinfer.BatchPrefillWithPagedKVCacheWrapper"
RAGGED = "flashinfer.BatchPrefillWithRaggedKVCacheWrapper"
DECODE = "flashinfer.BatchDecodeWithPagedKVCacheWrapper"


def single_signature(q, k, v, scale_q=None, scale_k=None, scale_v=None, o_dtype=None, custom_mask=None,
                     packed_custom_mask=None, causal=False, kv_layout="NHD", pos_encoding_mode="NONE",
                     use_fp16_qk_reduction=False, sm_scale=None, window_left=-1, logits_soft_cap=None,
                     rope_scale=None, rope_theta=None, backend="auto", return_lse=False, kv_cache_sf=None,
                     k_scale=None, v_scale=None):
    """single_prefill_with_kv_cache (prefill.py:1186)."""


def paged_signature(q, paged_kv_cache, *, qo_indptr, paged_kv_indptr, paged_kv_indices,
                    paged_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim_qk, page_size, head_dim_vo=None,
                    custom_mask=None, packed_custom_mask=None, causal=False, pos_encoding_mode="NONE",
                    use_fp16_qk_reduction=False, sm_scale=None, window_left=-1, logits_soft_cap=None,
                    rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None, o_data_type=None,
                    non_blocking=True, kv_layout="NHD", return_lse=False, sinks=None, q_scale=None, k_scale=None,
                    v_scale=None):
    """BatchPrefillWithPagedKVCacheWrapper: constructor kv_layout, plan() (prefill.py:2120), run() (2696)."""


def ragged_signature(q, k, v, *, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk,
                     head_dim_vo=None, custom_mask=None, packed_custom_mask=None, causal=False,
                     pos_encoding_mode="NONE", use_fp16_qk_reduction=False, window_left=-1, logits_soft_cap=None,
                     sm_scale=None, rope_scale=None, rope_theta=None, q_data_type="float16", kv_data_type=None,
                     o_data_type=None, non_blocking=True, kv_layout="NHD", return_lse=False):
    """BatchPrefillWithRaggedKVCacheWrapper: constructor kv_layout, plan() (prefill.py:3443), run() (4000)."""


def decode_signature(q, paged_kv_cache, *, indptr, indices, last_page_len, num_qo_heads, num_kv_heads,
                     head_dim, page_size, pos_encoding_mode="NONE", window_left=-1, logits_soft_cap=None,
                     q_data_type="float16", kv_data_type=None, o_data_type=None, sm_scale=None, rope_scale=None,
                     rope_theta=None, non_blocking=True, kv_layout="NHD", return_lse=False, sinks=None):
    """BatchDecodeWithPagedKVCacheWrapper: constructor kv_layout, plan() (decode.py:1280), run() (1851)."""


LOG2E_NOTE = ("return_lse -> softmax_lse_flag=True; FlashInfer's LSE is base 2: FIA's natural-log LSE * log2(e) "
              "(a row without keys: -inf, FIA's sentinel otherwise)")


def _base2(lse: torch.Tensor) -> torch.Tensor:
    """FIA's natural-log LSE in FlashInfer's base 2, rows without keys -inf (its kernels write log2(0) + m)."""
    return no_key_as(lse, float("-inf")) * contracts.LOG2E


def _refuse(a: dict[str, Any]) -> None:
    if a.get("logits_soft_cap"):
        raise untranslatable("logits_soft_cap", "FIA has no soft-capping (cap * tanh(s / cap)); it would need a "
                             "non-additive score transform", a["logits_soft_cap"])
    mode = a.get("pos_encoding_mode", "NONE")
    if mode not in ("NONE", "ALIBI"):
        raise untranslatable("pos_encoding_mode", f"{mode!r}: FIA applies no rotary embedding inside attention; "
                             "rotate q and k first and pass 'NONE'", mode)
    for name in ("scale_q", "scale_k", "scale_v", "q_scale", "k_scale", "v_scale", "kv_cache_sf"):
        if a.get(name) is not None:
            raise untranslatable(name, "FP8/NVFP4 calibration scales: FIA's quantised paths are int8/int4 "
                                 "antiquant (spec 16), a different scheme", a[name])
    if a.get("packed_custom_mask") is not None:
        raise untranslatable("packed_custom_mask", "pass the boolean custom_mask instead; the translation "
                             "inverts it into atten_mask", "given")
    if a.get("kv_layout") not in ("NHD", "HND"):
        raise FIAArgumentError("kv_layout", "must be 'NHD' or 'HND'", a.get("kv_layout"))


def _alibi_note(notes: list[str], pse: torch.Tensor) -> None:
    notes.append(f"pos_encoding_mode='ALIBI' -> pse_shift {tuple(pse.shape)} {str(pse.dtype).removeprefix('torch.')}"
                 " = slope_h * (j - i) with FlashInfer's slopes, after the scale (rounded to the query's dtype for "
                 "float16/bfloat16)")


def translate_single(a: dict[str, Any]) -> Translation:
    q, k, v = tensor(a, "q", 3), tensor(a, "k", 3), tensor(a, "v", 3)
    _refuse(a)
    if a["o_dtype"] not in (None, q.dtype):
        raise untranslatable("o_dtype", "FIA's output has the query's dtype for float queries (spec 4.3)",
                             a["o_dtype"])
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    if a["kv_layout"] == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
        notes.append("kv_layout='HND' (H, S, D) -> transposed views (S, H, D)")
    l_q, l_kv = q.shape[0], k.shape[0]
    query, key, value = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    notes.append("q (qo_len, H, D), k/v (kv_len, H_kv, D) -> BSND with batch 1 (unsqueezed views), so pse and "
                 "masks are allowed")
    kw: dict[str, Any] = {"input_layout": "BSND", "num_heads": q.shape[1], "num_key_value_heads": k.shape[1]}
    kw["scale"] = default_scale(a["sm_scale"], q.shape[-1], "sm_scale", notes)
    window = a["window_left"]
    if a["custom_mask"] is not None:
        keep = a["custom_mask"].to(torch.bool).reshape(1, 1, l_q, l_kv)
        if window >= 0:
            i = torch.arange(l_q, device=keep.device)[:, None] + l_kv - l_q
            keep = keep & (torch.arange(l_kv, device=keep.device)[None, :] >= i - window)
        kw.update(mask_keywords(keep, None, query, q.shape[1], "custom_mask", True, notes, derived))
    else:
        kw.update(window_band(window, -1, a["causal"], "causal/window_left", notes))
    if a["pos_encoding_mode"] == "ALIBI":
        i = torch.arange(l_q, dtype=torch.float64)[:, None]
        j = torch.arange(l_kv, dtype=torch.float64)[None, :]
        slopes = contracts.flashinfer_alibi_slopes(q.shape[1])
        kw["pse_shift"] = (slopes[:, None, None] * (j - i)).unsqueeze(0).to(q.device, pse_dtype(q))
        derived["pse_shift"] = pse_dtype(q)
        _alibi_note(notes, kw["pse_shift"])
    lse = None
    if a["return_lse"]:
        kw["softmax_lse_flag"] = True
        notes.append(LOG2E_NOTE + ", (1, N, S, 1) -> (qo_len, H)")
        lse = lambda x: _base2(x[0, :, :, 0].transpose(0, 1))  # noqa: E731
    return Translation("v1", query, key, value, kw, notes, out_to_source=lambda out: out[0], lse_to_source=lse,
                       derived=derived)


def _split_cache(cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(cache, (tuple, list)) and len(cache) == 2:
        return cache[0], cache[1]
    if isinstance(cache, torch.Tensor) and cache.dim() == 5 and cache.shape[1] == 2:
        return cache[:, 0], cache[:, 1]
    raise FIAArgumentError("paged_kv_cache", "must be (k_cache, v_cache) 4-D tensors or one 5-D "
                           "(pages, 2, ...) tensor", cache)


def _fia_cache(cache: Any, layout: str, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """FIA's paged cache from FlashInfer's: NHD (P, page, H, D) -> 3-D (P, page, H*D); HND (P, H, page, D) is
    FIA's 4-D (P, N, page, D) as is (spec 11)."""
    k, v = _split_cache(cache)
    if k.dim() != 4:
        raise FIAArgumentError("paged_kv_cache", "each of k_cache/v_cache must be 4-D", k)
    if layout == "HND":
        notes.append("kv_layout='HND' (pages, H_kv, page, D) -> FIA's 4-D paged cache as is")
        return k, v, k.shape[1]
    pages, page, heads, dim = k.shape
    notes.append(f"kv_layout='NHD' (pages, {page}, {heads}, {dim}) -> FIA's 3-D paged cache (pages, {page}, "
                 f"{heads * dim})")
    return k.reshape(pages, page, heads * dim), v.reshape(pages, page, heads * v.shape[-1]), heads


def _head_major(key: torch.Tensor, value: torch.Tensor, heads: int, notes: list[str],
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-D (P, page, H*D) cache as FIA's 4-D (P, H, page, D) view. A rope-less TND call on a 3-D cache takes the
    split-fuse route on A2/A3, which refuses a free mask under sparse_mode 0 (SF-MASK-003, docs/rules.md); the
    4-D cache takes the FIA route, which reads one."""
    pages, page, width = key.shape
    views = tuple(t.view(pages, page, heads, t.shape[-1] // heads).transpose(1, 2) for t in (key, value))
    notes.append(f"custom_mask: the cache as FIA's 4-D (pages, {heads}, {page}, D) view, so the call takes the FIA "
                 "route (a 3-D cache takes split-fuse, which refuses a free mask); on the NPU pass it .contiguous()")
    return views[0], views[1]


def _paged_table(a: dict[str, Any], indptr: str, indices: str, last: str, notes: list[str],
                 ) -> tuple[torch.Tensor, list[int]]:
    table, lengths = block_table_from_pages(a[indptr], a[indices], a[last], a["page_size"])
    notes.append(f"{indptr}/{indices}/{last} (CSR pages) -> block_table {tuple(table.shape)} int32 padded with 0, "
                 f"actual_seq_lengths_kv {lengths} (per batch: (pages - 1) * page_size + last_page_len)")
    return table, lengths


def _batch_mask(a: dict[str, Any], q_lens: list[int], kv_lens: list[int], width: int, device: torch.device,
                ) -> torch.Tensor:
    """FlashInfer's flattened per-request custom_mask (True = keep) -> (B, 1, max L_q, width) keep planes."""
    flat = a["custom_mask"].to(torch.bool).reshape(-1)
    if flat.numel() != sum(x * y for x, y in zip(q_lens, kv_lens, strict=True)):
        raise FIAArgumentError("custom_mask", "must hold sum(q_len[i] * kv_len[i]) entries", a["custom_mask"])
    keep = torch.zeros(len(q_lens), 1, max(q_lens), width, dtype=torch.bool, device=device)
    offset = 0
    for b, (lq, lk) in enumerate(zip(q_lens, kv_lens, strict=True)):
        keep[b, 0, :lq, :lk] = flat[offset:offset + lq * lk].view(lq, lk)
        offset += lq * lk
    return keep


def _prefill_common(a: dict[str, Any], q: torch.Tensor, q_lens: list[int], kv_lens: list[int], width: int,
                    kw: dict[str, Any], notes: list[str], derived: dict[str, torch.dtype]) -> Translation:
    kw["scale"] = default_scale(a["sm_scale"], q.shape[-1], "sm_scale", notes)
    if a["custom_mask"] is not None:
        if a["window_left"] >= 0:
            raise untranslatable("custom_mask + window_left", "combine the window into custom_mask first", "both")
        keep = _batch_mask(a, q_lens, kv_lens, width, q.device)
        kw.update(mask_keywords(keep, None, q, q.shape[1], "custom_mask", False, notes, derived, q_lens=q_lens))
    else:
        kw.update(window_band(a["window_left"], -1, a["causal"], "causal/window_left", notes))
    if a["pos_encoding_mode"] == "ALIBI":
        raise untranslatable("pos_encoding_mode", "'ALIBI' needs FIA's pse_shift, which packed (TND) layouts do "
                             "not allow (spec 9); use single_prefill per request (BSND)", "ALIBI")
    form = "v1"
    sinks = a.get("sinks")
    if sinks is not None:
        dtype = sink_dtype(q, kw)
        kw["learnable_sink"] = sinks.to(dtype)
        derived["learnable_sink"] = dtype
        form = "v2"
        notes.append(f"sinks ({q.shape[1]},) -> v2 learnable_sink {str(dtype).removeprefix('torch.')} "
                     "(one unscaled logit per head in the denominator, spec 13)")
    lse = None
    if a["return_lse"]:
        kw["softmax_lse_flag"] = True
        notes.append(LOG2E_NOTE + ", (T, N, 1) -> (T, H)")
        lse = lambda x: _base2(x.squeeze(-1))  # noqa: E731
        if sinks is not None:
            notes.append("sinks + return_lse: FIA's LSE leaves the sink out (spec 8, 13), FlashInfer's includes it "
                         "(its sink variant updates m and d before writing the LSE): lse_to_source adds it back")
            lse = lambda x: _with_sink(x.squeeze(-1), sinks) * contracts.LOG2E  # noqa: E731
    return Translation(form, q, kw.pop("key"), kw.pop("value"), kw, notes, lse_to_source=lse, derived=derived)


def _with_sink(lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """(T, N) natural-log LSE with each head's sink logit added to the sum; FIA's no-key sentinels (+inf on the
    prefill path, -3.4e38 on decode) count as an empty sum, so such a row's LSE is the sink."""
    return torch.logaddexp(no_key_as(lse, float("-inf")), sinks.to(lse)[None, :])


def translate_paged(a: dict[str, Any]) -> Translation:
    q = tensor(a, "q", 3)
    _refuse(a)
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    key, value, heads = _fia_cache(a["paged_kv_cache"], a["kv_layout"], notes)
    if a["custom_mask"] is not None and key.dim() == 3:
        key, value = _head_major(key, value, heads, notes)
    table, kv_lens = _paged_table(a, "paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len", notes)
    q_cum = lengths_from_cumulative("qo_indptr", a["qo_indptr"], q.shape[0])
    notes.append(f"qo_indptr -> actual_seq_lengths {q_cum} (cumulative without the leading 0)")
    kw: dict[str, Any] = {"input_layout": "TND", "num_heads": q.shape[1], "num_key_value_heads": heads,
                          "key": key, "value": value, "block_table": table, "block_size": a["page_size"],
                          "actual_seq_lengths": q_cum, "actual_seq_lengths_kv": kv_lens}
    return _prefill_common(a, q, per_batch(q_cum), kv_lens, table.shape[1] * a["page_size"], kw, notes, derived)


def translate_ragged(a: dict[str, Any]) -> Translation:
    q, k, v = tensor(a, "q", 3), tensor(a, "k", 3), tensor(a, "v", 3)
    _refuse(a)
    notes: list[str] = []
    if a["kv_layout"] == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
        notes.append("kv_layout='HND' (H, T, D) -> transposed views (T, H, D)")
    q_cum = lengths_from_cumulative("qo_indptr", a["qo_indptr"], q.shape[0])
    kv_cum = lengths_from_cumulative("kv_indptr", a["kv_indptr"], k.shape[0])
    notes.append(f"qo_indptr/kv_indptr -> actual_seq_lengths {q_cum} / actual_seq_lengths_kv {kv_cum} (cumulative "
                 "without the leading 0)")
    kw: dict[str, Any] = {"input_layout": "TND", "num_heads": q.shape[1], "num_key_value_heads": k.shape[1],
                          "key": k, "value": v, "actual_seq_lengths": q_cum, "actual_seq_lengths_kv": kv_cum}
    kv_lens = per_batch(kv_cum)
    return _prefill_common(a, q, per_batch(q_cum), kv_lens, max(kv_lens), kw, notes, {})


def translate_decode(a: dict[str, Any]) -> Translation:
    q = tensor(a, "q", 3)
    _refuse(a)
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    key, value, heads = _fia_cache(a["paged_kv_cache"], a["kv_layout"], notes)
    table, kv_lens = _paged_table(a, "indptr", "indices", "last_page_len", notes)
    width = table.shape[1] * a["page_size"]
    query = q.unsqueeze(1)
    notes.append("q (B, H, D) -> BSND (B, 1, H, D) (an unsqueezed view): the decode path, S_q == 1")
    kw: dict[str, Any] = {"input_layout": "BSND", "num_heads": q.shape[1], "num_key_value_heads": heads,
                          "block_table": table, "block_size": a["page_size"], "actual_seq_lengths_kv": kv_lens}
    kw["scale"] = default_scale(a["sm_scale"], q.shape[-1], "sm_scale", notes)
    j = torch.arange(width, device=q.device)[None, :]
    last = torch.tensor(kv_lens, device=q.device)[:, None] - 1
    if a["window_left"] >= 0:
        kw["atten_mask"] = (j < last - a["window_left"])[:, None, None, :]
        notes.append(f"window_left={a['window_left']} -> atten_mask (B, 1, 1, {width}) hiding keys before "
                     "L_kv - 1 - window_left (sparse modes do not apply to decode, spec 6.5)")
    shift = None
    if a["pos_encoding_mode"] == "ALIBI":
        slopes = contracts.flashinfer_alibi_slopes(q.shape[1]).to(q.device)
        kw["pse_shift"] = (slopes[None, :, None] * (j - last).double()[:, None, :]).unsqueeze(2).to(pse_dtype(q))
        derived["pse_shift"] = pse_dtype(q)
        _alibi_note(notes, kw["pse_shift"])
        shift = slopes[None, :] * last.double()  # (B, H): FlashInfer's decode bias is slope * j (decode.cuh:91)
        notes.append("ALiBi on decode: the pse is slope * (j - (L_kv - 1)), small where it matters; FlashInfer adds "
                     "slope * j, which only shifts the LSE: lse_to_source adds slope * (L_kv - 1) back")
    if a.get("sinks") is not None:
        raise untranslatable("sinks", "FIA's learnable_sink needs the TND layout (spec 13); decode with sinks "
                             "has to go through BatchPrefillWithPagedKVCacheWrapper's translation (q_len 1 per "
                             "request)", "given")
    lse = None
    if a["return_lse"]:
        kw["softmax_lse_flag"] = True
        notes.append(LOG2E_NOTE + ", (B, N, 1, 1) -> (B, H)")
        lse = lambda x: _base2(x[:, :, 0, 0] + (0 if shift is None else shift.to(x)))  # noqa: E731
    return Translation("v1", query, key, value, kw, notes, out_to_source=lambda out: out[:, 0], lse_to_source=lse,
                       derived=derived)


# ------------------------------------------------------------------------------------------------ contracts

def _to_base2(lse: torch.Tensor) -> torch.Tensor:
    return lse * contracts.LOG2E


def contract_single(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    q, k, v = a["q"], a["k"], a["v"]
    if a["kv_layout"] == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    scale = a["sm_scale"] if a["sm_scale"] is not None else q.shape[-1] ** -0.5
    l_q, l_kv = q.shape[0], k.shape[0]
    keep = contracts.flashinfer_keep(l_q, l_kv, a["causal"], a["window_left"], a["custom_mask"])
    bias = contracts.flashinfer_alibi(q.shape[1], l_q, l_kv) if a["pos_encoding_mode"] == "ALIBI" else None
    o, lse = contracts.attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale, keep, bias)
    return o.transpose(0, 1), (_to_base2(lse).transpose(0, 1) if a["return_lse"] else None)


def _contract_batch(a: dict[str, Any], q: torch.Tensor, q_cum: list[int], keys: list[tuple[torch.Tensor,
                    torch.Tensor]], decode: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale = a["sm_scale"] if a["sm_scale"] is not None else q.shape[-1] ** -0.5
    outs, lses, mask_offset = [], [], 0
    sinks = a.get("sinks")
    for b, (kb, vb) in enumerate(keys):
        qb = q[q_cum[b]:q_cum[b + 1]].transpose(0, 1)
        l_q, l_kv = qb.shape[1], kb.shape[1]
        custom = a.get("custom_mask")
        if custom is not None:
            custom = custom.reshape(-1)[mask_offset:mask_offset + l_q * l_kv]
            mask_offset += l_q * l_kv
        keep = contracts.flashinfer_keep(l_q, l_kv, a.get("causal", False), a["window_left"], custom, decode)
        bias = contracts.flashinfer_alibi(q.shape[1], l_q, l_kv) if a["pos_encoding_mode"] == "ALIBI" else None
        o, lse = contracts.attend(qb, kb, vb, scale, keep, bias, sinks)
        if sinks is not None:  # FlashInfer's LSE includes the sink (flashinfer/jit/attention/variants.py:38-46)
            lse = torch.logaddexp(lse, sinks.double()[:, None].expand_as(lse))
        outs.append(o.transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs), (_to_base2(torch.cat(lses)) if a["return_lse"] else None)


def _paged_keys(a: dict[str, Any], indptr: str, indices: str, last: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    k, v = _split_cache(a["paged_kv_cache"])
    ptr = [int(x) for x in a[indptr].tolist()]
    keys = []
    for b in range(len(ptr) - 1):
        pages = a[indices][ptr[b]:ptr[b + 1]]
        length = (len(pages) - 1) * a["page_size"] + int(a[last][b]) if len(pages) else 0
        keys.append((contracts.pages_to_dense(k, pages, length, a["kv_layout"]),
                     contracts.pages_to_dense(v, pages, length, a["kv_layout"])))
    return keys


def contract_paged(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    keys = _paged_keys(a, "paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len")
    return _contract_batch(a, a["q"], [int(x) for x in a["qo_indptr"].tolist()], keys, False)


def contract_ragged(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    k, v = a["k"], a["v"]
    if a["kv_layout"] == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    ptr = [int(x) for x in a["kv_indptr"].tolist()]
    keys = [(k[ptr[b]:ptr[b + 1]].transpose(0, 1), v[ptr[b]:ptr[b + 1]].transpose(0, 1))
            for b in range(len(ptr) - 1)]
    return _contract_batch(a, a["q"], [int(x) for x in a["qo_indptr"].tolist()], keys, False)


def contract_decode(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    keys = _paged_keys(a, "indptr", "indices", "last_page_len")
    return _contract_batch(a, a["q"], list(range(a["q"].shape[0] + 1)), keys, True)
