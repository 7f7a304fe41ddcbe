"""The op's four signatures and the parameter-name table across them, as data (spec 1.1, 1.2, 1.4, 1.6).

torch_npu v1 and v2 take actual lengths as ``SymInt[]`` (Python int lists); TorchAir's graph-mode twins
(``torch.ops.air.*``, called ``tng.ops.*``) take the same arguments as int64 ``Tensor``s. Everything else in the kit
reads parameter names and defaults from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from .errors import FIAArgumentError
from .tables import html_table, text_table

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


# What each parameter does and the docs section that says it, keyed by canonical name (the v1 name where v1 has
# it). tests/test_parameter_table.py checks that every argument of the four schemas has an entry.
PARAMETER_DOCS: dict[str, tuple[str, str]] = {
    "query": ("queries, laid out as input_layout says", "4.2"),
    "key": ("keys: same layout as the query, or a paged cache", "4.2, 11"),
    "value": ("values: as the keys; its D is the output's D", "4.2, 4.3"),
    "pse_shift": ("additive bias (B|1, N_q, S_q', S_kv'), added after the scale", "9"),
    "atten_mask": ("True/1 = hidden: a full mask (modes 0/1), the 2048 template (2-4) or a tree mask (9)", "6.1, 6.2"),
    "actual_seq_lengths": ("valid query rows: per batch, or cumulative in TND/NTD", "5"),
    "actual_seq_lengths_kv": ("valid keys: per batch, cumulative in TND/NTD unless paged", "5"),
    "dequant_scale1": ("int8 full quant: dequantises Q·Kᵀ (uint64 from npu_trans_quant_param)", "16.2"),
    "quant_scale1": ("int8 full quant: quantises the probabilities P", "16.2"),
    "dequant_scale2": ("int8 full quant: dequantises P·V", "16.2"),
    "quant_scale2": ("int8 output: round(O · scale + offset)", "16.1"),
    "quant_offset2": ("int8 output: the offset", "16.1"),
    "antiquant_scale": ("combined int8 K/V scale, leading dim 2 = [key, value]", "16.3"),
    "antiquant_offset": ("combined int8 K/V offset: K = scale · (K_int + offset)", "16.3"),
    "key_antiquant_scale": ("int8/int4 key scale; its shape follows the mode", "16.3"),
    "key_antiquant_offset": ("int8/int4 key offset", "16.3"),
    "value_antiquant_scale": ("int8/int4 value scale", "16.3"),
    "value_antiquant_offset": ("int8/int4 value offset", "16.3"),
    "block_table": ("paged K/V: (B, max_blocks) int32 cache block ids per sequence", "11"),
    "query_padding_size": ("left padding of the query rows", "15"),
    "kv_padding_size": ("left padding of the keys", "15"),
    "key_shared_prefix": ("prefix keys every batch attends to first (1, N_kv, P_S, D)", "14"),
    "value_shared_prefix": ("prefix values", "14"),
    "actual_shared_prefix_len": ("valid prefix length P (one value)", "14"),
    "query_rope": ("MLA: query rope part (D 64), concatenated along D", "12"),
    "key_rope": ("MLA: key rope part (D 64)", "12"),
    "key_rope_antiquant_scale": ("reserved, refused", "1.6"),
    "num_heads": ("query heads N_q (splits H in BSH)", "10"),
    "scale": ("softmax scale multiplying Q·Kᵀ", "3.4"),
    "pre_tokens": ("band: keys before the diagonal a row may see (modes 0, 4)", "6.3"),
    "next_tokens": ("band: keys after the diagonal a row may see (modes 0, 4)", "6.3"),
    "input_layout": ("axis order of Q/K/V and of the output (two-part names: in_out)", "4.1, 4.2"),
    "num_key_value_heads": ("K/V heads N_kv (0 = N_q); query head n reads n // (N_q / N_kv)", "10"),
    "sparse_mode": ("which keys a row sees: 0-4 and tree mask 9", "6.3, 6.6"),
    "inner_precise": ("precision mode; bit 1 writes 0 for fully masked rows", "7"),
    "block_size": ("tokens per cache block (paged K/V)", "11"),
    "antiquant_mode": ("combined form: 0 per channel/tensor, 1 per token", "16.3"),
    "key_antiquant_mode": ("key scale granularity: 0 channel, 1 token, 2 head, 3 token+head, 4/5 paged", "16.3"),
    "value_antiquant_mode": ("value scale granularity, as the key's", "16.3"),
    "softmax_lse_flag": ("also return the LSE (natural log) of each row", "8"),
    "dequant_scale_query": ("v2 MLA full quant: per-token, per-head query scale", "16.4"),
    "quant_scale_p": ("Ascend950 only: quantises P; refused", "1.6"),
    "learnable_sink": ("one logit per query head added to the softmax denominator", "13"),
    "query_quant_mode": ("query scale granularity (3 = per token and head)", "16.4"),
    "query_dtype": ("dtype hint: reinterpret the query's storage (reserved)", "1.2"),
    "key_dtype": ("dtype hint for the key (reserved)", "1.2"),
    "value_dtype": ("dtype hint for the value (reserved)", "1.2"),
    "query_rope_dtype": ("dtype hint for query_rope (reserved)", "1.2"),
    "key_rope_dtype": ("dtype hint for key_rope (reserved)", "1.2"),
    "key_shared_prefix_dtype": ("left over: v2 has no shared prefix", "1.2"),
    "value_shared_prefix_dtype": ("left over: v2 has no shared prefix", "1.2"),
    "dequant_scale_query_dtype": ("dtype hint for dequant_scale_query (reserved)", "1.2"),
    "dequant_scale_key_dtype": ("dtype hint for dequant_scale_key (reserved)", "1.2"),
    "dequant_scale_value_dtype": ("dtype hint for dequant_scale_value (reserved)", "1.2"),
    "dequant_scale_key_rope_dtype": ("dtype hint for dequant_scale_key_rope (reserved)", "1.2"),
    "out_dtype": ("output dtype (fp8/hifloat8 with output quant)", "1.2, 25.1"),
}


@dataclass(frozen=True)
class ParameterRow:
    """One parameter across the forms: its v1 and v2 names (None where a form lacks it), what TorchAir's type is
    where it differs from torch_npu's (None: the same), the default, what it does and the docs section."""

    v1: str | None
    v2: str | None
    torchair: str | None
    default: str
    meaning: str
    section: str


@dataclass(frozen=True)
class ParameterTable:
    """Every parameter of the op, one row each; shown as a table (``_repr_html_`` in a notebook, text otherwise)."""

    rows: tuple[ParameterRow, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ParameterRow]:
        return iter(self.rows)

    def _cells(self) -> tuple[str, list[str], list[list[str]]]:
        caption = (f"{len(self.rows)} parameters of {OP_NAMES['v1']} (v1) and {OP_NAMES['v2']} (v2); TorchAir's "
                   "tng.ops take the same names ('-': that form lacks it)")
        head = ["v1", "v2", "TorchAir (tng.ops)", "default", "meaning", "spec"]
        body = [[r.v1 or "-", r.v2 or "-", r.torchair or "same", r.default, r.meaning, r.section] for r in self.rows]
        return caption, head, body

    def __repr__(self) -> str:
        return text_table(*self._cells())

    def _repr_html_(self) -> str:
        return html_table(*self._cells())


def parameter_table() -> ParameterTable:
    """One row per parameter (spec 1.6): v1 and v2 names, TorchAir's type of the lengths, default, meaning, section.

    Names, defaults and types come from the schema strings; meanings and sections from ``PARAMETER_DOCS``.
    """
    arguments = {form: {a.name: a for a in schema_arguments(form)} for form in SCHEMAS}
    rows: list[ParameterRow] = []
    seen: set[str] = set()
    for name in [*arguments["torch_npu.v1"], *arguments["torch_npu.v2"]]:
        canon = canonical_name(name)
        if canon in seen:
            continue
        seen.add(canon)
        n1, n2 = (spelled(canon, v) if spelled(canon, v) in arguments[f"torch_npu.{v}"] else None
                  for v in ("v1", "v2"))
        form, spelling = ("v1", n1) if n1 else ("v2", n2)
        npu, air = arguments[f"torch_npu.{form}"][spelling], arguments[f"torchair.{form}"][spelling]
        defaults = {repr(arguments[f"torch_npu.{v}"][n].default) for v, n in (("v1", n1), ("v2", n2)) if n}
        default = "required" if not npu.keyword_only else " / ".join(sorted(defaults))
        meaning, section = PARAMETER_DOCS[canon]
        torchair = "int64 Tensor, not an int list" if str(air.type) != str(npu.type) else None
        rows.append(ParameterRow(n1, n2, torchair, default, meaning, section))
    return ParameterTable(tuple(rows))
