"""Stand-in torch_npu: eager ``npu_fused_infer_attention_score[_v2]`` that record and check their keywords.

The functions carry a ``__signature__`` made from the schema (real torch_npu bindings are builtins whose keywords
the kit reads from ``torch.ops.npu``); ``release("7.2.0")`` gives a v2 without ``quant_scale_p`` / ``out_dtype``,
as branches 7.2.0 and 7.3.0 (spec 1.2).
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch

from fia_kit.reference import npu_fused_infer_attention_score as _reference_v1
from fia_kit.reference import npu_fused_infer_attention_score_v2 as _reference_v2

from .. import SCHEMAS, record

__version__ = "fake"


def _signature(schema_key: str, without: frozenset[str] = frozenset()) -> inspect.Signature:
    schema = torch._C.parse_schema("npu::" + SCHEMAS[schema_key])
    kind = inspect.Parameter
    return inspect.Signature([
        kind(a.name, kind.KEYWORD_ONLY if a.kwarg_only else kind.POSITIONAL_OR_KEYWORD)
        for a in schema.arguments if a.name not in without])


def _op(schema_key: str, reference: Any, without: frozenset[str] = frozenset()):
    def op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **keywords: Any):
        record(schema_key, keywords)
        unknown = set(keywords) & without
        if unknown:
            raise TypeError(f"got unexpected keyword(s) {sorted(unknown)}")
        return reference(query, key, value, **keywords)
    op.__name__ = op.__qualname__ = reference.__name__
    op.__signature__ = _signature(schema_key, without)
    return op


npu_fused_infer_attention_score = _op("torch_npu.v1", _reference_v1)
npu_fused_infer_attention_score_v2 = _op("torch_npu.v2", _reference_v2)


def release(version: str) -> types.SimpleNamespace:
    """An older torch_npu's two ops (only "7.2.0": v2 lacks quant_scale_p and out_dtype)."""
    if version != "7.2.0":
        raise ValueError(version)
    return types.SimpleNamespace(
        __version__=version,
        npu_fused_infer_attention_score=npu_fused_infer_attention_score,
        npu_fused_infer_attention_score_v2=_op("torch_npu.v2", _reference_v2,
                                               frozenset({"quant_scale_p", "out_dtype"})),
    )
