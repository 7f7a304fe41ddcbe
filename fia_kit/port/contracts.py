"""Float64 references of the CUDA libraries' documented contracts, written from their own docs and code.

flash-attn and FlashInfer only run on CUDA, so what they compute is written here, independently of the kit's FIA
reference (no ``fia_kit.masks`` band, no ``Visibility``): each rule below cites the line of the public repository it
comes from. SDPA and flex_attention need no such reference: ``fia_kit.port`` runs them for real on the CPU.

Sources (commits as mirrored on 2026-12-05):
- flash-attn: Dao-AILab/flash-attention @ 0251105a2fb19d2957484b7f023cd8c115286ced,
  ``flash_attn/flash_attn_interface.py`` (FA) and ``csrc/flash_attn/src`` (CSRC).
- FlashInfer: flashinfer-ai/flashinfer @ fb28d7242b3506a2348265962041acc1fb56cca4, ``flashinfer/prefill.py`` (FP),
  ``flashinfer/decode.py`` (FD), ``include/flashinfer/attention/variants.cuh`` (VAR).

| convention | flash-attn | FlashInfer |
|---|---|---|
| causal | bottom-right: key j <= i + S_k - S_q (FA:1175-1185) | bottom-right: ``tril(diagonal=kv_len - qo_len)`` (FP:1321-1323) |
| window | (left, right): j in [i + S_k - S_q - left, i + S_k - S_q + right], -1 = unbounded (FA:1187-1189) | ``window_left`` W: j >= i + kv_len - qo_len - W, -1 = off (VAR:87-88) |
| scale default | 1/sqrt(headdim) (FA:1197) | 1/sqrt(head_dim_qk) (FP:1349) |
| ALiBi | -slope * abs(i + S_k - S_q - j), after the scale (FA:1200-1202; CSRC flash_fwd_kernel.h:294 divides the slope by the scale); the causal kernel adds slope * j instead (CSRC mask.h:143-157): the same output, another LSE | slope_h * (j - i), after sm_scale (VAR:68-70); slopes ``get_alibi_slopes`` (flashinfer/utils.py:209) |
| mask polarity | - | ``custom_mask`` True = keep (FP:1238-1242) |
| GQA | query head h reads kv head h // (H_q / H_kv) (FA:1170-1173) | the same grouping (FP:1338-1341) |
| LSE | natural log, (B, H, S) or (H, total_q) for varlen (FA:1210, 1457) | base 2, (qo_len, H) (FP:1302; cute_dsl/attention/roles/correction.py:500 "log2 domain (flashinfer convention)"; tests/attention/test_deepseek_mla.py:152 multiplies a natural LSE by log2(e)) |
| row with no key | output 0 (FA:1185), LSE +inf (CSRC softmax.h:180) | output 0, LSE -inf (correction.py:499) |
| sinks | - | an extra logit ``sinks[h]`` in each row's denominator, not scaled (FP:2759-2762); the LSE includes it (flashinfer/jit/attention/variants.py:38-46 update m and d, which include/flashinfer/attention/prefill.cuh:2491-2495 then write as the LSE) |
"""

from __future__ import annotations

import math

import torch

LOG2E = math.log2(math.e)
UNBOUNDED = -1


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, keep: torch.Tensor | None,
           bias: torch.Tensor | None = None, sink: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's attention in float64, with a contract's mask and bias already decided.

    Args:
        q: (H_q, L, D); k: (H_kv, S, D); v: (H_kv, S, Dv); H_q a multiple of H_kv (head h reads kv head h // G).
        keep: (H_q or 1, L, S) bool, True = the key counts; None = all.
        bias: (H_q or 1, L, S) added to scale * q.k.
        sink: (H_q,) logits joining each row's denominator (FlashInfer ``sinks``).
    Returns:
        out (H_q, L, Dv) and lse (H_q, L) natural log, excluding the sink; a row without keys: out 0, lse -inf.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    s = scale * q @ k.transpose(-1, -2)
    if bias is not None:
        s = s + bias.double()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    denominator = lse if sink is None else torch.logaddexp(lse, sink.double()[:, None].expand_as(lse))
    p = torch.exp(s - denominator.unsqueeze(-1).masked_fill(torch.isinf(lse).unsqueeze(-1), 0.0))
    p = torch.nan_to_num(p, nan=0.0)
    return p @ v, lse


def bottom_right_keep(q_len: int, kv_len: int, causal: bool, left: int = UNBOUNDED, right: int = UNBOUNDED,
                      ) -> torch.Tensor | None:
    """flash-attn's visibility (FA:1175-1189): key j of row i when
    i + S_k - S_q - left <= j <= i + S_k - S_q + right, with right = 0 under causal; -1 = unbounded."""
    if causal:
        right = 0
    if left < 0 and right < 0:
        return None
    i = torch.arange(q_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    diagonal = i + kv_len - q_len
    keep = torch.ones(q_len, kv_len, dtype=torch.bool)
    if right >= 0:
        keep &= j <= diagonal + right
    if left >= 0:
        keep &= j >= diagonal - left
    return keep.unsqueeze(0)


def flash_attn_alibi(slopes: torch.Tensor, q_len: int, kv_len: int, kernel_causal: bool) -> torch.Tensor:
    """(H, L, S) ALiBi bias of one sequence; ``slopes``: (H,).

    The docstring's -slope * abs(i + S_k - S_q - j) (FA:1200-1202) is what the kernel adds except on its causal
    path, which adds slope * j to every row (CSRC mask.h:143-157, 180-184): equal outputs, LSEs that differ by
    slope * (i + S_k - S_q). ``kernel_causal``: the kernel's Is_causal (``flash_attn_kernel_causal``).
    """
    i = torch.arange(q_len, dtype=torch.float64)[:, None]
    j = torch.arange(kv_len, dtype=torch.float64)[None, :]
    if kernel_causal:
        return slopes.double()[:, None, None] * j.expand(q_len, kv_len)
    return -slopes.double()[:, None, None] * (i + kv_len - q_len - j).abs()


def flash_attn_kernel_causal(causal: bool, left: int, right: int, seqlen_k: int) -> bool:
    """Whether flash-attn runs its Is_causal kernel: windows at or past seqlen_k become -1, causal sets right to 0,
    and Is_causal = left < 0 and right == 0 (CSRC ../flash_api.cpp:157, 422-427)."""
    left = -1 if left >= seqlen_k else left
    right = 0 if causal else (-1 if right >= seqlen_k else right)
    return left < 0 and right == 0


def flashinfer_alibi(num_heads: int, q_len: int, kv_len: int) -> torch.Tensor:
    """(H, L, S): slope_h * (j - i) (VAR:68-70) with FlashInfer's slopes, i counted from the request's first query
    row; the decode kernel passes qo_idx = 0 (include/flashinfer/attention/decode.cuh:91), so there it is slope * j."""
    slopes = flashinfer_alibi_slopes(num_heads)
    i = torch.arange(q_len, dtype=torch.float64)[:, None]
    j = torch.arange(kv_len, dtype=torch.float64)[None, :]
    return slopes[:, None, None] * (j - i)


def flashinfer_alibi_slopes(num_heads: int) -> torch.Tensor:
    """FlashInfer's ``get_alibi_slopes`` (flashinfer/utils.py:209), in float64: 2^(-8k/n) for the largest power of
    two n <= H, then interleaved 2^(-4(2k-1)/n) for the rest."""
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * (k + 1) / n) for k in range(n)]
    slopes += [2.0 ** (-4.0 * (2 * k + 1) / n) for k in range(num_heads - n)]
    return torch.tensor(slopes, dtype=torch.float64)


def flashinfer_keep(q_len: int, kv_len: int, causal: bool, window_left: int, custom: torch.Tensor | None,
                    decode: bool = False) -> torch.Tensor | None:
    """FlashInfer's visibility: custom_mask (True = keep) replaces causal (FP:1250-1252); the window keeps
    j >= i + kv_len - qo_len - W (VAR:87-88). Decode: one row at kv_len - 1."""
    i = torch.arange(q_len)[:, None] + (kv_len - 1 if decode else kv_len - q_len)
    j = torch.arange(kv_len)[None, :]
    keep = torch.ones(q_len, kv_len, dtype=torch.bool)
    if custom is not None:
        keep &= custom.to(torch.bool).reshape(q_len, kv_len)
    elif causal and not decode:
        keep &= j <= i
    if window_left >= 0:
        keep &= j >= i - window_left
    return keep.unsqueeze(0)


def pages_to_dense(cache: torch.Tensor, pages: torch.Tensor, length: int, layout: str) -> torch.Tensor:
    """One sequence's keys (H, length, D) from a paged cache: (P, page, H, D) for "NHD", (P, H, page, D) for
    "HND" (FP:2727-2728; flash-attn's paged cache is NHD, FA:1550-1553)."""
    blocks = cache[pages.long()]
    if layout == "HND":
        blocks = blocks.transpose(1, 2)
    return blocks.reshape(-1, *blocks.shape[2:])[:length].transpose(0, 1)
