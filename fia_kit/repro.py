"""Standalone reproducer scripts for bug reports: ``to_script(call_or_case, path)``.

The script rebuilds the inputs and runs the real op eagerly (``torch_npu.npu_fused_infer_attention_score[_v2]``,
lengths as int lists) and in TorchAir graph mode (``tng.ops``, lengths as int64 device tensors, max-autotune), then
prints both outputs' shapes and their difference. Where torch_npu does not import it says so and runs fia_kit's
reference and the compiled look-alike instead, so the same script runs on any machine.

Inputs: a builders case whose ``repr`` rebuilds it (a dataclass from an importable module) is re-created with
``case.build(form)`` (needs fia_kit); anything else (a raw ``FIACall``) has its tensors saved with ``torch.save``
next to the script (``<name>.pt``) and needs only torch (+ torch_npu on the box).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import torch

from .call import FIACall
from .lengths import read_lengths
from .signatures import LENGTH_PARAMETERS, OP_NAMES, version_of

_HEADER = '''#!/usr/bin/env python
"""FIA reproducer written by fia_kit.repro: {op} ({form}), eager and TorchAir graph mode.

Run: python {name} [--device npu:1]. Without a working torch_npu it runs fia_kit's reference and compiled
look-alike instead (on the CPU).
"""
import argparse
import os

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # torch_npu without CANN breaks `import torch`

import torch

FORM = {form!r}
OP = {op!r}
LENGTHS = {lengths!r}
'''

_FROM_TENSORS = '''
from pathlib import Path

_data = torch.load(Path(__file__).with_name({data!r}))
query, key, value = _data["query"], _data["key"], _data["value"]
keywords = {{**_data["tensors"], **{constants}}}
'''

_FROM_CASE = '''
from {module} import {cls}

case = {case}
built = case.build(FORM)
query, key, value, keywords = built.query, built.key, built.value, dict(built.kwargs)
'''

_BODY = '''

def lengths_as(keywords, graph, device):
    """Lengths as int lists (eager torch_npu) or int64 device tensors (TorchAir); other tensors to device."""
    out = {}
    for name, v in keywords.items():
        if name in LENGTHS and v is not None:
            values = [int(x) for x in (v.tolist() if isinstance(v, torch.Tensor) else v)]
            v = torch.tensor(values, dtype=torch.int64, device=device) if graph else values
        elif isinstance(v, torch.Tensor):
            v = v.to(device)
        out[name] = v
    return out


class Model(torch.nn.Module):
    def __init__(self, op, keywords):
        super().__init__()
        self.op = op
        self.names = [n for n, v in keywords.items() if isinstance(v, torch.Tensor)]
        self.constants = {n: v for n, v in keywords.items() if not isinstance(v, torch.Tensor)}

    def forward(self, q, k, v, *tensors):
        return self.op(q, k, v, **dict(zip(self.names, tensors)), **self.constants)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="npu", help="torch device of the real op (default: npu)")
    args = parser.parse_args()
    try:
        import torch_npu
        import torchair
        from torchair.configs.compiler_config import CompilerConfig
    except Exception as exc:  # ImportError: libhccl.so ... without CANN
        print(f"torch_npu unavailable ({type(exc).__name__}: {exc}); running fia_kit's reference instead")
        from fia_kit import reference
        from fia_kit.backends import lookalike

        device, eager_op, graph_op, backend = "cpu", getattr(reference, OP), lookalike.op("torchair." + FORM), "aot_eager"
    else:
        config = CompilerConfig()
        config.mode = "max-autotune"
        config.debug.graph_dump.type = "pbtxt"
        device, eager_op, graph_op = args.device, getattr(torch_npu, OP), getattr(torchair.ops, OP)
        backend = torchair.get_npu_backend(compiler_config=config)
    q, k, v = (t.to(device) for t in (query, key, value))
    eager_out, eager_lse = eager_op(q, k, v, **lengths_as(keywords, False, device))
    graph_keywords = lengths_as(keywords, True, device)
    model = Model(graph_op, graph_keywords)
    compiled = torch.compile(model, backend=backend, dynamic=False, fullgraph=True)
    with torch.no_grad():
        graph_out, graph_lse = compiled(q, k, v, *(graph_keywords[n] for n in model.names))
    print("eager attention_out", tuple(eager_out.shape), eager_out.dtype, "softmax_lse", tuple(eager_lse.shape))
    print("graph attention_out", tuple(graph_out.shape), graph_out.dtype, "softmax_lse", tuple(graph_lse.shape))
    diff = (eager_out.float() - graph_out.float()).abs().max().item() if eager_out.numel() else 0.0
    print(f"max |eager - graph| attention_out: {diff:.3g}")


if __name__ == "__main__":
    main()
'''


def to_script(call_or_case: Any, path: str | Path, form: str | None = None) -> Path:
    """Write a standalone reproducer for ``call_or_case`` to ``path`` (and ``<stem>.pt`` for raw tensors).

    Args:
        call_or_case: a ``FIACall``, or a builders case (``build(form)`` -> object with query/key/value/kwargs).
        path: the script to write.
        form: the form a case is built in (default: its ``natural_form``, else "v1"); a FIACall keeps its own.
    Returns:
        The script's path.
    """
    path = Path(path)
    if not callable(getattr(call_or_case, "build", None)) and callable(getattr(call_or_case, "to_fia_call", None)):
        call_or_case = call_or_case.to_fia_call()  # e.g. a captured call (fia_kit.load_capture): its own form
    if isinstance(call_or_case, FIACall):
        form = call_or_case.form
        source = _tensor_source(call_or_case, path)
    else:
        form = version_of(form or getattr(call_or_case, "natural_form", "v1"))
        case_source = _case_source(call_or_case)
        if case_source is None:
            from .backends import as_call

            call = as_call(call_or_case, form)
            form, source = call.form, _tensor_source(call, path)
        else:
            source = case_source
    header = _HEADER.format(op=OP_NAMES[form], form=form, name=path.name, lengths=LENGTH_PARAMETERS)
    path.write_text(header + source + _BODY)
    return path


def _tensor_source(call: FIACall, path: Path) -> str:
    """Save the call's tensors next to the script and return the code that loads them."""
    keywords = call.keywords()
    tensors = {n: v.detach().cpu() for n, v in keywords.items() if isinstance(v, torch.Tensor)
               and n not in LENGTH_PARAMETERS}
    constants = {n: (list(read_lengths(n, v)) if n in LENGTH_PARAMETERS and v is not None else v)
                 for n, v in keywords.items() if n not in tensors}
    data = path.with_suffix(".pt")
    torch.save({"query": call.query.detach().cpu(), "key": call.key.detach().cpu(),
                "value": call.value.detach().cpu(), "tensors": tensors}, data)
    return _FROM_TENSORS.format(data=data.name, constants=repr(constants))


def _case_source(case: Any) -> str | None:
    """Code re-creating ``case`` from its repr, or None where the repr does not round-trip."""
    cls = type(case)
    if not dataclasses.is_dataclass(case) or not callable(getattr(case, "build", None)):
        return None
    text = repr(case)
    try:
        module = importlib.import_module(cls.__module__)
        if eval(text, vars(module)) != case:  # noqa: S307 (our own repr, checked before use)
            return None
    except Exception:
        return None
    return _FROM_CASE.format(module=cls.__module__, cls=cls.__name__, case=text)
