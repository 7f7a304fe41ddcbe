"""Which host route the op sends a call down on Atlas A2/A3, decided by the kernel's own router (spec 25.1).

    TilingFusedInferAttentionScore (op_host/fused_infer_attention_score_tiling.cpp:2355)
      RouteToFia(ctx)                        -> "fia"        the FIA checkers (op_host/checkers/), tiling v3
      else IsUsingFAI(ctx)                   -> "split-fuse" the TND split-fuse checks (CheckFAIAvailability)
      else IsUsingIFA(ctx)                   -> "legacy-ifa" incre_flash_attention's tiling and checks
      else                                   -> "legacy-pfa" prompt_flash_attention's tiling and checks

``RouteToFia`` (arch22/fused_infer_attention_score_tiling_v3.cpp:1371) takes every float16/bfloat16 call whose key
has the query's dtype, except (a) the legacy-preferred decode templates (D 256 without a shared prefix, or D 80 with
one: S_q = 1, MHA, not paged, BSH/BSND/BNSD, v3.cpp:1363) and (b) rope-less TND calls that meet the split-fuse
conditions (``CheckSpecConditions``, v3.cpp:1208). Quantised calls (int8/int4 K/V, an int8 query) never take the FIA
route on A2/A3: they go to the legacy tilings (or to split-fuse when their shape meets ``IsUsingFAI``).

On Ascend950 (DAV_3510) every call takes the arch35 FIA implementation (tiling.cpp:2430): the route is "fia".
float32 / float64 inputs are the kit's extension (the op takes float16/bfloat16): they are routed as float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROUTES = ("fia", "split-fuse", "legacy-ifa", "legacy-pfa")
ROUTER_SOURCE = "attention/fused_infer_attention_score/op_host/fused_infer_attention_score_tiling.cpp:2362"

_FLOAT = (torch.float16, torch.bfloat16)
_KIT_FLOAT = (torch.float32, torch.float64)
_IFA_LAYOUTS = ("BSH", "BNSD", "BSND", "BNSD_NBSD", "BSND_NBSD", "BSH_NBSD")
_MAX_SPLIT_FUSE_BLOCK = 512  # v3.cpp:1176 MAX_BLOCKSIZE


@dataclass(frozen=True)
class RouteFacts:
    """What the router reads of a call (the kernel's names in brackets).

    Attributes:
        product: "A2", "A3" or "Ascend950" (``fia_kit.targets``).
        query_dtype, key_dtype: the tensors' dtypes (int4 K/V arrive as int32).
        layout: input_layout.
        query_s: S of the query for BSH/BSND/BNSD-family layouts; for TND the longest per-batch query length.
        head_dim, value_dim, rope_dim: Q/K D, V D, and query_rope's D (0 without rope).
        num_heads, num_kv_heads: N_q and the resolved N_kv (MHA when equal).
        paged, cache_rank, block_size: block_table given; the cache's rank (3 BnBsH, 4 BnNBsD, 5 NZ); block size.
        prefix: key/value_shared_prefix given.
        sparse_mode, mask, inner_precise: as given (the router reads the caller's sparse_mode).
        sink_dtype: learnable_sink's dtype, or None.
        quant_out: quant_scale2 (int8 output) given.
        antiquant_float: antiquant scale and offset both given as float32 (``IsAtbIfa``).
    """

    product: str
    query_dtype: torch.dtype
    key_dtype: torch.dtype
    layout: str
    query_s: int
    head_dim: int
    value_dim: int
    rope_dim: int
    num_heads: int
    num_kv_heads: int
    paged: bool
    cache_rank: int
    block_size: int
    prefix: bool
    sparse_mode: int
    mask: bool
    inner_precise: int
    sink_dtype: torch.dtype | None = None
    quant_out: bool = False
    antiquant_float: bool = False

    @property
    def mha(self) -> bool:
        return self.num_heads == self.num_kv_heads

    @property
    def rope(self) -> bool:
        return self.rope_dim > 0

    def dtype_as_op(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float16 if dtype in _KIT_FLOAT else dtype


def decide(f: RouteFacts) -> str:
    """The route of the call ``f`` describes: one of ``ROUTES``."""
    if f.product == "Ascend950":
        return "fia"
    if route_to_fia(f):
        return "fia"
    if split_fuse_conditions(f, check_quant_out=False):  # IsUsingFAI, tiling.cpp:1607
        return "split-fuse"
    if legacy_ifa(f):  # IsUsingIFA, tiling.cpp:1844
        return "legacy-ifa"
    return "legacy-pfa"


def route_to_fia(f: RouteFacts) -> bool:
    """``RouteToFia`` (v3.cpp:1371) on A2/A3."""
    q, k = f.dtype_as_op(f.query_dtype), f.dtype_as_op(f.key_dtype)
    if q not in _FLOAT or q != k:
        return False
    if legacy_template_preferred(f):
        return False
    if not f.rope and split_fuse_conditions(f, check_quant_out=True):
        return False
    return f.layout != "NSD"


def legacy_template_preferred(f: RouteFacts) -> bool:
    """``IsLegacyTemplatePreferred`` (v3.cpp:1363): MHA decode with D 256 (no prefix) or D 80 (with a prefix)."""
    return (f.head_dim == f.value_dim and not f.rope and f.query_s == 1 and f.layout in ("BNSD", "BSND", "BSH")
            and ((f.head_dim == 256 and not f.prefix) or (f.head_dim == 80 and f.prefix)) and f.mha
            and not f.paged)


def split_fuse_conditions(f: RouteFacts, *, check_quant_out: bool) -> bool:
    """``CheckSpecConditions`` (v3.cpp:1208; with ``check_quant_out``) / ``IsUsingFAI`` (tiling.cpp:1607)."""
    if f.layout != "TND" or f.rope or f.sparse_mode not in (0, 3, 4):
        return False
    if f.sink_dtype == torch.bfloat16 and f.head_dim == 64:
        return False
    q = f.dtype_as_op(f.query_dtype)
    mha_ok = f.mha and not (q == torch.bfloat16 and f.inner_precise == 1) and not (f.sparse_mode == 0 and f.mask)
    gqa_ok = not f.mha and f.inner_precise == 0
    if not (mha_ok or gqa_ok) or (check_quant_out and f.quant_out):
        return False
    same_d = f.head_dim <= 256 and f.head_dim == f.value_dim
    if not f.paged:
        return same_d
    block_ok = f.block_size % 16 == 0 and f.block_size <= _MAX_SPLIT_FUSE_BLOCK
    if f.cache_rank == 3:
        return same_d and block_ok
    if f.cache_rank == 5:
        return same_d and block_ok and f.head_dim not in (64, 128)
    return False


def legacy_ifa(f: RouteFacts) -> bool:
    """``IsUsingIFA`` (tiling.cpp:1844): IsGqaIfa, IsGqaMtp, IsAtbIfa, IsMlaIfaOrMtp, IsSlidingAttention."""
    tnd = f.layout in ("TND", "TND_NTD")
    if not f.rope:
        if (tnd and f.head_dim == 512) or (f.layout in _IFA_LAYOUTS and f.query_s == 1):  # IsGqaIfa :1697
            return True
        if _gqa_mtp(f):
            return True
        return (tnd and f.key_dtype == torch.int8 and f.query_dtype != torch.int8 and f.paged  # IsAtbIfa :1777
                and f.head_dim != 512 and f.antiquant_float)
    if tnd and f.head_dim == 512:  # IsMlaIfaOrMtp :1803
        return True
    if f.layout in _IFA_LAYOUTS:
        if f.query_s == 1 or (1 < f.query_s <= 32 and f.head_dim == 512):
            return True
        return f.head_dim == 512 and f.sparse_mode == 4  # IsSlidingAttention :1823
    return False


def _gqa_mtp(f: RouteFacts) -> bool:
    """``IsGqaMtp`` (tiling.cpp:1744): an NZ (5-D) cache, 1 <= S_q <= 16; TND needs D 128, bf16 Q, int8 K/V."""
    if f.layout not in (*_IFA_LAYOUTS, "TND") or not (f.paged and f.cache_rank == 5):
        return False
    if not 1 <= f.query_s <= 16:
        return False
    if f.layout == "TND":
        return f.head_dim == 128 and f.query_dtype == torch.bfloat16 and f.key_dtype == torch.int8
    return True


def legacy_ifa_flag(f: RouteFacts) -> bool:
    """``FiaInfoParser::GetLegacyIfaFlag`` (info_parser.cpp:264): inside the FIA route, BSH/BSND/BNSD with S_q = 1,
    Q/K D = V D and no rope is treated as the old incremental op (its LSE sentinel, A2's forced sparse_mode 0)."""
    return f.layout in ("BSH", "BSND", "BNSD") and f.query_s == 1 and f.head_dim == f.value_dim and not f.rope


def sink_dtype(route: str, query_dtype: torch.dtype) -> torch.dtype:
    """learnable_sink's dtype on ``route`` (spec 13): the query's on split-fuse (SF-SINK-001), bfloat16 on the FIA
    route (FIA-SINK-001); the kit's float32/float64 queries keep their own."""
    if query_dtype in _KIT_FLOAT or route == "split-fuse":
        return query_dtype
    return torch.bfloat16
