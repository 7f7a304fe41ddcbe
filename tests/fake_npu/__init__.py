"""Stand-ins for torch_npu and torchair, for testing the kit's binding layer on machines without an NPU.

``fake_npu.torch_npu`` and ``fake_npu.torchair`` expose the entry points the kit calls
(``torch_npu.npu_fused_infer_attention_score[_v2]``, ``torchair.ops.*``, ``torchair.get_npu_backend``,
``torchair.configs.compiler_config.CompilerConfig``). Every call records the exact keywords it received in ``CALLS``
and checks them against the op-plugin / TorchAir schema strings below (copied from spec 1.1 and 1.2, independently
of ``fia_kit.signatures``), parsed with ``torch._C.parse_schema``: each keyword must be in the schema, lists of
ints for ``SymInt[]``, tensors for ``Tensor`` and int64 tensors for TorchAir's lengths. Outputs come from the kit's
reference (the stand-ins test bindings, not numerics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

TORCH_NPU_V1 = (
    "npu_fused_infer_attention_score(Tensor query, Tensor key, Tensor value, *, "
    "Tensor? pse_shift=None, Tensor? atten_mask=None, "
    "SymInt[]? actual_seq_lengths=None, SymInt[]? actual_seq_lengths_kv=None, "
    "Tensor? dequant_scale1=None, Tensor? quant_scale1=None, Tensor? dequant_scale2=None, "
    "Tensor? quant_scale2=None, Tensor? quant_offset2=None, "
    "Tensor? antiquant_scale=None, Tensor? antiquant_offset=None, "
    "Tensor? key_antiquant_scale=None, Tensor? key_antiquant_offset=None, "
    "Tensor? value_antiquant_scale=None, Tensor? value_antiquant_offset=None, "
    "Tensor? block_table=None, Tensor? query_padding_size=None, Tensor? kv_padding_size=None, "
    "Tensor? key_shared_prefix=None, Tensor? value_shared_prefix=None, SymInt[]? actual_shared_prefix_len=None, "
    "Tensor? query_rope=None, Tensor? key_rope=None, Tensor? key_rope_antiquant_scale=None, "
    "int num_heads=1, float scale=1.0, int pre_tokens=2147483647, int next_tokens=2147483647, "
    'str input_layout="BSH", int num_key_value_heads=0, int sparse_mode=0, int inner_precise=0, '
    "int block_size=0, int antiquant_mode=0, int key_antiquant_mode=0, int value_antiquant_mode=0, "
    "bool softmax_lse_flag=False) -> (Tensor, Tensor)"
)
TORCH_NPU_V2 = (
    "npu_fused_infer_attention_score_v2(Tensor query, Tensor key, Tensor value, *, "
    "Tensor? query_rope=None, Tensor? key_rope=None, Tensor? pse_shift=None, Tensor? atten_mask=None, "
    "SymInt[]? actual_seq_qlen=None, SymInt[]? actual_seq_kvlen=None, Tensor? block_table=None, "
    "Tensor? dequant_scale_query=None, Tensor? dequant_scale_key=None, Tensor? dequant_offset_key=None, "
    "Tensor? dequant_scale_value=None, Tensor? dequant_offset_value=None, Tensor? dequant_scale_key_rope=None, "
    "Tensor? quant_scale_out=None, Tensor? quant_offset_out=None, Tensor? quant_scale_p=None, "
    "Tensor? learnable_sink=None, "
    "int num_query_heads=1, int num_key_value_heads=0, float softmax_scale=1.0, "
    'int pre_tokens=2147483647, int next_tokens=2147483647, str input_layout="BSH", '
    "int sparse_mode=0, int block_size=0, int query_quant_mode=0, int key_quant_mode=0, int value_quant_mode=0, "
    "int inner_precise=0, bool return_softmax_lse=False, "
    "int? query_dtype=None, int? key_dtype=None, int? value_dtype=None, int? query_rope_dtype=None, "
    "int? key_rope_dtype=None, int? key_shared_prefix_dtype=None, int? value_shared_prefix_dtype=None, "
    "int? dequant_scale_query_dtype=None, int? dequant_scale_key_dtype=None, int? dequant_scale_value_dtype=None, "
    "int? dequant_scale_key_rope_dtype=None, int? out_dtype=None) -> (Tensor, Tensor)"
)
_OUT_TAIL = "Tensor? workspace=None, Tensor(a!) attention_out, Tensor(b!) softmax_lse) -> (Tensor(a!), Tensor(b!))"


def _renamed(schema: str, name: str, tail: str) -> str:
    """``schema`` with its name replaced by ``name`` and its ") -> ..." replaced by ``tail``."""
    return name + "(" + schema.split("(", 1)[1].rsplit(") ->", 1)[0] + tail


SCHEMAS = {
    "torch_npu.v1": TORCH_NPU_V1,
    "torch_npu.v2": TORCH_NPU_V2,
    "torchair.v1": re.sub(r"SymInt\[\]\? ", "Tensor? ", TORCH_NPU_V1),
    "torchair.v2": re.sub(r"SymInt\[\]\? ", "Tensor? ", TORCH_NPU_V2),
    # torch_npu 2.13.0's companions (the wheel's npu_native_functions_by_codegen.yaml; spec 25.2)
    "torch_npu.v1.out": _renamed(TORCH_NPU_V1, "npu_fused_infer_attention_score.out", ", " + _OUT_TAIL),
    "torch_npu.v2.out": _renamed(TORCH_NPU_V2, "npu_fused_infer_attention_score_v2.out", ", " + _OUT_TAIL),
    "torch_npu.v1.get_max_workspace": _renamed(TORCH_NPU_V1, "_npu_fused_infer_attention_score_get_max_workspace",
                                               ") -> Tensor"),
    "torch_npu.v2.get_max_workspace": _renamed(TORCH_NPU_V2, "_npu_fused_infer_attention_score_v2_get_max_workspace",
                                               ") -> Tensor"),
    "torch_npu.v1.infer_output": (
        "_npu_fused_infer_attention_score_infer_output(Tensor query, Tensor value, *, str input_layout=\"BSH\", "
        "Tensor? quant_scale2=None, Tensor? block_table=None, int num_heads=1, int num_key_value_heads=0, "
        "bool softmax_lse_flag=False, Tensor? query_rope=None) -> (Tensor, Tensor)"),
    "torch_npu.v2.infer_output": (
        "_npu_fused_infer_attention_score_v2_infer_output(Tensor query, Tensor value, *, int? query_dtype=None, "
        "int? value_dtype=None, str input_layout=\"BSH\", Tensor? quant_scale_out=None, Tensor? block_table=None, "
        "int num_query_heads=1, int num_key_value_heads=0, bool return_softmax_lse=False, Tensor? query_rope=None, "
        "int? out_dtype=None) -> (Tensor, Tensor)"),
}
LENGTHS = {key: frozenset(re.findall(r"SymInt\[\]\? (\w+)", SCHEMAS[key.replace("torchair", "torch_npu")]))
           for key in SCHEMAS}


@dataclass(frozen=True)
class Call:
    """One recorded call: which entry point, the exact keywords, and the schema problems found (none if good)."""

    schema: str
    keywords: dict[str, Any]
    problems: tuple[str, ...]


CALLS: list[Call] = []


def _fits(jit_type: Any, value: Any) -> bool:
    kind = jit_type.kind()
    if kind == "OptionalType":
        return value is None or _fits(jit_type.getElementType(), value)
    if kind == "ListType":  # SymInt[]: torch's parser also takes numpy integer arrays and 1-D integer tensors
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 1:
            return value.dtype.kind in "iu"
        if isinstance(value, torch.Tensor):
            return value.dim() == 1 and not value.is_floating_point() and value.dtype != torch.bool
        return isinstance(value, (list, tuple)) and all(_fits(jit_type.getElementType(), v) for v in value)
    return {
        "TensorType": lambda: isinstance(value, torch.Tensor),
        "IntType": lambda: hasattr(value, "__index__") and not isinstance(value, bool),
        "FloatType": lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
        "BoolType": lambda: isinstance(value, bool),
        "StringType": lambda: isinstance(value, str),
    }[kind]()


def problems(schema_key: str, keywords: dict[str, Any]) -> tuple[str, ...]:
    """Why ``keywords`` do not fit the schema (empty when they do)."""
    arguments = {a.name: a for a in torch._C.parse_schema("npu::" + SCHEMAS[schema_key]).arguments if a.kwarg_only}
    found = []
    for name, value in keywords.items():
        if name not in arguments:
            found.append(f"{name}: not in {schema_key}")
        elif not _fits(arguments[name].type, value):
            found.append(f"{name}: {type(value).__name__} does not fit {arguments[name].type}")
        elif schema_key.startswith("torchair") and name in LENGTHS[schema_key] and value is not None \
                and value.dtype != torch.int64:
            found.append(f"{name}: TorchAir lengths must be int64, got {value.dtype}")
    return tuple(found)


def record(schema_key: str, keywords: dict[str, Any]) -> Call:
    """Check and record one call; raises TypeError (as the real binding would) when a keyword does not fit."""
    call = Call(schema_key, dict(keywords), problems(schema_key, keywords))
    CALLS.append(call)
    if call.problems:
        raise TypeError(f"{schema_key}: " + "; ".join(call.problems))
    return call
