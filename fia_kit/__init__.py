"""fia-kit: learn, check and profile Ascend's fused inference attention operator (FIA).

The kit's reference implementation (``fia_kit.reference``) is the op on any machine without an NPU; on an Ascend
box the same calls run torch_npu's op and compare it with the reference.
"""

from . import environment  # noqa: F401  (first: sets TORCH_DEVICE_BACKEND_AUTOLOAD=0 before torch loads)
from .errors import FIAArgumentError
from .reference import (
    compute_dtype,
    npu_fused_infer_attention_score,
    npu_fused_infer_attention_score_v2,
)

__all__ = [
    "FIAArgumentError",
    "compute_dtype",
    "npu_fused_infer_attention_score",
    "npu_fused_infer_attention_score_v2",
]
__version__ = "0.1.0"
