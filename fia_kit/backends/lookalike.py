"""The op's four schemas as real PyTorch custom ops in a ``fia_kit`` namespace, computed by the reference.

    torch.ops.fia_kit.npu_fused_infer_attention_score        torch_npu v1 schema (lengths SymInt[])
    torch.ops.fia_kit.npu_fused_infer_attention_score_v2     torch_npu v2 schema (lengths SymInt[])
    torch.ops.fia_kit.air_npu_fused_infer_attention_score    TorchAir v1 schema (lengths int64 Tensor)
    torch.ops.fia_kit.air_npu_fused_infer_attention_score_v2 TorchAir v2 schema (lengths int64 Tensor)

Each has the reference as its CPU and CUDA kernel and a fake (meta) kernel with spec 4.3's shape rules
(``fia_kit.shapes``), so ``torch.compile(fullgraph=True)`` traces a model calling it as one graph node, the
way TorchAir's ``torch.ops.air.*`` ops enter a GE graph. Schema strings come from ``fia_kit.signatures.SCHEMAS``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import reference
from ..call import parse_call
from ..shapes import infer_output
from ..signatures import OP_NAMES as OP_NAME_OF_VERSION
from ..signatures import SCHEMAS, keyword_defaults

NAMESPACE = "fia_kit"
# SCHEMAS key -> op name in the fia_kit namespace: torch_npu's name, "air_"-prefixed for TorchAir's schema.
OP_NAMES: dict[str, str] = {key: ("air_" if key.startswith("torchair") else "") + OP_NAME_OF_VERSION[key[-2:]]
                            for key in SCHEMAS}

_library = torch.library.Library(NAMESPACE, "DEF")


def op(schema_key: str) -> torch._ops.OpOverload:
    """The look-alike op of ``SCHEMAS[schema_key]`` ("torch_npu.v1", ..., "torchair.v2")."""
    return getattr(getattr(torch.ops, NAMESPACE), OP_NAMES[schema_key]).default


def _version(schema_key: str) -> str:
    return schema_key.rsplit(".", 1)[1]


def _given(version: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords that differ from the schema's defaults (the dispatcher passes every keyword)."""
    defaults = keyword_defaults(version)
    return {name: v for name, v in kwargs.items()
            if not (v is None and defaults[name] is None) and (v is None or isinstance(v, torch.Tensor)
                                                                or v != defaults[name])}


def _kernel(version: str):
    function = reference.npu_fused_infer_attention_score if version == "v1" else \
        reference.npu_fused_infer_attention_score_v2

    def kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = function(query, key, value, **_given(version, kwargs))
        return out.contiguous(), lse.contiguous()
    return kernel


def _fake(version: str):
    def fake(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        meta = infer_output(query, value, parse_call(version, query, key, value, kwargs).options)
        return (query.new_empty(meta.out_shape, dtype=meta.out_dtype),
                query.new_empty(meta.lse_shape, dtype=meta.lse_dtype))
    return fake


for _key, _name in OP_NAMES.items():
    _library.define(_name + "(" + SCHEMAS[_key].split("(", 1)[1])
    for _device in ("CPU", "CUDA"):
        _library.impl(_name, _kernel(_version(_key)), _device)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _fake(_version(_key)), lib=_library)
