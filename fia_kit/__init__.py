"""fia-kit: learn, check and profile Ascend's fused inference attention operator (FIA).

The kit's reference implementation (``fia_kit.reference``) is the op on any machine without an NPU; on an Ascend
box the same calls run torch_npu's op and compare it with the reference. "spec N.N" in docstrings and errors means
section N.N of the repository's docs/ (docs/README.md maps sections to files).
"""

from typing import TYPE_CHECKING, Any

from . import environment  # noqa: F401  (first: sets TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch loads)
from .backends import compare, run
from .capture import capture, load_capture
from .errors import FIAArgumentError
from .lint import lint
from .planning import Plan, plan
from .reference import (
    compute_dtype,
    npu_fused_infer_attention_score,
    npu_fused_infer_attention_score_v2,
)

if TYPE_CHECKING:
    from .explorer import Explorer

__all__ = [
    "FIAArgumentError",
    "Plan",
    "capture",
    "load_capture",
    "lint",
    "plan",
    "compare",
    "run",
    "compute_dtype",
    "explore",
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
]
__version__ = "0.1.0"


def explore(case: "Any" = None, backend: str = "reference") -> "Explorer":
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
