"""Independent float64 goldens for the tests: plain torch, written from the op's documented semantics.

Nothing here imports fia_kit: these are what the kit is compared against.
"""

from __future__ import annotations

import torch

FLOAT32_LOWEST = -3.4028234663852886e38  # -FLT_MAX: the legacy IFA kernel's LSE of a batch without keys
# float32(-3.4e38): FLOAT_MIN of ops-transformer op_kernel/arch22/fia_kernel_nonquant.h:112, which the FIA route
# writes for a "legacy IFA" shaped decode (BSH/BSND/BNSD, S_q = 1) batch without keys (:346)
FIA_DECODE_EMPTY_LSE = -3.3999999521443642e38


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of one batch in float64.

    Args:
        q: (N_q, L_q, D); k: (N_kv, L_kv, D); v: (N_kv, L_kv, Dv); query head n uses kv head n // (N_q / N_kv).
        visible: (L_q, L_kv) bool, True where a key is seen (None: all).
    Returns:
        out (N_q, L_q, Dv) with rows that see no key set to 0, and lse (N_q, L_q) (natural log; -inf for such rows).
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    s = scale * torch.einsum("nid,njd->nij", q, k)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.einsum("nij,njd->nid", p, v), lse


def causal(l_q: int, l_kv: int) -> torch.Tensor:
    """(L_q, L_kv) right-down causal visibility: row i sees keys j <= i + L_kv - L_q."""
    i = torch.arange(l_q).unsqueeze(1)
    j = torch.arange(l_kv).unsqueeze(0)
    return j <= i + (l_kv - l_q)


def paged_cache(sequences: list[torch.Tensor], block_size: int, rank: int = 4,
                tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Write B sequences (N_kv, L_b, D) into a paged cache, blocks in reverse order, by the spec 11 table.

    rank 3 (blocks, bs, N*D), 4 (blocks, N, bs, D) or 5 NZ (blocks, N, D/c, bs, c) with c = ``tile``
    (default 32 bytes of the dtype). Returns (cache, block_table int32).
    """
    n, d = sequences[0].shape[0], sequences[0].shape[-1]
    counts = [-(-s.shape[1] // block_size) for s in sequences]
    total = sum(counts)
    c = tile or 32 // sequences[0].element_size()
    shape = {3: (total, block_size, n * d), 4: (total, n, block_size, d), 5: (total, n, d // c, block_size, c)}[rank]
    cache = torch.zeros(shape, dtype=sequences[0].dtype)
    table = torch.zeros(len(sequences), max(counts), dtype=torch.int32)
    block = total
    for b, seq in enumerate(sequences):
        for t in range(seq.shape[1]):
            if t % block_size == 0:
                block -= 1
                table[b, t // block_size] = block
            for h in range(n):
                row = seq[h, t]
                if rank == 3:
                    cache[block, t % block_size, h * d:(h + 1) * d] = row
                elif rank == 4:
                    cache[block, h, t % block_size] = row
                else:
                    cache[block, h, :, t % block_size, :] = row.view(d // c, c)
    return cache, table
