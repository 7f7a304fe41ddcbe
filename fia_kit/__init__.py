"""fia-kit: learn, check and profile Ascend's fused inference attention operator (FIA).

The kit's reference implementation (``fia_kit.reference``) is the op on any machine without an NPU; on an Ascend
box the same calls run torch_npu's op and compare it with the reference. "spec N.N" in docstrings and errors means
section N.N of the repository's docs/ (docs/README.md maps sections to files).
"""

from typing import TYPE_CHECKING

from . import environment  # noqa: F401  (first: sets TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch loads)
from .backends import compare, run
from .errors import FIAArgumentError
from .planning import Plan, plan
from .reference import (
    compute_dtype,
    npu_fused_infer_attention_score,
    npu_fused_infer_attention_score_v2,
)

if TYPE_CHECKING:
    from .case import Case
    from .explorer import Explorer

__all__ = [
    "FIAArgumentError",
    "Plan",
    "plan",
    "compare",
    "run",
    "compute_dtype",
    "explore",
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
]
__version__ = "0.1.0"


def explore(case: "Case | None" = None, backend: str = "reference") -> "Explorer":
    """Open the interactive explorer on a ``fia_kit.case.Case`` (default case if None); display the result.

    Imports ipywidgets and plotly on first use only; see ``fia_kit.explorer.explore``.
    """
    from .explorer import explore as _explore

    return _explore(case, backend)
