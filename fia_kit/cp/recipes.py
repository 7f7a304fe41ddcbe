"""The context-parallel call sites of vLLM and vllm-ascend, argument for argument, on a ``fia_kit.cp.Group``.

Each recipe is one rank's part: it makes the FIA call(s) the call site makes, with the same keywords, through
``op`` (default: the kit's reference ``fia_kit.npu_fused_infer_attention_score``, which ``fia_kit.capture``
records; ``fia_op("flex")`` runs any backend; on an Ascend box pass ``torch_npu.npu_fused_infer_attention_score``)
and merges with ``update`` (default: the twin ``fia_kit.npu_attention_update``; on Ascend
``torch_npu.npu_attention_update``). Sources, vllm-ascend at 182b75ea (2026-08-22), vLLM at 05cce93f:

| recipe | call site |
|---|---|
| ``dcp_decode`` | ``vllm_ascend/attention/context_parallel/attention_cp.py:278-393`` (``_forward_decode_dcp``, TND) and ``common_cp.py:139-195`` (``_process_attn_out_lse``, ``_npu_attention_update``) |
| ``dcp_decode_mla`` | ``context_parallel/mla_cp.py:283-443`` (``_forward_decode``, BNSD, D = kv_lora_rank 512) |
| ``merge_ag_rs`` | vLLM ``vllm/v1/attention/ops/common.py`` (``cp_lse_ag_out_rs``, ``correct_attn_out``) |
| ``chunked_prefill`` | ``attention_cp.py:428-524, 571-607`` (context FIA, all_to_all, ``common_cp.py:222-233`` ``_update_out_and_lse``), ``common_cp.py:198-213`` |
| ``mtp_mask`` / ``dcp_mtp_decode`` | ``vllm_ascend/worker/dcp_utils.py:645-693`` (``generate_mtp_attention_mask_for_decode``), ``attention_cp.py:298-306, 386-388`` |
| ``ring_prefill`` | the zigzag ring of prefill context parallel: each step one FIA call on the visiting K/V, merged with update_type 1 |

Shapes: T tokens, H this rank's query heads, W ranks, N_kv KV heads (replicated on every DCP rank), D head dim.
Tensors the recipes make follow the query's device, so an HCCL group with NPU tensors takes the same code [inferred:
not run on an Ascend box here]; lengths go to the op as Python lists, as the call sites pass them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import FIAArgumentError
from .groups import Group
from .layouts import RankCache, local_lengths
from .update import npu_attention_update

__all__ = ["fia_op", "dcp_decode", "dcp_decode_mla", "merge_ag_rs", "process_attn_out_lse", "attention_update_merge",
           "update_out_and_lse", "chunked_prefill", "mtp_mask", "dcp_mtp_decode", "ring_prefill"]

Op = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Update = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def fia_op(backend: str | None = None) -> Op:
    """The per-rank FIA call: the kit's reference entry (None), or ``fia_kit.run(fia_kit.plan(...), backend)``."""
    from .. import reference

    if backend is None:
        return reference.npu_fused_infer_attention_score
    from ..backends import run
    from ..planning import plan

    def op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs: Any):
        result = run(plan("v1", query, key, value, **kwargs), backend)
        return result.attention_out, result.softmax_lse
    return op


def _ops(op: Op | None, update: Update | None) -> tuple[Op, Update]:
    return op or fia_op(), update or npu_attention_update


# ------------------------------------------------------------------------------------------------ DCP decode

def process_attn_out_lse(group: Group, attn_output: torch.Tensor, softmax_lse: torch.Tensor) -> torch.Tensor:
    """common_cp.py ``_process_attn_out_lse``: [out | lse] in float32, heads to their rank by all_to_all_single.

    Args:
        attn_output: (T, W*H, D). softmax_lse: (T, W*H, 1).
    Returns:
        (T, W*H, D+1) float32: along dim 1, W blocks of this rank's H heads, block j computed by rank j.
    """
    attn_out_lse = torch.cat([attn_output.to(torch.float32), softmax_lse.to(torch.float32)], dim=-1)
    if group.world_size > 1:
        attn_out_lse = attn_out_lse.permute([1, 2, 0]).contiguous()  # (W*H, D+1, T)
        received = torch.empty_like(attn_out_lse)
        group.all_to_all_single(received, attn_out_lse)
        attn_out_lse = received.permute([2, 0, 1])
    return attn_out_lse


def attention_update_merge(attn_out_lse: torch.Tensor, head_size: int, world_size: int,
                           update: Update | None = None) -> torch.Tensor:
    """common_cp.py ``_npu_attention_update``: (T, W*H, D+1) -> W partitions -> ``npu_attention_update`` -> (T, H, D)."""
    update = update or npu_attention_update
    s, h_total, d_plus_1 = attn_out_lse.shape
    h, d = h_total // world_size, head_size
    if d_plus_1 != d + 1:
        raise FIAArgumentError("attn_out_lse", f"dim 2 must be head_size + 1 = {d + 1}", tuple(attn_out_lse.shape))
    x = attn_out_lse.view(s, world_size, h, d_plus_1).permute(1, 0, 2, 3).contiguous()
    out_flat, lse_flat = torch.split(x, [d, 1], dim=-1)
    out, _ = update(list(lse_flat.flatten(1, -1).unbind(0)), list(out_flat.flatten(1, 2).unbind(0)), 0)
    return out.view(-1, h, d)


def dcp_decode(group: Group, query: torch.Tensor, cache: RankCache, *, num_heads: int, num_kv_heads: int,
               scale: float, op: Op | None = None, update: Update | None = None,
               merge: str = "attention_update") -> tuple[torch.Tensor, torch.Tensor]:
    """GQA DCP decode, one rank (attention_cp.py ``_forward_decode_dcp``, no speculative decoding: TND).

    Args:
        query: (T, H, D), one token per request (T = B), this rank's H = num_heads heads.
        cache: this rank's ``RankCache`` (cache_rank 3: (blocks, block_size, N_kv*D)).
        merge: "attention_update" (vllm-ascend: all_to_all_single of [out|lse], ``npu_attention_update``) or
            "ag_rs" (vLLM: all-gather of the LSE, reduce-scatter of the corrected output, ``merge_ag_rs``).
    Returns:
        (out (T, H, D) float32, local_lse (T, W*H, 1): the LSE this rank's FIA call wrote, for the sentinel report).
    """
    if merge not in ("attention_update", "ag_rs"):
        raise FIAArgumentError("merge", 'must be "attention_update" or "ag_rs"', merge)
    op, update = _ops(op, update)
    query = group.all_gather(query, 1) if group.world_size > 1 else query
    heads = num_heads * group.world_size
    t = query.shape[0]
    attn_out, attn_lse = op(query, cache.key, cache.value, num_heads=heads, num_key_value_heads=num_kv_heads,
                            input_layout="TND", atten_mask=None, scale=scale, antiquant_mode=0,
                            antiquant_scale=None, softmax_lse_flag=True, block_table=cache.block_table,
                            block_size=cache.key.shape[1], actual_seq_lengths_kv=cache.lengths.tolist(),
                            actual_seq_lengths=list(range(1, t + 1)))
    if merge == "ag_rs":
        return merge_ag_rs(group, attn_out.to(torch.float32), attn_lse[..., 0]), attn_lse
    merged = attention_update_merge(process_attn_out_lse(group, attn_out, attn_lse), query.shape[-1],
                                    group.world_size, update)
    return merged, attn_lse


def dcp_decode_mla(group: Group, q_nope: torch.Tensor, q_pe: torch.Tensor, cache: RankCache, *, num_heads: int,
                   scale: float, op: Op | None = None, update: Update | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA DCP decode, one rank (mla_cp.py ``_forward_decode``, no speculative decoding: BNSD, one KV head).

    Args:
        q_nope: (T, H, kv_lora_rank), q_pe: (T, H, rope_dim), this rank's heads.
        cache: ``RankCache`` with cache_rank 4: key = k_nope (blocks, 1, block_size, kv_lora_rank), value = k_pe
            (blocks, 1, block_size, rope_dim) (the rope part rides in ``value``; the call passes k_nope twice).
    Returns:
        (out (T, H, kv_lora_rank) float32, before the V up-projection; local_lse (T, W*H, 1)).
    """
    op, update = _ops(op, update)
    if group.world_size > 1:  # common_cp.py _dcp_all_gather_fragments: one all-gather of [q_nope | q_pe]
        gathered = group.all_gather(torch.cat([q_nope, q_pe], dim=-1), 1)
        q_nope, q_pe = torch.split(gathered, [q_nope.shape[-1], q_pe.shape[-1]], dim=-1)
    heads = num_heads * group.world_size
    t = q_nope.shape[0]
    k_nope, k_pe = cache.key, cache.value
    attn_output, softmax_lse = op(
        q_nope.reshape(t, heads, 1, -1).contiguous(), k_nope, k_nope, query_rope=q_pe.reshape(t, heads, 1, -1),
        key_rope=k_pe, num_heads=heads, num_key_value_heads=1, input_layout="BNSD", atten_mask=None, sparse_mode=0,
        scale=scale, antiquant_mode=0, antiquant_scale=None, block_table=cache.block_table,
        block_size=k_nope.shape[2], actual_seq_lengths=None, actual_seq_lengths_kv=cache.lengths.tolist(),
        softmax_lse_flag=True)
    b, n, s, d = attn_output.shape
    attn_output = attn_output.permute(0, 2, 1, 3).reshape(b * s, n, d)
    softmax_lse = softmax_lse.permute(0, 2, 1, 3).reshape(b * s, n, 1)
    merged = attention_update_merge(process_attn_out_lse(group, attn_output, softmax_lse), d, group.world_size,
                                    update)
    return merged, softmax_lse


def merge_ag_rs(group: Group, cp_attn_out: torch.Tensor, cp_attn_lse: torch.Tensor) -> torch.Tensor:
    """vLLM ``cp_lse_ag_out_rs``: all-gather the LSE, correct this rank's output, reduce-scatter over heads.

    ``correct_attn_out``'s rule, in float32: an LSE of +inf or NaN counts as -inf; a row whose max is -inf takes
    max 0; a factor exp(lse_rank - lse) that is NaN or +inf counts as 0. So a row empty on every rank gives 0, and
    no sentinel gives NaN.

    Args:
        cp_attn_out: (B, W*H, D). cp_attn_lse: (B, W*H).
    Returns:
        (B, H, D): this rank's heads, summed over ranks.
    """
    lses = group.all_gather(cp_attn_lse.contiguous(), 0).view(group.world_size, *cp_attn_lse.shape)
    clean = torch.where(torch.isnan(lses) | (lses == float("inf")), float("-inf"), lses)
    top = clean.amax(dim=0)
    top = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    lse = torch.log(torch.exp(clean - top).sum(dim=0)) + top
    shift = lses[group.rank] - lse
    shift = torch.where(torch.isnan(shift) | (shift == float("inf")), float("-inf"), shift)
    factor = torch.exp(shift).unsqueeze(-1)
    out = torch.where(factor == 0, torch.zeros_like(cp_attn_out), cp_attn_out * factor)
    return group.reduce_scatter(out, dim=1)


# ------------------------------------------------------------------------------------------------ chunked prefill

def update_out_and_lse(out_list: torch.Tensor, lse_list: torch.Tensor, *, fixed: bool = False,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """common_cp.py ``_update_out_and_lse``: the torch log-sum-exp merge of the prefill context's partitions.

    As vllm-ascend writes it (``fixed=False``), a partition whose LSE is +inf (the prompt route's no-key value:
    this rank holds none of the request's context) makes ``logsumexp`` +inf and exp(+inf - +inf) NaN.
    ``fixed=True`` first turns +inf into -inf, as ``npu_attention_update`` does, and as vllm-ascend's own
    ``batch_chunk_seq_mask`` did before PR #6013 (commit 8378bc28b0) removed it.

    Args:
        out_list: (W, T, H, D). lse_list: (W, T, H, 1).
    Returns:
        (out (T, H, D), lse (T, H, 1)).
    """
    if fixed:
        lse_list = lse_list.masked_fill(lse_list == float("inf"), float("-inf"))
    lse_final = torch.logsumexp(lse_list, dim=0, keepdim=False)
    out_final = torch.sum(torch.exp(lse_list - lse_final) * out_list, dim=0)
    return out_final, lse_final


def chunked_prefill(group: Group, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    context: Sequence[tuple[torch.Tensor, torch.Tensor]], query_lens: Sequence[int], *,
                    num_heads: int, num_kv_heads: int, scale: float, fixed: bool = False, op: Op | None = None,
                    update: Update | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunked-prefill step under DCP, one rank (attention_cp.py ``forward_impl``'s prefill part).

    The new chunk attends causally to itself (one FIA call, this rank's heads, sparse_mode 3); the request's
    earlier context, split over the ranks, is attended with the all-gathered query (one FIA call on this rank's
    share), its [out|lse] sent by all_to_all_single, merged over ranks with ``update_out_and_lse`` (``fixed`` as
    there), then merged with the chunk's own attention by ``npu_attention_update`` for the requests that have
    context on some rank (common_cp.py ``_npu_attn_out_lse_update``).

    Args:
        query, key, value: (T, H, D), (T, N_kv, D), (T, N_kv, D): the new chunk's tokens, packed (TND).
        context: per request, this rank's share of its context keys and values, (L_r, N_kv, D) each.
        query_lens: (B,) new tokens per request.
    Returns:
        (out (T, H, D) in query's dtype, local_context_lse (T, W*H, 1): this rank's context LSE, for the report).
    """
    from ..masks import compressed_causal_mask

    op, update = _ops(op, update)
    w = group.world_size
    device = query.device
    cum_q = torch.cumsum(torch.tensor(query_lens), 0).tolist()
    out_prefill, lse_prefill = op(query, key.contiguous(), value.contiguous(), num_heads=num_heads,
                                  num_key_value_heads=num_kv_heads, input_layout="TND",
                                  atten_mask=compressed_causal_mask().to(device), scale=scale, sparse_mode=3, antiquant_mode=0,
                                  antiquant_scale=None, softmax_lse_flag=True, actual_seq_lengths_kv=cum_q,
                                  actual_seq_lengths=cum_q)
    local_lens = torch.tensor([k.shape[0] for k, _ in context], device=device)
    all_lens = group.all_gather(local_lens[None], 0).cpu()  # (W, B): local_context_lens_allranks, transposed
    chunked = (all_lens.sum(0) > 0).tolist()  # _get_chunked_req_mask
    if not any(chunked):
        return out_prefill, torch.empty(0)
    query_all = group.all_gather(query, 1) if w > 1 else query
    heads = num_heads * w
    if int(local_lens.sum()) == 0:  # _compute_prefill_context's early return
        ctx_out = torch.zeros(query.shape[0], heads, query.shape[-1], dtype=query.dtype, device=device)
        ctx_lse = torch.full((query.shape[0], heads, 1), float("-inf"), device=device)
    else:
        ctx_key = torch.cat([k for k, _ in context]).contiguous()
        ctx_value = torch.cat([v for _, v in context]).contiguous()
        ctx_out, ctx_lse = op(query_all, ctx_key, ctx_value, num_heads=heads, num_key_value_heads=num_kv_heads,
                              input_layout="TND", atten_mask=None, scale=scale, sparse_mode=0, antiquant_mode=0,
                              antiquant_scale=None, softmax_lse_flag=True,
                              actual_seq_lengths_kv=torch.cumsum(local_lens.cpu(), 0).tolist(),
                              actual_seq_lengths=cum_q)
    local = torch.cat([ctx_out.to(torch.float32), ctx_lse.to(torch.float32)], dim=-1).permute([1, 2, 0]).contiguous()
    if w > 1:
        received = torch.empty_like(local)
        group.all_to_all_single(received, local)
        local = received
    x = local.permute([2, 0, 1]).contiguous()  # (T, W*H, D+1)
    t, _, d_plus_1 = x.shape
    x = x.view(t, w, num_heads, d_plus_1).permute(1, 0, 2, 3).contiguous()
    ctx_merged, ctx_merged_lse = update_out_and_lse(*torch.split(x, [d_plus_1 - 1, 1], dim=-1), fixed=fixed)
    starts = [0, *cum_q[:-1]]
    rows = torch.cat([torch.arange(s, s + n) for s, n, c in zip(starts, query_lens, chunked, strict=True)
                      if c]).to(device)
    out = out_prefill.clone()
    merged, _ = update(  # _npu_attn_out_lse_update(lse_mask=prefill, lse_nomask=context, ...): [context, prefill]
        [ctx_merged_lse[rows].reshape(-1), lse_prefill[rows].to(torch.float32).reshape(-1)],
        [ctx_merged[rows].reshape(-1, d_plus_1 - 1), out_prefill[rows].to(torch.float32).reshape(-1, d_plus_1 - 1)],
        0)
    out[rows] = merged.view(-1, num_heads, d_plus_1 - 1).to(out.dtype)
    return out, ctx_lse


# ------------------------------------------------------------------------------------------------ MTP under DCP

def mtp_mask(histories: Sequence[int], query_lens: Sequence[int], world_size: int, rank: int,
             interleave_size: int = 1, key_columns: int | None = None, *, fixed: bool = False) -> torch.Tensor:
    """dcp_utils.py ``generate_mtp_attention_mask_for_decode``: one rank's mask for speculative decode under DCP.

    Query token i of request b sits at global position p = histories[b] + i and may see global keys 0..p; on
    ``rank`` those are the first ``local_q - 1 + 1`` of its local keys, local_q = the rank's share of p + 1 tokens.
    vllm-ascend masks local key k when k > local_q - 1 **and local_q - 1 >= 0**: a row with no visible local key
    is left entirely unmasked, so it sees this rank's keys of later positions (the draft tokens after it): a leak.
    ``fixed=True`` masks every key of such a row; FIA then writes the route's no-key LSE, which
    ``npu_attention_update`` gives weight 0.

    Returns:
        (B, max(query_lens), key_columns) bool, True = masked (key_columns default: the rank's longest local cache).
    """
    q_lens = torch.tensor(list(query_lens), dtype=torch.int64)
    histories_t = torch.tensor(list(histories), dtype=torch.int64)
    k_lens = local_lengths(histories_t + q_lens, world_size, interleave_size)[rank]
    max_q = int(q_lens.max())
    max_k = key_columns if key_columns is not None else max(int(k_lens.max()), 1)
    q_idx = torch.arange(max_q)
    k_idx = torch.arange(max_k)
    valid_q = q_idx[None, :] < q_lens[:, None]
    valid_k = k_idx[None, :] < k_lens[:, None]
    positions = histories_t[:, None] + q_idx[None, :]
    upper = local_lengths(positions.reshape(-1) + 1, world_size, interleave_size)[rank].view_as(positions) - 1
    hidden = k_idx[None, None, :] > upper[:, :, None]
    if not fixed:
        hidden = hidden & (upper[:, :, None] >= 0)
    return hidden & valid_q[:, :, None] & valid_k[:, None, :]


def dcp_mtp_decode(group: Group, query: torch.Tensor, cache: RankCache, histories: Sequence[int], *,
                   num_heads: int, num_kv_heads: int, scale: float, interleave_size: int = 1, fixed: bool = False,
                   op: Op | None = None, update: Update | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA DCP decode with speculative (MTP) tokens, one rank (attention_cp.py ``_forward_decode_dcp``, BSND).

    Args:
        query: (B*q, H, D): q = 1 + draft tokens per request, this rank's heads.
        cache: this rank's ``RankCache`` holding each request's history and its q new tokens.
        histories: (B,) tokens before the q new ones. fixed: ``mtp_mask``'s.
    Returns:
        (out (B*q, H, D) float32, local_lse (B*q, W*H, 1)).
    """
    op, update = _ops(op, update)
    w = group.world_size
    query = group.all_gather(query, 1) if w > 1 else query
    heads = num_heads * w
    b = len(histories)
    query = query.view(b, -1, query.shape[1], query.shape[-1])
    q_len = query.shape[1]
    # vllm-ascend's buffer is (reqs, max_query_len, max_model_len); FIA needs the key axis to cover the table
    mask = mtp_mask(histories, [q_len] * b, w, group.rank, interleave_size,
                    key_columns=cache.block_table.shape[1] * cache.key.shape[1], fixed=fixed).to(query.device)
    attn_out, attn_lse = op(query, cache.key, cache.value, num_heads=heads, num_key_value_heads=num_kv_heads,
                            input_layout="BSND", atten_mask=mask, scale=scale, antiquant_mode=0,
                            antiquant_scale=None, softmax_lse_flag=True, block_table=cache.block_table,
                            block_size=cache.key.shape[1], actual_seq_lengths_kv=cache.lengths.tolist(),
                            actual_seq_lengths=[q_len] * b)
    attn_out = attn_out.view(-1, attn_out.shape[2], attn_out.shape[3])
    attn_lse = attn_lse.transpose(1, 2).reshape(-1, attn_lse.shape[1], 1)
    merged = attention_update_merge(process_attn_out_lse(group, attn_out, attn_lse), query.shape[-1], w, update)
    return merged, attn_lse


# ------------------------------------------------------------------------------------------------ ring prefill

def ring_prefill(group: Group, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 positions: torch.Tensor, *, num_heads: int, num_kv_heads: int, scale: float, op: Op | None = None,
                 update: Update | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Causal prefill of one sequence split over the ranks (zigzag), K/V passed around the ring, one rank.

    Step s attends this rank's queries to the K/V of rank (rank - s) mod W with one FIA call (BSND, batch 1; TND
    with a free-form mask is refused on the split-fuse route) whose ``atten_mask`` hides keys at later global
    positions (sparse_mode 0), then folds it into the running result with
    ``npu_attention_update(update_type=1)``. Step 0 is the rank's own K/V, so every row has a key from the start;
    a later step where a row sees nothing (every key masked) gives about -1e12, which the update weighs 0.

    Args:
        query, key, value: (L, H, D), (L, N_kv, D), (L, N_kv, D): this rank's tokens (``zigzag_positions``).
        positions: (L,) int64 global positions of those tokens.
    Returns:
        (out (L, H, D) float32, the LSE of each step's FIA call (L, H, 1)).
    """
    op, update = _ops(op, update)
    n = query.shape[0]
    kv = torch.cat([key, value], dim=-1)
    kv_positions = positions
    out = lse = None
    step_lses = []
    for step in range(group.world_size):
        if step:
            kv = group.ring_shift(kv)
            kv_positions = group.ring_shift(kv_positions)
        k, v = torch.split(kv, [key.shape[-1], value.shape[-1]], dim=-1)
        mask = (kv_positions[None, :] > positions[:, None])[None]  # (1, L, L), True = masked: keys after the query
        step_out, step_lse = op(query[None], k[None].contiguous(), v[None].contiguous(), num_heads=num_heads,
                                num_key_value_heads=num_kv_heads, input_layout="BSND", atten_mask=mask,
                                sparse_mode=0, scale=scale, softmax_lse_flag=True)
        step_lse = step_lse[0].transpose(0, 1)  # (1, H, L, 1) -> (L, H, 1)
        step_lses.append(step_lse)
        step_out = step_out.to(torch.float32).reshape(n * num_heads, -1)
        step_lse = step_lse.reshape(-1)
        if out is None:
            out, lse = step_out, step_lse
        else:
            out, lse = update([lse, step_lse], [out, step_out], 1)
    return out.view(n, num_heads, -1), step_lses
