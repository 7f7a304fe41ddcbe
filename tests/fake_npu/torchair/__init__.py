"""Stand-in torchair: ``ops.*`` call ``torch.ops.fake_air.*`` (TorchAir's schemas), ``get_npu_backend`` is a "GE".

The namespace is ``fake_air``, not TorchAir's ``air``, so that the real torchair can load in the same process.
As in TorchAir, the ops' eager kernels raise NotImplementedError (graph mode only). The backend returned by
``get_npu_backend`` records its CompilerConfig and each captured graph, checks and records the keywords of every
``fake_air`` op node (tensor keywords by their example values), then runs the graph with the nodes retargeted to the
kit's TorchAir-schema look-alike ops.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from fia_kit.backends import lookalike
from fia_kit.call import parse_call
from fia_kit.shapes import infer_output

from .. import SCHEMAS, record

OP_NAMES = {"torchair.v1": "npu_fused_infer_attention_score", "torchair.v2": "npu_fused_infer_attention_score_v2"}
CONFIGS: list[Any] = []
GRAPHS: list[torch.fx.GraphModule] = []

_library = torch.library.Library("fake_air", "DEF")


def _eager(*args: Any, **kwargs: Any):
    raise NotImplementedError("npu_fused_infer_attention_score only support in max-autotune mode")


def _fake(version: str):
    def fake(query, key, value, **kwargs):
        meta = infer_output(query, value, parse_call(version, query, key, value, kwargs).options)
        return query.new_empty(meta.out_shape, dtype=meta.out_dtype), query.new_empty(meta.lse_shape,
                                                                                      dtype=meta.lse_dtype)
    return fake


for _key, _name in OP_NAMES.items():
    _library.define(SCHEMAS[_key])
    _library.impl(_name, _eager, "CPU")
    torch.library.register_fake(f"fake_air::{_name}", _fake(_key.split(".")[1]), lib=_library)


def _wrapper(name: str):
    packet = getattr(torch.ops.fake_air, name)

    def op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any):
        return packet(query, key, value, **kwargs)
    op.__name__ = name
    return op


ops = SimpleNamespace(**{name: _wrapper(name) for name in OP_NAMES.values()})


def get_npu_backend(compiler_config: Any = None):
    """A torch.compile backend standing in for GE graph mode (see the module docstring)."""
    CONFIGS.append(compiler_config)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        GRAPHS.append(gm)
        for node in gm.graph.nodes:
            for key, name in OP_NAMES.items():
                if node.op == "call_function" and node.target in (getattr(torch.ops.fake_air, name),
                                                                  getattr(torch.ops.fake_air, name).default):
                    record(key, {k: v.meta["example_value"] if isinstance(v, torch.fx.Node) else v
                                 for k, v in node.kwargs.items()})
                    node.target = lookalike.op(key)
        gm.recompile()
        return gm.forward
    return backend
