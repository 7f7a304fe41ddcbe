"""The op's four signatures and the parameter-name table across them, as data (spec 1.1, 1.2, 1.4, 1.6).

torch_npu v1 and v2 take actual lengths as ``SymInt[]`` (Python int lists); TorchAir's graph-mode twins
(``torch.ops.air.*``, called ``tng.ops.*``) take the same arguments as int64 ``Tensor``s. Everything else in the kit
reads parameter names and defaults from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from .errors import FIAArgumentError

Form = Literal["v1", "v2"]  # the op's version: v1 (npu_fused_infer_attention_score) or v2 (..._v2)

# The closed set of forms a call is written in: torch_npu's two ops (lengths as int lists) and TorchAir's
# graph-mode twins (tng.ops, lengths as int64 device tensors), spec 1.4.
FORMS = ("v1", "v2", "torchair-v1", "torchair-v2")

SCHEMA_V1 = (
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

SCHEMA_V2 = (
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



def version_of(form: str) -> Form:
    """The op version ("v1"/"v2") of a form in ``FORMS``; any other form is an FIAArgumentError naming it."""
    if form not in FORMS:
        raise FIAArgumentError("form", f"must be one of {', '.join(FORMS)}", form)
    return "v2" if form.endswith("v2") else "v1"


def is_torchair(form: str) -> bool:
    """Whether ``form`` is a TorchAir form (actual lengths as int64 tensors)."""
    return version_of(form) != form


# The op's function name per version, read from the schema strings.
OP_NAMES: dict[str, str] = {"v1": SCHEMA_V1.split("(", 1)[0], "v2": SCHEMA_V2.split("(", 1)[0]}

# Actual-length arguments: SymInt[] in torch_npu, int64 Tensor in TorchAir (spec 1.4).
LENGTH_PARAMETERS = ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len",
                     "actual_seq_qlen", "actual_seq_kvlen")


def torchair_schema(schema: str) -> str:
    """TorchAir's schema: torch_npu's with every actual-length ``SymInt[]?`` typed ``Tensor?`` (spec 1.4)."""
    return re.sub(r"SymInt\[\]\? (\w+)", r"Tensor? \1", schema)


SCHEMAS: dict[str, str] = {
    "torch_npu.v1": SCHEMA_V1,
    "torch_npu.v2": SCHEMA_V2,
    "torchair.v1": torchair_schema(SCHEMA_V1),
    "torchair.v2": torchair_schema(SCHEMA_V2),
}



def _arguments(schema: str) -> str:
    """The argument list of a schema string, without the parentheses."""
    return schema.split("(", 1)[1].rsplit(") ->", 1)[0]


# torch_npu 2.13.0's companion ops (spec 25.2): `.out` overloads with a workspace, the workspace query, and the
# output allocator, each with a v2 twin. Keyed "torch_npu.v1.out" etc.
COMPANION_SCHEMAS: dict[str, str] = {
    "torch_npu.v1.out": f"npu_fused_infer_attention_score.out({_arguments(SCHEMA_V1)}, Tensor? workspace=None, "
                        "Tensor(a!) attention_out, Tensor(b!) softmax_lse) -> (Tensor(a!), Tensor(b!))",
    "torch_npu.v2.out": f"npu_fused_infer_attention_score_v2.out({_arguments(SCHEMA_V2)}, Tensor? workspace=None, "
                        "Tensor(a!) attention_out, Tensor(b!) softmax_lse) -> (Tensor(a!), Tensor(b!))",
    "torch_npu.v1.get_max_workspace": f"_npu_fused_infer_attention_score_get_max_workspace({_arguments(SCHEMA_V1)})"
                                      " -> Tensor",
    "torch_npu.v2.get_max_workspace": "_npu_fused_infer_attention_score_v2_get_max_workspace("
                                      f"{_arguments(SCHEMA_V2)}) -> Tensor",
    "torch_npu.v1.infer_output": "_npu_fused_infer_attention_score_infer_output(Tensor query, Tensor value, *, "
                                 'str input_layout="BSH", Tensor? quant_scale2=None, Tensor? block_table=None, '
                                 "int num_heads=1, int num_key_value_heads=0, bool softmax_lse_flag=False, "
                                 "Tensor? query_rope=None) -> (Tensor, Tensor)",
    "torch_npu.v2.infer_output": "_npu_fused_infer_attention_score_v2_infer_output(Tensor query, Tensor value, *, "
                                 'int? query_dtype=None, int? value_dtype=None, str input_layout="BSH", '
                                 "Tensor? quant_scale_out=None, Tensor? block_table=None, int num_query_heads=1, "
                                 "int num_key_value_heads=0, bool return_softmax_lse=False, Tensor? query_rope=None, "
                                 "int? out_dtype=None) -> (Tensor, Tensor)",
}

# v1 name -> v2 name, for parameters both forms have under different names (spec 1.6).
V1_TO_V2: dict[str, str] = {
    "actual_seq_lengths": "actual_seq_qlen",
    "actual_seq_lengths_kv": "actual_seq_kvlen",
    "quant_scale2": "quant_scale_out",
    "quant_offset2": "quant_offset_out",
    "key_antiquant_scale": "dequant_scale_key",
    "key_antiquant_offset": "dequant_offset_key",
    "value_antiquant_scale": "dequant_scale_value",
    "value_antiquant_offset": "dequant_offset_value",
    "key_antiquant_mode": "key_quant_mode",
    "value_antiquant_mode": "value_quant_mode",
    "key_rope_antiquant_scale": "dequant_scale_key_rope",
    "num_heads": "num_query_heads",
    "scale": "softmax_scale",
    "softmax_lse_flag": "return_softmax_lse",
}
V2_TO_V1: dict[str, str] = {v2: v1 for v1, v2 in V1_TO_V2.items()}

# Names from the founding TorchAir page (an old doc, spec 1.3) accepted as aliases in v2 calls.
V2_ALIASES: dict[str, str] = {
    "actual_seq_lengths": "actual_seq_qlen",
    "actual_seq_lengths_kv": "actual_seq_kvlen",
}


@dataclass(frozen=True)
class SchemaArgument:
    """One argument of a schema: its name, its type as the schema writes it, and its default."""

    name: str
    type: str
    default: Any
    keyword_only: bool


@cache
def schema_arguments(form: str) -> tuple[SchemaArgument, ...]:
    """The arguments of ``SCHEMAS[form]`` ("torch_npu.v1", ..., or "v1"/"v2"), parsed by torch's schema parser."""
    schema = torch._C.parse_schema("npu::" + SCHEMAS[_schema_key(form)])
    return tuple(
        SchemaArgument(a.name, str(a.type), a.default_value if a.has_default_value() else None, a.kwarg_only)
        for a in schema.arguments
    )


def _schema_key(form: str) -> str:
    if form in SCHEMAS:
        return form
    return f"{'torchair' if is_torchair(form) else 'torch_npu'}.{version_of(form)}"


def keyword_defaults(form: Form) -> dict[str, Any]:
    """Keyword-only parameters of a form with their defaults, in schema order."""
    return {a.name: a.default for a in schema_arguments(form) if a.keyword_only}


def canonical_name(name: str) -> str:
    """The kit's internal name of a parameter: the v1 name where v1 has it, else the v2 name."""
    return V2_TO_V1.get(name, name)


def spelled(canonical: str, form: str) -> str:
    """How ``form`` spells a canonical parameter name (the v2 name in v2 forms), whether or not it has it."""
    return V1_TO_V2.get(canonical, canonical) if version_of(form) == "v2" else canonical


def form_name(canonical: str, form: str) -> str | None:
    """The name of a canonical parameter in ``form``, or None where that form lacks it."""
    name = spelled(canonical, form)
    return name if name in keyword_defaults(version_of(form)) else None


def parameter_table() -> list[dict[str, str | None]]:
    """One row per parameter: its v1 name, v2 name, TorchAir type of the lengths, and both defaults.

    This is the table of spec 1.6, derived from the schema strings rather than typed twice.
    """
    v1, v2 = keyword_defaults("v1"), keyword_defaults("v2")
    rows: list[dict[str, str | None]] = []
    seen: set[str] = set()
    for name in [*v1, *v2]:
        canon = canonical_name(name)
        if canon in seen:
            continue
        seen.add(canon)
        n1, n2 = form_name(canon, "v1"), form_name(canon, "v2")
        rows.append({
            "v1": n1,
            "v2": n2,
            "v1 default": repr(v1[n1]) if n1 else None,
            "v2 default": repr(v2[n2]) if n2 else None,
            "torchair type": "Tensor? (int64)" if canon in LENGTH_PARAMETERS else None,
        })
    return rows
