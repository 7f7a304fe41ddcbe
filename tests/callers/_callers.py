"""Real-caller conformance helpers: ``@caller`` cites where a pattern comes from; tolerances; float64 goldens.

``caller(repo, path, commit, where)`` records where the pattern comes from (the test re-creates the call in its own
code at CPU sizes and compares with a float64 golden written from the caller's intent).
"""

from __future__ import annotations

import re

import torch
from golden import attention, causal

VLLM = ("vllm-project/vllm-ascend", "182b75ea84ff13ece27b57391331ef8935410aea")
SGLANG = ("sgl-project/sglang", "0351c1fafe4c53c91c331dea205af48b018af559")
OP_PLUGIN = ("Ascend/op-plugin", "517f2e7d0f202f38b76310706cb977ca2388ad21")
CITED: list[tuple[str, str, str, str, str]] = []


def caller(source: tuple[str, str], path: str, where: str):
    """Mark a test as the re-creation of the call at ``where`` in ``path`` of ``source`` (repo, commit)."""
    repo, commit = source
    assert re.fullmatch(r"[0-9a-f]{40}", commit)

    def mark(test):
        CITED.append((test.__name__, repo, path, commit, where))
        test.caller = (repo, path, commit, where)
        return test
    return mark

TOL = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype], rtol=TOL[dtype])


def window(l_q: int, l_kv: int, size: int) -> torch.Tensor:
    """Right-down causal with a sliding window: row i sees keys (i + L_kv - L_q) - size .. i + L_kv - L_q."""
    i = torch.arange(l_q).unsqueeze(1) + (l_kv - l_q)
    j = torch.arange(l_kv).unsqueeze(0)
    return (j <= i) & (j >= i - size)


def with_sink(q, k, v, scale, sink, visible=None):
    """Attention whose softmax denominator also holds exp(sink[n]) (a learnable sink, not multiplied by scale)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    s = scale * torch.einsum("nid,njd->nij", q, k)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    logits = torch.cat([s, sink.double().view(-1, 1, 1).expand(-1, s.shape[1], 1)], dim=-1)
    p = torch.softmax(logits, dim=-1)[..., :-1]
    return torch.einsum("nij,njd->nid", p, v)


__all__ = ["attention", "causal", "close", "window", "with_sink"]
