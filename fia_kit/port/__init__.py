"""Coming from CUDA: SDPA, flex_attention, flash-attn and FlashInfer calls translated to FIA and back, checked equal.

    from fia_kit import port
    p = port.translate("flash_attn.flash_attn_func", q, k, v, causal=True)    # the source API's own arguments
    p = port.from_flash_attn(q, k, v, causal=True)                            # the same, by alias
    print(p)                    # FIA form and one note per convention that changed (before -> after)
    out, lse = p.call.call(fia_kit.npu_fused_infer_attention_score)          # or fia_kit.run(p.call) / plan / lint
    p.out_to_source(out)        # FIA's output in flash-attn's layout; p.lse_to_source(lse) likewise (and log base)
    print(p.check())            # agreement table: the source semantics vs the FIA reference in float64
    port.to_sdpa(plan), port.to_flex(plan)    # the reverse: a torch call computing an FIA call

Source semantics come from somewhere other than the kit's FIA reference: SDPA and flex_attention run for real on
the CPU; flash-attn and FlashInfer (CUDA-only) from float64 contracts written from their docs and code
(``fia_kit.port.contracts``, citing files and commits); where the library imports on a CUDA machine, ``check()``
also runs it. Features FIA cannot express raise ``FIAArgumentError`` naming the feature in the source's words
(softcap, dropout_p, score_mod, logits_soft_cap, ...). docs/porting.md is the concept table.
"""

from __future__ import annotations

from typing import Any

from ..errors import FIAArgumentError
from . import flash_attn as _fa
from . import flashinfer as _fi
from . import library as _lib
from . import torch_apis as _torch
from .common import bind
from .ported import Agreement, AgreementRow, Api, Ported, built_call
from .reverse import SourceCall, to_flex, to_sdpa
from .visibility import source_visibility, visibility_pair

__all__ = ["translate", "Ported", "Agreement", "AgreementRow", "SourceCall", "APIS", "to_sdpa", "to_flex",
           "from_sdpa", "from_flex", "from_flash_attn", "from_flash_attn_varlen", "from_flash_attn_with_kvcache",
           "from_flashinfer_single_prefill", "from_flashinfer_paged_prefill", "from_flashinfer_ragged_prefill",
           "from_flashinfer_paged_decode", "source_visibility", "visibility_pair"]

_TORCH = "torch (CPU, float64)"
_FA = "flash-attn contract (float64)"
_FI = "FlashInfer contract (float64)"

APIS: dict[str, Api] = {a.name: a for a in (
    Api(_torch.SDPA, _torch.sdpa_signature, _torch.translate_sdpa, _torch.run_sdpa, "torch SDPA (CPU, float64)"),
    Api(_torch.FLEX, _torch.flex_signature, _torch.translate_flex, _torch.run_flex, "torch flex_attention "
        "(CPU eager, float64)"),
    Api(_fa.FUNC, _fa.func_signature, _fa.translate_func, _fa.contract_func, _FA,
        _lib.flash_attn("flash_attn_func", "return_attn_probs"), "flash_attn"),
    Api(_fa.VARLEN, _fa.varlen_signature, _fa.translate_varlen, _fa.contract_varlen, _FA,
        _lib.flash_attn("flash_attn_varlen_func", "return_attn_probs"), "flash_attn"),
    Api(_fa.KVCACHE, _fa.kvcache_signature, _fa.translate_kvcache, _fa.contract_kvcache, _FA,
        _lib.flash_attn("flash_attn_with_kvcache", "return_softmax_lse"), "flash_attn"),
    Api(_fi.SINGLE, _fi.single_signature, _fi.translate_single, _fi.contract_single, _FI,
        _lib.flashinfer("single"), "flashinfer"),
    Api(_fi.PAGED, _fi.paged_signature, _fi.translate_paged, _fi.contract_paged, _FI, _lib.flashinfer("paged"),
        "flashinfer"),
    Api(_fi.RAGGED, _fi.ragged_signature, _fi.translate_ragged, _fi.contract_ragged, _FI,
        _lib.flashinfer("ragged"), "flashinfer"),
    Api(_fi.DECODE, _fi.decode_signature, _fi.translate_decode, _fi.contract_decode, _FI,
        _lib.flashinfer("decode"), "flashinfer"),
)}


def translate(api: str, *args: Any, **kwargs: Any) -> Ported:
    """Translate one call of ``api`` (a qualified name in ``APIS``) to FIA.

    Args:
        api: "torch.nn.functional.scaled_dot_product_attention", "torch.nn.attention.flex_attention.flex_attention",
            "flash_attn.flash_attn_func", "flash_attn.flash_attn_varlen_func", "flash_attn.flash_attn_with_kvcache",
            "flashinfer.single_prefill_with_kv_cache", "flashinfer.BatchPrefillWithPagedKVCacheWrapper",
            "flashinfer.BatchPrefillWithRaggedKVCacheWrapper", "flashinfer.BatchDecodeWithPagedKVCacheWrapper".
        args, kwargs: that API's own arguments, with its own keyword names; for a wrapper, run()'s tensors
            positionally and plan()'s keywords plus the constructor's kv_layout as keywords.
    Returns:
        The ``Ported`` call; its FIA call is validated (the op's own rules) before it is returned.
    Raises:
        FIAArgumentError: an unknown api, arguments the source would refuse, a feature FIA cannot express (named
            in the source's words), or a translated call the op refuses.
    """
    spec = APIS.get(api)
    if spec is None:
        raise FIAArgumentError("api", f"must be one of {', '.join(APIS)}", api)
    arguments = bind(spec.signature, api, args, kwargs)
    translation = spec.translate(arguments)
    call = built_call(translation)
    ported = Ported(api, call, tuple(translation.notes), arguments, spec, translation)
    ported.plan()  # the op's rules, before anything is computed
    return ported


def from_sdpa(*args: Any, **kwargs: Any) -> Ported:
    """``translate("torch.nn.functional.scaled_dot_product_attention", ...)``."""
    return translate(_torch.SDPA, *args, **kwargs)


def from_flex(*args: Any, **kwargs: Any) -> Ported:
    """``translate("torch.nn.attention.flex_attention.flex_attention", ...)``."""
    return translate(_torch.FLEX, *args, **kwargs)


def from_flash_attn(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flash_attn.flash_attn_func", ...)``."""
    return translate(_fa.FUNC, *args, **kwargs)


def from_flash_attn_varlen(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flash_attn.flash_attn_varlen_func", ...)``."""
    return translate(_fa.VARLEN, *args, **kwargs)


def from_flash_attn_with_kvcache(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flash_attn.flash_attn_with_kvcache", ...)``."""
    return translate(_fa.KVCACHE, *args, **kwargs)


def from_flashinfer_single_prefill(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flashinfer.single_prefill_with_kv_cache", ...)``."""
    return translate(_fi.SINGLE, *args, **kwargs)


def from_flashinfer_paged_prefill(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flashinfer.BatchPrefillWithPagedKVCacheWrapper", q, paged_kv_cache, **plan_and_run)``."""
    return translate(_fi.PAGED, *args, **kwargs)


def from_flashinfer_ragged_prefill(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flashinfer.BatchPrefillWithRaggedKVCacheWrapper", q, k, v, **plan_and_run)``."""
    return translate(_fi.RAGGED, *args, **kwargs)


def from_flashinfer_paged_decode(*args: Any, **kwargs: Any) -> Ported:
    """``translate("flashinfer.BatchDecodeWithPagedKVCacheWrapper", q, paged_kv_cache, **plan_and_run)``."""
    return translate(_fi.DECODE, *args, **kwargs)
