"""SDPA and flex_attention -> FIA; their semantics run for real (torch, CPU).

    torch.nn.functional.scaled_dot_product_attention(query (B, H, L, E), key (B, H_kv, S, E), value (B, H_kv, S, Ev),
        attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False) -> (B, H, L, Ev)
    torch.nn.attention.flex_attention.flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None,
        enable_gqa=False, return_lse=False, kernel_options=None, *, return_aux=None)

Both become FIA v1 BNSD calls (the same (B, N, S, D) axes, so the output needs no conversion).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.nn.attention.flex_attention import create_mask, flex_attention

from ..errors import FIAArgumentError
from .common import Translation, default_scale, mask_keywords, tensor, untranslatable

SDPA = "torch.nn.functional.scaled_dot_product_attention"
FLEX = "torch.nn.attention.flex_attention.flex_attention"


def sdpa_signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention's parameters (torch 2.13)."""


def flex_signature(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
                   return_lse=False, kernel_options=None, *, return_aux=None):
    """torch.nn.attention.flex_attention.flex_attention's parameters (torch 2.13)."""


def _heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> dict[str, Any]:
    if k.shape[:3] != v.shape[:3] or k.shape[0] != q.shape[0] or k.shape[-1] != q.shape[-1]:
        raise FIAArgumentError("key + value", "must be (B, H_kv, S, E) and (B, H_kv, S, Ev) with the query's B "
                               "and E", (tuple(k.shape), tuple(v.shape)))
    if k.shape[1] != q.shape[1] and not (enable_gqa and q.shape[1] % k.shape[1] == 0):
        raise FIAArgumentError("enable_gqa", "fewer key heads than query heads needs enable_gqa=True and H a "
                               "multiple of H_kv (as the source API requires)", (q.shape[1], k.shape[1]))
    return {"num_heads": q.shape[1], "num_key_value_heads": k.shape[1], "input_layout": "BNSD"}


def translate_sdpa(a: dict[str, Any]) -> Translation:
    q, k, v = tensor(a, "query", 4), tensor(a, "key", 4), tensor(a, "value", 4)
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    kw = _heads(q, k, v, a["enable_gqa"])
    if a["dropout_p"]:
        raise untranslatable("dropout_p", "FIA is inference only and never drops probabilities; pass "
                             "dropout_p=0.0", a["dropout_p"])
    kw["scale"] = default_scale(a["scale"], q.shape[-1], "scale", notes)
    b, h, l_q, l_kv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    mask = a["attn_mask"]
    if a["is_causal"]:
        if mask is not None:
            raise FIAArgumentError("attn_mask + is_causal", "SDPA refuses both at once", "both given")
        kw.update(sparse_mode=2, atten_mask=_compressed())
        notes.append("is_causal=True (top-left, j <= i) -> sparse_mode=2 with the compressed 2048 mask (not 3: "
                     "FIA's 3 is bottom-right)")
    elif mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() > 4:
            raise FIAArgumentError("attn_mask", "must be a tensor broadcastable to (B, H, L, S)", mask)
        full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        try:
            full = full.expand(full.shape[0], full.shape[1], l_q, l_kv)
        except RuntimeError as err:
            raise FIAArgumentError("attn_mask", f"must broadcast to (B, H, L, S) = {(b, h, l_q, l_kv)}", mask) \
                from err
        if mask.dtype == torch.bool:
            kw.update(mask_keywords(full, None, q, h, "attn_mask", True, notes, derived))
        else:
            kw.update(mask_keywords(None, full.double(), q, h, "attn_mask", True, notes, derived))
    return Translation("v1", q, k, v, kw, notes, derived=derived)


def run_sdpa(a: dict[str, Any]) -> tuple[torch.Tensor, None]:
    """The source itself: torch's SDPA on the arguments as given."""
    return torch.nn.functional.scaled_dot_product_attention(**a), None


def translate_flex(a: dict[str, Any]) -> Translation:
    q, k, v = tensor(a, "query", 4), tensor(a, "key", 4), tensor(a, "value", 4)
    notes: list[str] = []
    derived: dict[str, torch.dtype] = {}
    kw = _heads(q, k, v, a["enable_gqa"])
    kw["scale"] = default_scale(a["scale"], q.shape[-1], "scale", notes)
    b, h, l_q, l_kv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    keep = _block_mask_keep(a["block_mask"], b, h, l_q, l_kv)
    bias = _additive_bias(a["score_mod"], b, h, l_q, l_kv) if a["score_mod"] is not None else None
    if keep is not None or bias is not None:
        kw.update(mask_keywords(keep, bias, q, h, "block_mask" if keep is not None else "score_mod", True, notes,
                                derived, bias_source="score_mod"))
    if _wants_lse(a):
        kw["softmax_lse_flag"] = True
        notes.append("return_lse -> softmax_lse_flag=True; FIA's (B, N, S, 1) LSE -> flex's (B, H, L), both "
                     "natural log")
    return Translation("v1", q, k, v, kw, notes, lse_to_source=lambda lse: lse.squeeze(-1), derived=derived)


def run_flex(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The source itself: flex_attention, eager (unfused) on the arguments as given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = flex_attention(**a)
    if isinstance(result, tuple):
        out, aux = result
        return out, getattr(aux, "lse", aux)
    return result, None


def _wants_lse(a: dict[str, Any]) -> bool:
    return bool(a["return_lse"]) or bool(getattr(a["return_aux"], "lse", False))


def _compressed() -> torch.Tensor:
    from ..masks import compressed_causal_mask

    return compressed_causal_mask()


def _block_mask_keep(block_mask: Any, b: int, h: int, l_q: int, l_kv: int) -> torch.Tensor | None:
    """(B|1, H|1, L, S) keep mask of a BlockMask: its mask_mod where its blocks are visited (True = keep)."""
    if block_mask is None:
        return None
    seq = tuple(block_mask.seq_lengths)
    if seq != (l_q, l_kv):
        raise FIAArgumentError("block_mask", f"was made for (Q_LEN, KV_LEN) = {seq}, the call has {(l_q, l_kv)}",
                               seq)
    mb, mh = block_mask.shape[0], block_mask.shape[1]
    keep = create_mask(block_mask.mask_mod, mb, mh, l_q, l_kv, device="cpu")
    q_block, kv_block = block_mask.BLOCK_SIZE
    blocks = block_mask.to_dense().to("cpu").bool()
    visited = blocks.repeat_interleave(q_block, 2)[:, :, :l_q].repeat_interleave(kv_block, 3)[:, :, :, :l_kv]
    return (keep & visited).to(block_mask.kv_indices.device)


def _additive_bias(score_mod: Any, b: int, h: int, l_q: int, l_kv: int) -> torch.Tensor:
    """score_mod(score, b, h, q_idx, kv_idx) - score, checked to be the same for three scores (else not additive)."""
    idx = (torch.arange(b).view(b, 1, 1, 1), torch.arange(h).view(1, h, 1, 1),
           torch.arange(l_q).view(1, 1, l_q, 1), torch.arange(l_kv).view(1, 1, 1, l_kv))
    probes = [torch.zeros(b, h, l_q, l_kv, dtype=torch.float64), torch.full((b, h, l_q, l_kv), 3.25,
              dtype=torch.float64), torch.linspace(-7, 7, b * h * l_q * l_kv, dtype=torch.float64)
              .reshape(b, h, l_q, l_kv)]
    try:
        shifts = [(score_mod(s.clone(), *idx).double().expand(b, h, l_q, l_kv) - s) for s in probes]
    except Exception as err:
        raise untranslatable("score_mod", "it could not be evaluated elementwise on index tensors, so its effect "
                             "is unknown; FIA takes an additive bias as pse_shift", repr(err)) from err
    for other in shifts[1:]:
        same = (other == shifts[0]) | torch.isclose(other, shifts[0], rtol=1e-9, atol=1e-9)
        if not bool(same.all()):
            raise untranslatable("score_mod", "it is not additive (score_mod(s) - s depends on s: softcapping, "
                                 "scaling...); FIA adds only a fixed pse_shift after the scale", "non-additive")
    return shifts[0]
