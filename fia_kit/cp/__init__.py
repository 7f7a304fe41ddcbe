"""Context parallelism on FIA: the LSE across ranks, on a real torch.distributed group (docs/context_parallel.md).

    from fia_kit import cp
    cp.local_lengths([5, 1, 8], world_size=2)                      # (W, B): each rank's tokens of each request
    out, lse_out = cp.npu_attention_update(lses, outs, 1)          # torch_npu.npu_attention_update's twin
    reports = cp.launch(cp.scenarios.all_cases, world_size=2)      # gloo ranks on 127.0.0.1, bounded in time
    reports = cp.run_in_process(cp.scenarios.all_cases, world_size=2)   # the same ranks as threads

Modules: ``update`` (the twin), ``layouts`` (which rank holds which token), ``groups`` (a torch.distributed group,
an in-process group, the launcher), ``recipes`` (vLLM's and vllm-ascend's call sites, argument for argument),
``validation`` (against float64 single-device attention), ``scenarios`` (worked cases), ``figures`` (plotly,
loaded on first use).
"""

import importlib
from typing import Any

from . import groups, layouts, recipes, scenarios, update, validation
from .groups import Group, InProcessGroup, RankError, TorchGroup, init_from_env, launch, run_in_process
from .layouts import RankCache, local_lengths, owner, shard_paged, zigzag_chunks, zigzag_positions
from .recipes import (
    chunked_prefill,
    dcp_decode,
    dcp_decode_mla,
    dcp_mtp_decode,
    fia_op,
    merge_ag_rs,
    mtp_mask,
    ring_prefill,
    update_out_and_lse,
)
from .update import npu_attention_update
from .validation import Report, compare, golden_attention, sentinel_counts

__all__ = [
    "npu_attention_update", "local_lengths", "owner", "shard_paged", "RankCache", "zigzag_chunks", "zigzag_positions",
    "Group", "TorchGroup", "InProcessGroup", "RankError", "launch", "run_in_process", "init_from_env",
    "fia_op", "dcp_decode", "dcp_decode_mla", "merge_ag_rs", "chunked_prefill", "update_out_and_lse", "mtp_mask",
    "dcp_mtp_decode", "ring_prefill", "Report", "compare", "golden_attention", "sentinel_counts",
    "groups", "layouts", "recipes", "scenarios", "update", "validation", "figures",
]


def __getattr__(name: str) -> Any:
    """``fia_kit.cp.figures`` (plotly) loads on first use."""
    if name == "figures":
        value = importlib.import_module(".figures", __name__)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fia_kit.cp' has no attribute {name!r}")
