"""The kit against the real torch_npu 2.13.0 wheel, read as files (spec 25.2): schemas, meta shape rules, TorchAir.

The wheel comes from tests/npu_wheel.py (a git-ignored cache, else ``pip download --no-deps torch_npu==2.13.0``,
once per session); without it these tests skip, and fail in CI (CI=true).
"""

from __future__ import annotations

import ast
import itertools
import re
import types

import fake_npu
import pytest
import torch
from npu_wheel import wheel_text

from fia_kit.backends import lookalike
from fia_kit.call import parse_call
from fia_kit.reference import (
    npu_fused_infer_attention_score_infer_output,
    npu_fused_infer_attention_score_v2_infer_output,
)
from fia_kit.shapes import infer_output
from fia_kit.signatures import COMPANION_SCHEMAS, SCHEMAS

YAML = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
META = "torch_npu/op_plugin/meta/_meta_registrations.py"
AIR = {"torchair.v1": "torch_npu/dynamo/torchair/ops/_npu_fused_infer_attention_score.py",
       "torchair.v2": "torch_npu/dynamo/torchair/ops/_npu_fused_infer_attention_score_v2.py"}
META_NAMES = ("TORCH_DTYPE_ENUM_VALUE_TO_SCALAR_TYPE_MAP", "get_query_and_attention_out_layout", "get_query_b_s_n_d",
              "get_query_t_n_d", "get_value_d", "get_change_d_scale", "get_change_d_scale_v2",
              "get_infer_attention_out_d", "infer_attention_out_shape", "infer_lse_out_shape",
              "npu_fused_infer_attention_score_forward", "npu_fused_infer_attention_score_v2_forward")


def _normal(schema: str) -> str:
    """A schema as torch prints it after parsing, without its namespace (so spacing and 1.0/1. do not matter)."""
    return str(torch._C.parse_schema("x::" + " ".join(schema.split()))).removeprefix("x::")


@pytest.fixture(scope="session")
def yaml_schemas() -> dict[str, list[str]]:
    """func name (with overload) -> every schema the yaml gives it."""
    found: dict[str, list[str]] = {}
    for line in wheel_text(YAML).splitlines():
        match = re.match(r"\s*(?:- )?func:\s*(.+)$", line)
        if match and "fused_infer_attention_score" in match.group(1):
            found.setdefault(match.group(1).split("(", 1)[0], []).append(match.group(1))
    return found


@pytest.fixture(scope="session")
def meta() -> types.SimpleNamespace:
    """The wheel's FIA meta functions, executed as plain torch code with stubs for torch_npu's helpers."""
    tree = ast.parse(wheel_text(META))
    wanted = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in META_NAMES)
              or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in META_NAMES for t in n.targets))]
    assert len(wanted) == len(META_NAMES), "the wheel's meta file no longer has every FIA helper"
    stub_npu = types.SimpleNamespace(hifloat8=object(), float4_e2m1fn_x2=object(), float4_e1m2fn_x2=object())
    namespace = {"torch": torch, "torch_npu": stub_npu, "m": None, "impl": lambda lib, name: (lambda f: f),
                 "ops_error": lambda code: "", "ErrCode": types.SimpleNamespace(VALUE="VALUE", TYPE="TYPE"),
                 "Dict": dict}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), META, "exec"), namespace)
    return types.SimpleNamespace(v1=namespace["npu_fused_infer_attention_score_forward"],
                                 v2=namespace["npu_fused_infer_attention_score_v2_forward"])


# ------------------------------------------------------------------------------------------------------- schemas

@pytest.mark.parametrize("key", ["torch_npu.v1", "torch_npu.v2", *COMPANION_SCHEMAS])
def test_kit_and_stand_in_schemas_equal_the_wheel_yaml(yaml_schemas, key):
    kit = (SCHEMAS | COMPANION_SCHEMAS)[key]
    real = yaml_schemas.get(kit.split("(", 1)[0])
    assert real, f"{kit.split('(', 1)[0]} is not in the wheel's yaml"
    assert {_normal(s) for s in real} == {_normal(kit)}
    assert _normal(fake_npu.SCHEMAS[key]) == _normal(kit)


def test_every_fia_function_of_the_yaml_is_modelled(yaml_schemas):
    kit = {s.split("(", 1)[0] for s in (*SCHEMAS.values(), *COMPANION_SCHEMAS.values())}
    assert set(yaml_schemas) <= kit


@pytest.mark.parametrize("key", list(AIR))
def test_torchair_air_schemas_equal_the_kit_lookalikes(key):
    text = wheel_text(AIR[key])
    defined = [" ".join(d.replace("\\\n", " ").split()) for d in re.findall(r'lib\.define\(\s*"""(.*?)"""', text, re.S)]
    assert len(defined) == 1
    assert _normal(defined[0]) == _normal(SCHEMAS[key]) == _normal(fake_npu.SCHEMAS[key])
    lookalike_schema = str(lookalike.op(key)._schema).removeprefix("fia_kit::air_")
    assert lookalike_schema == _normal(defined[0])


# ----------------------------------------------------------------------------------------- meta shape rules

N, NKV, S, D, DV, T = 4, 2, 3, 16, 8, 5
LAYOUT_QUERY = {"BSH": (2, S, N * D), "BSND": (2, S, N, D), "BNSD": (2, N, S, D), "TND": (T, N, D), "NTD": (N, T, D),
                "NSD": (N, S, D)}
LAYOUTS = ["BSH", "BSND", "BNSD", "TND", "NTD", "NSD", "BNSD_BSND", "BSH_BNSD", "BSND_BNSD", "NTD_TND", "BSH_NBSD",
           "BSND_NBSD", "BNSD_NBSD", "TND_NTD"]
VALUES = {"BSH": (2, 7, NKV * DV), "BSND": (2, 7, NKV, DV), "BNSD": (2, NKV, 7, DV), "TND": (9, NKV, DV),
          "NTD": (NKV, 9, DV), "NSD": (NKV, 7, DV)}
PAGED = {3: (6, 16, NKV * DV), 4: (6, NKV, 16, DV), 5: (6, NKV, DV // 8, 16, 8)}


def _meta_tensor(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def _grid():
    for layout, paged, quant, value_kind, lse, query_kind in itertools.product(
            LAYOUTS, (None, 3, 4, 5), (False, True), ("float", "int4"), (False, True), ("float", "int8")):
        if value_kind == "int4" and paged == 5:
            continue
        yield layout, paged, quant, value_kind, lse, query_kind


def _case(layout, paged, quant, value_kind, lse, query_kind, v2_out_dtype=None):
    part = layout.split("_")[0]
    q = _meta_tensor(LAYOUT_QUERY[part], torch.int8 if query_kind == "int8" else torch.float16)
    shape = PAGED[paged] if paged else VALUES[part]
    v_dtype = torch.int32 if value_kind == "int4" else torch.float16
    if value_kind == "int4":
        shape = (*shape[:-1], shape[-1] // 8) if paged != 3 else (shape[0], shape[1], shape[2] // 8)
    v = _meta_tensor(shape, v_dtype)
    rope = _meta_tensor((*q.shape[:-1], 64 if part != "BSH" else N * 64), torch.bfloat16) \
        if query_kind == "int8" else None
    return q, v, dict(input_layout=layout, num_heads=N, num_key_value_heads=NKV,
                      block_table=torch.zeros(2, 3, dtype=torch.int32) if paged else None,
                      quant_scale2=torch.ones(1) if quant else None, softmax_lse_flag=lse, query_rope=rope)


@pytest.mark.parametrize("case", list(_grid()), ids=lambda c: "-".join(str(x) for x in c))
def test_output_shapes_and_dtypes_equal_the_wheel_meta(meta, case):
    q, v, kw = _case(*case)
    want_out, want_lse = meta.v1(q, v, v, **kw)
    got = infer_output(q, v, parse_call("v1", q, v, v, kw).options)
    assert (got.out_shape, got.out_dtype) == (tuple(want_out.shape), want_out.dtype)
    assert (got.lse_shape, got.lse_dtype) == (tuple(want_lse.shape), want_lse.dtype)
    out, lse = npu_fused_infer_attention_score_infer_output(q, v, **kw)
    assert (out.shape, out.dtype, lse.shape) == (want_out.shape, want_out.dtype, want_lse.shape)


@pytest.mark.parametrize("out_dtype", [None, 5, 15])
@pytest.mark.parametrize("quant", [False, True])
@pytest.mark.parametrize("layout", ["BSND", "BNSD", "TND", "BNSD_NBSD"])
def test_v2_out_dtype_equals_the_wheel_meta(meta, layout, quant, out_dtype):
    q, v, kw = _case(layout, 4, quant, "float", True, "int8")
    if quant and out_dtype is not None:
        out_dtype = 1
    v2 = dict(input_layout=layout, num_query_heads=N, num_key_value_heads=NKV, block_table=kw["block_table"],
              quant_scale_out=kw["quant_scale2"], return_softmax_lse=True, query_rope=kw["query_rope"],
              out_dtype=out_dtype)
    want_out, want_lse = meta.v2(q, v, v, **v2)
    got = infer_output(q, v, parse_call("v2", q, v, v, v2).options)
    assert (got.out_shape, got.out_dtype, got.lse_shape) == (tuple(want_out.shape), want_out.dtype,
                                                             tuple(want_lse.shape))
    out, lse = npu_fused_infer_attention_score_v2_infer_output(q, v, **v2)
    assert (out.shape, out.dtype, lse.shape) == (want_out.shape, want_out.dtype, want_lse.shape)
