"""The CUDA libraries themselves, for ``Ported.check()`` on a CUDA machine where they import.

Each runner takes the source call's arguments (as the caller gave them, float16/bfloat16), moves tensors to CUDA,
calls the library and returns (out, lse) on the device. Nothing here runs without CUDA and the library.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch


def _cuda(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to("cuda")
    if isinstance(value, (tuple, list)):
        return type(value)(_cuda(v) for v in value)
    return value


def flash_attn(function: str, lse_flag: str) -> Any:
    """A runner calling ``flash_attn.<function>`` with the call's own arguments."""
    def run(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        fn = getattr(importlib.import_module("flash_attn"), function)
        result = fn(**_cuda(a))
        if not a.get(lse_flag):
            return result, None
        return result[0], result[1]
    return run


def flashinfer(kind: str) -> Any:
    """A runner for ``flashinfer.single_prefill_with_kv_cache`` ("single") or a wrapper ("paged", "ragged",
    "decode"): constructor(workspace, kv_layout), plan(**plan keywords), run(tensors, return_lse)."""
    def run(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        fi = importlib.import_module("flashinfer")
        want_lse = bool(a.get("return_lse"))
        a = _cuda(dict(a))
        if kind == "single":
            result = fi.single_prefill_with_kv_cache(**a)
        else:
            cls = {"paged": fi.BatchPrefillWithPagedKVCacheWrapper, "ragged": fi.BatchPrefillWithRaggedKVCacheWrapper,
                   "decode": fi.BatchDecodeWithPagedKVCacheWrapper}[kind]
            workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")
            wrapper = cls(workspace, kv_layout=a.pop("kv_layout"))
            run_names = {"paged": ("q", "paged_kv_cache", "return_lse", "sinks"),
                         "ragged": ("q", "k", "v", "return_lse"),
                         "decode": ("q", "paged_kv_cache", "return_lse", "sinks")}[kind]
            run_kw = {n: a.pop(n) for n in run_names if n in a}
            plan_kw = {n: v for n, v in a.items() if v is not None}
            plan_kw["q_data_type"] = run_kw["q"].dtype  # the signature's default string is "float16"
            cache = run_kw.get("paged_kv_cache", run_kw.get("k"))
            plan_kw["kv_data_type"] = (cache[0] if isinstance(cache, (tuple, list)) else cache).dtype
            wrapper.plan(**plan_kw)
            result = wrapper.run(**{n: v for n, v in run_kw.items() if v is not None})
        return (result[0], result[1]) if want_lse else (result, None)
    return run
