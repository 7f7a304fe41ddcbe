"""Worked context-parallel cases: each rank builds the same seeded inputs, runs a recipe, checks its share.

Every function takes a ``Group`` (``launch``, ``run_in_process`` or ``init_from_env`` gives one) and returns
``Report``s comparing this rank's merged output with float64 single-device attention (``validation``). The cases
are small and chosen so that some ranks hold no key of some request (the sentinel cases):

| case | split | what it shows |
|---|---|---|
| ``dcp_decode_case`` | seq_lens (1, 6, 35), interleave 2 | GQA decode (TND); requests shorter than W x 2 tokens leave ranks empty: +inf LSE |
| ``dcp_decode_case(mla=True)`` | the same, D = 512 + rope 64 | MLA decode (BNSD, rope): +inf on the empty ranks too |
| ``dcp_decode_case(merge="ag_rs")`` | the same | vLLM's all-gather / reduce-scatter merge |
| ``chunked_prefill_case`` | contexts (1, 0, 13), new tokens (2, 3, 4) | request 0's context sits on rank 0 only: NaN unless ``fixed`` |
| ``mtp_case`` | histories (3, 20), 3 tokens each, interleave 4 | rows before a rank's first key: a leak unless ``fixed`` |
| ``ring_prefill_case`` | 8 W tokens, zigzag | causal prefill with K/V around the ring |

One KV head per rank in the DCP cases: vLLM's DCP replicates the KV heads over the DCP group (a rank of the TP
group holds one KV head, and the all-gathered query heads all read it). ``all_cases`` runs every case on one group
(one process start for all).
"""

from __future__ import annotations

import torch

from ..backends.tolerances import TOLERANCES
from .groups import Group
from .layouts import positions_on, shard_paged, zigzag_positions
from .recipes import chunked_prefill, dcp_decode, dcp_decode_mla, dcp_mtp_decode, fia_op, ring_prefill
from .validation import Report, compare, golden_attention

__all__ = ["dcp_decode_case", "chunked_prefill_case", "mtp_case", "ring_prefill_case", "all_cases", "summary",
           "DTYPE"]

DTYPE = torch.float16
ATOL, RTOL = TOLERANCES[DTYPE]
HEADS_PER_RANK = 2
SEED = 20261205


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(DTYPE)


def _causal_from(start: int, q_len: int, total: int) -> torch.Tensor:
    """(q_len, total) visibility: query i at position start + i sees keys 0..start + i."""
    return torch.arange(total)[None, :] <= (start + torch.arange(q_len))[:, None]


def _mine(group: Group, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """This rank's block of ``HEADS_PER_RANK`` heads along ``dim``."""
    return t.narrow(dim, group.rank * HEADS_PER_RANK, HEADS_PER_RANK)


def dcp_decode_case(group: Group, *, mla: bool = False, merge: str = "attention_update",
                    backend: str | None = None, seq_lens: tuple[int, ...] = (1, 6, 35),
                    interleave_size: int = 2) -> Report:
    """DCP decode (GQA D = 32, or MLA 512 + 64) of one token per request; this rank's heads checked."""
    w, gen = group.world_size, _generator()
    heads = HEADS_PER_RANK * w
    kv_heads, d, rope = (1, 512, 64) if mla else (1, 32, 0)
    scale = (d + rope) ** -0.5
    keys = [_randn(gen, kv_heads, n, d) for n in seq_lens]
    values = [_randn(gen, kv_heads, n, rope) if mla else _randn(gen, kv_heads, n, d) for n in seq_lens]
    query = _randn(gen, len(seq_lens), heads, d + rope)  # every rank's heads; each rank starts from its own
    caches = shard_paged(keys, values, w, block_size=16, interleave_size=interleave_size,
                         cache_rank=4 if mla else 3, generator=torch.Generator().manual_seed(group.rank))
    cache = caches[group.rank]
    op = fia_op(backend)
    if mla:
        local = _mine(group, query)
        merged, lse = dcp_decode_mla(group, local[..., :d], local[..., d:], cache, num_heads=HEADS_PER_RANK,
                                     scale=scale, op=op)
    else:
        merged, lse = dcp_decode(group, _mine(group, query), cache, num_heads=HEADS_PER_RANK,
                                 num_kv_heads=kv_heads, scale=scale, op=op, merge=merge)
    golden = []
    for b, n in enumerate(seq_lens):
        k = keys[b].transpose(0, 1)
        if mla:  # scores over [nope | rope], values = the nope part (the cache's k_nope)
            k = torch.cat([k, values[b].transpose(0, 1)], dim=-1)
            v = keys[b].transpose(0, 1)
        else:
            v = values[b].transpose(0, 1)
        golden.append(_mine(group, golden_attention(query[b:b + 1], k, v, torch.ones(1, n, dtype=torch.bool),
                                                    scale)))
    name = f"DCP decode {'MLA' if mla else 'GQA'}" + (" (vLLM AG+RS)" if merge == "ag_rs" else "")
    return compare(name, group.rank, merged, torch.cat(golden), lse, ATOL, RTOL)


def chunked_prefill_case(group: Group, *, fixed: bool = False, backend: str | None = None,
                         contexts: tuple[int, ...] = (1, 0, 13), query_lens: tuple[int, ...] = (2, 3, 4)) -> Report:
    """A chunked-prefill step under DCP (interleave 1); ``fixed`` maps +inf to -inf before the context merge."""
    w, gen = group.world_size, _generator()
    heads, kv_heads, d = HEADS_PER_RANK * w, 1, 32
    scale = d ** -0.5
    ctx_k = [_randn(gen, c, kv_heads, d) for c in contexts]
    ctx_v = [_randn(gen, c, kv_heads, d) for c in contexts]
    new_q = [_randn(gen, n, heads, d) for n in query_lens]
    new_k = [_randn(gen, n, kv_heads, d) for n in query_lens]
    new_v = [_randn(gen, n, kv_heads, d) for n in query_lens]
    share = [(k[positions_on(group.rank, c, w)], v[positions_on(group.rank, c, w)])
             for k, v, c in zip(ctx_k, ctx_v, contexts, strict=True)]
    merged, lse = chunked_prefill(group, _mine(group, torch.cat(new_q)), torch.cat(new_k), torch.cat(new_v), share,
                                  query_lens, num_heads=HEADS_PER_RANK, num_kv_heads=kv_heads, scale=scale,
                                  fixed=fixed, op=fia_op(backend))
    golden = [_mine(group, golden_attention(q, torch.cat([ck, k]), torch.cat([cv, v]), _causal_from(c, n, c + n),
                                            scale))
              for q, k, v, ck, cv, c, n in zip(new_q, new_k, new_v, ctx_k, ctx_v, contexts, query_lens, strict=True)]
    name = "chunked prefill context" + (" (+inf -> -inf)" if fixed else " (torch logsumexp)")
    return compare(name, group.rank, merged, torch.cat(golden), lse, ATOL, RTOL)


def mtp_case(group: Group, *, fixed: bool = False, backend: str | None = None,
             histories: tuple[int, ...] = (3, 20), q_len: int = 3, interleave_size: int = 4) -> Report:
    """Speculative decode under DCP: ``q_len`` tokens after each history; ``fixed`` is ``mtp_mask``'s."""
    w, gen = group.world_size, _generator()
    heads, kv_heads, d = HEADS_PER_RANK * w, 1, 32
    scale = d ** -0.5
    totals = [h + q_len for h in histories]
    keys = [_randn(gen, kv_heads, n, d) for n in totals]
    values = [_randn(gen, kv_heads, n, d) for n in totals]
    query = _randn(gen, len(histories) * q_len, heads, d)
    cache = shard_paged(keys, values, w, block_size=16, interleave_size=interleave_size)[group.rank]
    merged, lse = dcp_mtp_decode(group, _mine(group, query), cache, histories, num_heads=HEADS_PER_RANK,
                                 num_kv_heads=kv_heads, scale=scale, interleave_size=interleave_size, fixed=fixed,
                                 op=fia_op(backend))
    golden = [_mine(group, golden_attention(query[b * q_len:(b + 1) * q_len], keys[b].transpose(0, 1),
                                            values[b].transpose(0, 1), _causal_from(h, q_len, h + q_len), scale))
              for b, h in enumerate(histories)]
    name = "MTP under DCP" + (" (row masked)" if fixed else " (vllm-ascend mask)")
    return compare(name, group.rank, merged, torch.cat(golden), lse, ATOL, RTOL)


def ring_prefill_case(group: Group, *, backend: str | None = None, chunk: int = 4) -> Report:
    """Causal prefill of 2 W ``chunk`` tokens, zigzag split, K/V around the ring."""
    w, gen = group.world_size, _generator()
    heads, kv_heads, d = 4, 2, 32
    scale = d ** -0.5
    length = 2 * w * chunk
    q, k, v = _randn(gen, length, heads, d), _randn(gen, length, kv_heads, d), _randn(gen, length, kv_heads, d)
    mine = zigzag_positions(length, w)[group.rank]
    merged, step_lses = ring_prefill(group, q[mine], k[mine], v[mine], mine, num_heads=heads,
                                     num_kv_heads=kv_heads, scale=scale, op=fia_op(backend))
    golden = golden_attention(q, k, v, _causal_from(0, length, length), scale)[mine]
    return compare("ring prefill (zigzag)", group.rank, merged, golden, torch.cat(step_lses), ATOL, RTOL)


def all_cases(group: Group) -> list[Report]:
    """Every case, broken and fixed, on one group (rank order of the reports: the table's)."""
    return [dcp_decode_case(group), dcp_decode_case(group, mla=True), dcp_decode_case(group, merge="ag_rs"),
            chunked_prefill_case(group), chunked_prefill_case(group, fixed=True), mtp_case(group),
            mtp_case(group, fixed=True), ring_prefill_case(group)]


def summary(group: Group) -> str:
    """``all_cases`` in one line: which cases this rank got wrong (the two pitfalls, when all is well)."""
    reports = all_cases(group)
    wrong = [f"{r.name} ({r.bad_rows} rows{', NaN' if r.nan_rows else ''})" for r in reports if not r.ok]
    return f"{len(reports)} cases on {group.world_size} ranks; beyond tolerance: {'; '.join(wrong) or 'none'}"
