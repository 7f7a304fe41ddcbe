"""fia-kit: learn, check and profile Ascend's fused inference attention operator (FIA).

    import fia_kit
    p = fia_kit.plan("v1", q, k, v, num_heads=8, input_layout="BNSD")   # parse and validate once
    out, lse = fia_kit.run(p, "reference").attention_out, ...           # any registered backend takes the plan
    table = fia_kit.compare(fia_kit.Case(sinks=True))                    # every backend against the reference

The kit's reference implementation (``fia_kit.reference``) is the op on any machine without an NPU; on an Ascend
box the same calls run torch_npu's op and compare it with the reference. "spec N.N" in docstrings and errors means
section N.N of the repository's docs/ (docs/README.md maps sections to files).

``__all__`` is the public surface. Names whose modules are heavy (plotly figures, the ipywidgets explorer) load on
first use, so ``import fia_kit`` loads neither. Importing sets ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` unless the user
set it (``fia_kit.environment``); it has no other side effect.
"""

import importlib
from typing import Any

from . import environment  # first: sets TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch loads
from .backends import (
    TOLERANCES,
    Comparison,
    GraphOptions,
    RunResult,
    backend_names,
    compare,
    founding_example,
    register_backend,
    run,
)
from .call import FIACall, parse_call
from .capture import capture, load_capture
from .environment import detect
from .errors import FIAArgumentError
from .kernel import ReferenceResult, RowStatus
from .lint import lint
from .lse import merge_attention
from .masks import compressed_causal_mask
from .planning import Plan, plan
from .reference import (
    compute_dtype,
    npu_fused_infer_attention_score,
    npu_fused_infer_attention_score_v2,
)
from .signatures import FORMS
from .targets import Target, target
from .visibility import Visibility

# name -> module (relative to fia_kit) that defines it, imported on first use.
_LAZY: dict[str, str] = {
    "Case": ".case",
    "BuiltCall": ".case",
    "Explorer": ".explorer",
    **{name: ".figures" for name in ("visibility_figure", "probabilities_figure", "output_figure", "lse_figure",
                                     "difference_figure", "paged_figure", "layout_figure", "timing_chart",
                                     "roofline_chart")},
    "profile": ".profiling",
    "compare_runs": ".profiling",
    "graph_modes": ".mode_matrix",
    "read_ascend": ".ascend_profile",
    "method12": ".precision",
    "captured_graph": ".backends.compiled",
    "npu_attention_update": ".cp.update",
    "explain": ".rules.explain",
}
# Submodules users call into as rooms of their own (``fia_kit.figures.pool``, ``fia_kit.builders.to_paged``).
_SUBMODULES = ("builders", "diagrams", "figures", "layouts", "masks", "paged", "profiling", "quant", "reference",
               "roofline", "signatures", "cp", "port")

__all__ = [
    # plan once, run anywhere
    "plan", "Plan", "FIACall", "parse_call", "FORMS", "Visibility", "FIAArgumentError",
    "run", "compare", "RunResult", "Comparison", "TOLERANCES", "register_backend", "backend_names",
    "GraphOptions", "detect", "environment",
    # the op itself (the reference)
    "npu_fused_infer_attention_score", "npu_fused_infer_attention_score_v2", "compute_dtype",
    "ReferenceResult", "RowStatus", "compressed_causal_mask",
    # inputs: cases, captured calls, the founding example; the lint of a call
    "Case", "BuiltCall", "founding_example", "capture", "load_capture", "lint",
    # figures, widgets, profiling (loaded on first use)
    "visibility_figure", "probabilities_figure", "output_figure", "lse_figure", "difference_figure",
    "paged_figure", "layout_figure", "timing_chart", "roofline_chart", "explore", "Explorer", "profile",
    # profiles torch_npu / msprof wrote, the regression gate, the graph-mode matrix, the op team's precision rule
    "read_ascend", "compare_runs", "graph_modes", "method12", "captured_graph",
    *_SUBMODULES,
    # products and versions; context-parallel merging of partial results
    "target", "Target", "merge_attention",
    # context parallel: torch_npu.npu_attention_update's twin; fia_kit.cp (layouts, recipes, groups, validation)
    "npu_attention_update",
    # the NPU's error text, explained by the kernel's rule book
    "explain",
]
__version__ = "0.1.0"


def explore(case: Any = None, backend: str = "reference") -> Any:
    """Open the interactive explorer on a ``fia_kit.case.Case`` (default case if None); display the result.

    ``case`` may also be a call, a Plan or a captured call (``load_capture``): it is turned into a case with
    ``Case.from_call``, which keeps the call's own tensors until a control changes it.
    Imports ipywidgets and plotly on first use only; see ``fia_kit.explorer.explore``.
    """
    from .case import Case
    from .explorer import explore as _explore

    if case is not None and not isinstance(case, Case):
        case = Case.from_call(case)
    return _explore(case, backend)


def __getattr__(name: str) -> Any:
    """Load a lazily exported name (``_LAZY``) or submodule (``_SUBMODULES``) on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'fia_kit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
