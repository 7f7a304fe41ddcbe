"""What this CPU multiplies in hardware, for the reference's choice of product dtype (``fia_kit.kernel``).

torch (2.13) has no CPU matmul that takes bfloat16/float16 inputs and writes float32, and its bfloat16/float16
matmuls are fast only where oneDNN runs them on the matrix units or AVX-512 BF16/FP16 instructions: on an AVX2 CPU
torch multiplies them in a generic loop, about 60x slower than converting to float32 (benchmarks/README.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# /proc/cpuinfo flags of the instructions oneDNN multiplies each half dtype with (any one suffices)
HALF_MATMUL_FLAGS: dict[torch.dtype, tuple[str, ...]] = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
                          []))


@functools.cache
def multiplies_in_hardware(dtype: torch.dtype) -> bool:
    """Whether torch's CPU matmul in ``dtype`` (bfloat16 or float16) runs on AMX or AVX-512 BF16/FP16 here.

    Both must hold: oneDNN takes the dtype (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` /
    ``_is_mkldnn_fp16_supported``, the test torch's own matmul routes by) and the CPU has one of
    ``HALF_MATMUL_FLAGS[dtype]`` (oneDNN also accepts bfloat16 on plain AVX-512, by emulation). False for other
    dtypes.
    """
    supported = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
                 torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(dtype)
    if supported is None or not torch.backends.mkldnn.is_available() or not supported():
        return False
    return any(flag in cpu_flags() for flag in HALF_MATMUL_FLAGS[dtype])
