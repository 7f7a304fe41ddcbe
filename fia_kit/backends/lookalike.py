"""The op's four schemas as real PyTorch custom ops in a ``fia_kit`` namespace, computed by the reference.

    torch.ops.fia_kit.npu_fused_infer_attention_score        torch_npu v1 schema (lengths SymInt[])
    torch.ops.fia_kit.npu_fused_infer_attention_score_v2     torch_npu v2 schema (lengths SymInt[])
    torch.ops.fia_kit.air_npu_fused_infer_attention_score    TorchAir v1 schema (lengths int64 Tensor)
    torch.ops.fia_kit.air_npu_fused_infer_attention_score_v2 TorchAir v2 schema (lengths int64 Tensor)

Each has the reference as its CPU and CUDA kernel and a fake (meta) kernel with spec 4.3's shape rules
(``fia_kit.shapes``), so ``torch.compile(fullgraph=True)`` traces a model calling it as one graph node, the
way TorchAir's ``torch.ops.air.*`` ops enter a GE graph. Schema strings come from ``fia_kit.signatures.SCHEMAS``.

torch_npu's companions (spec 25.2; schemas ``fia_kit.signatures.COMPANION_SCHEMAS``) are there too, for
graph-capture callers: ``torch.ops.fia_kit.npu_fused_infer_attention_score.out`` (and ``_v2.out``), which write
into ``attention_out`` / ``softmax_lse``; ``torch.ops.fia_kit._npu_fused_infer_attention_score_get_max_workspace``
and ``torch.ops.fia_kit._npu_fused_infer_attention_score_infer_output`` with their ``_v2`` twins.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import reference
from ..call import parse_call
from ..shapes import infer_output
from ..signatures import COMPANION_SCHEMAS, SCHEMAS, keyword_defaults
from ..signatures import OP_NAMES as OP_NAME_OF_VERSION

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


def companion(schema_key: str) -> torch._ops.OpOverload:
    """The look-alike of ``COMPANION_SCHEMAS[schema_key]`` ("torch_npu.v1.out", "torch_npu.v2.get_max_workspace",
    "torch_npu.v1.infer_output", ...)."""
    name, _, overload = COMPANION_SCHEMAS[schema_key].split("(", 1)[0].partition(".")
    return getattr(getattr(getattr(torch.ops, NAMESPACE), name), overload or "default")


def _out_kernel(version: str):
    function = reference.npu_fused_infer_attention_score_out if version == "v1" else \
        reference.npu_fused_infer_attention_score_v2_out

    def kernel(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs):
        function(query, key, value, workspace=workspace, attention_out=attention_out, softmax_lse=softmax_lse,
                 **_given(version, kwargs))
        return attention_out, softmax_lse
    return kernel


def _out_fake(version: str):
    def fake(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs):
        return attention_out, softmax_lse
    return fake


def _workspace_kernel(version: str):
    function = reference.npu_fused_infer_attention_score_get_max_workspace if version == "v1" else \
        reference.npu_fused_infer_attention_score_v2_get_max_workspace

    def kernel(query, key, value, **kwargs):
        return function(query, key, value, **_given(version, kwargs))
    return kernel


def _workspace_fake(version: str):
    def fake(query, key, value, **kwargs):
        return query.new_empty((0,), dtype=torch.uint8)
    return fake


def _infer_output_kernel(version: str):
    function = reference.npu_fused_infer_attention_score_infer_output if version == "v1" else \
        reference.npu_fused_infer_attention_score_v2_infer_output

    def kernel(query, value, **kwargs):
        return function(query, value, **kwargs)
    return kernel


_COMPANION_KERNELS = {"out": (_out_kernel, _out_fake), "get_max_workspace": (_workspace_kernel, _workspace_fake),
                      "infer_output": (_infer_output_kernel, _infer_output_kernel)}

for _key, _schema in COMPANION_SCHEMAS.items():
    _version_name, _kind = _key.split(".")[1:]
    _library.define(_schema)
    _op_name = _schema.split("(", 1)[0]
    _make_kernel, _make_fake = _COMPANION_KERNELS[_kind]
    for _device in ("CPU", "CUDA"):
        _library.impl(_op_name, _make_kernel(_version_name), _device)
    torch.library.register_fake(f"{NAMESPACE}::{_op_name}", _make_fake(_version_name), lib=_library)


# torch_npu.npu_attention_update (context-parallel merge; fia_kit.cp.update): its schema as torch_npu registers it
# (torch.ops.npu.npu_attention_update: no default for update_type; lse_out is None when update_type is 0).
UPDATE_SCHEMA = "npu_attention_update(Tensor[] lse, Tensor[] local_out, int update_type) -> (Tensor, Tensor)"
_library.define(UPDATE_SCHEMA)


def _update_kernel(lse, local_out, update_type):
    from ..cp.update import npu_attention_update

    out, lse_out = npu_attention_update(list(lse), list(local_out), update_type)
    return out, lse_out


def _update_fake(lse, local_out, update_type):
    """As the torch_npu 2.13.0 wheel's meta (``op_plugin/meta/_meta_registrations.py:6148``): both outputs, whatever
    update_type, although the eager op returns None as lse_out for update_type 0."""
    from ..cp.update import check_arguments

    check_arguments(list(lse), list(local_out), update_type)
    return local_out[0].new_empty(local_out[0].shape), lse[0].new_empty(lse[0].shape)


for _device in ("CPU", "CUDA"):
    _library.impl("npu_attention_update", _update_kernel, _device)
torch.library.register_fake(f"{NAMESPACE}::npu_attention_update", _update_fake, lib=_library)
