"""Fake torch_npu whose import succeeds: one fake NPU and a fake ``torchair`` module.

It also prints a line, as real torch_npu's warnings may, to check that the probe
only reads its own JSON line.
"""

import sys
import types

import torch

from torch_npu.version import __version__  # noqa: F401

print("fake torch_npu: noise on stdout")
torch.npu = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    get_device_name=lambda device=0: "Ascend910B3 (fake)",
)
sys.modules["torchair"] = types.ModuleType("torchair")
