"""The fixed per-dtype tolerances ``compare`` and the explorer judge a backend by (FlashInfer-style)."""

from __future__ import annotations

import torch

# dtype -> (atol, rtol): fp16 1e-3, bf16 1e-2.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}
LSE_TOLERANCE = (1e-4, 1e-4)  # LSE is float32 whatever the query dtype
