"""Stand-in torch_npu: eager ``npu_fused_infer_attention_score[_v2]`` that record and check their keywords.

With torch_npu 2.13.0's companions (spec 25.2), so graph-capture callers run unchanged:
``npu_fused_infer_attention_score[_v2].out(..., workspace=ws, out=[attention_out, softmax_lse])``,
``_npu_fused_infer_attention_score[_v2]_get_max_workspace(...)`` and ``_npu_fused_infer_attention_score[_v2]_infer_output``.

The functions carry a ``__signature__`` made from the schema (real torch_npu bindings are builtins whose keywords
the kit reads from ``torch.ops.npu``); ``release("7.2.0")`` gives a v2 without ``quant_scale_p`` / ``out_dtype``,
as branches 7.2.0 and 7.3.0 (spec 1.2).
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch

from fia_kit import reference as _reference
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


def _out_op(schema_key: str, reference: Any):
    """``.out``: outputs as the Python binding takes them, out=[attention_out, softmax_lse], or by schema name."""
    def out_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **keywords: Any):
        out = keywords.pop("out", None)
        if out is not None:
            keywords["attention_out"], keywords["softmax_lse"] = out
        record(schema_key, keywords)
        return reference(query, key, value, **keywords)
    out_op.__name__ = "out"
    return out_op


def _companion(schema_key: str, reference: Any, positional: int):
    names = ("query", "key", "value") if positional == 3 else ("query", "value")

    def op(*args: Any, **keywords: Any):
        tensors = list(args) + [keywords.pop(n) for n in names[len(args):] if n in keywords]
        if len(tensors) != positional:
            raise TypeError(f"{schema_key} takes {names}, got {len(tensors)} of them")
        record(schema_key, keywords)
        return reference(*tensors, **keywords)
    op.__name__ = op.__qualname__ = SCHEMAS[schema_key].split("(", 1)[0]
    return op


npu_fused_infer_attention_score = _op("torch_npu.v1", _reference_v1)
npu_fused_infer_attention_score_v2 = _op("torch_npu.v2", _reference_v2)
npu_fused_infer_attention_score.out = _out_op("torch_npu.v1.out", _reference.npu_fused_infer_attention_score_out)
npu_fused_infer_attention_score_v2.out = _out_op("torch_npu.v2.out",
                                                 _reference.npu_fused_infer_attention_score_v2_out)
_npu_fused_infer_attention_score_get_max_workspace = _companion(
    "torch_npu.v1.get_max_workspace", _reference.npu_fused_infer_attention_score_get_max_workspace, 3)
_npu_fused_infer_attention_score_v2_get_max_workspace = _companion(
    "torch_npu.v2.get_max_workspace", _reference.npu_fused_infer_attention_score_v2_get_max_workspace, 3)
_npu_fused_infer_attention_score_infer_output = _companion(
    "torch_npu.v1.infer_output", _reference.npu_fused_infer_attention_score_infer_output, 2)
_npu_fused_infer_attention_score_v2_infer_output = _companion(
    "torch_npu.v2.infer_output", _reference.npu_fused_infer_attention_score_v2_infer_output, 2)


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
