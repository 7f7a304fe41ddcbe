"""sparse_mode 9, the tree mask (spec 6.6, 25.1): small cases worked by hand against a float64 golden."""

from __future__ import annotations

import pytest
import torch
from golden import attention, paged_cache

import fia_kit
from fia_kit import FIAArgumentError
from fia_kit.reference import npu_fused_infer_attention_score as fia
from fia_kit.reference import npu_fused_infer_attention_score_v2 as fia_v2

N, D = 2, 512


def _mla(gen, s_q: int, s_kv: int, b: int = 1):
    q = torch.randn(b, s_q, N, D, generator=gen, dtype=torch.float64) * 0.05
    qr = torch.randn(b, s_q, N, 64, generator=gen, dtype=torch.float64)
    k = torch.randn(b, s_kv, 1, D, generator=gen, dtype=torch.float64) * 0.05
    kr = torch.randn(b, s_kv, 1, 64, generator=gen, dtype=torch.float64)
    return q, qr, k, kr


def _golden(q, qr, k, kr, visible, scale):
    """One batch: q (S_q, N, D), k (S_kv, 1, D); visible (S_q, S_kv) written by hand."""
    out, lse = attention(torch.cat([q, qr], -1).transpose(0, 1), torch.cat([k, kr], -1).transpose(0, 1),
                         k.transpose(0, 1), scale, visible)
    return out.transpose(0, 1), lse


def test_tree_mask_bsnd_by_hand(gen):
    """L_q = 3 draft tokens after 2 context keys; the tree: token 1 and 2 are siblings under token 0."""
    q, qr, k, kr = _mla(gen, 3, 5)
    tree = torch.tensor([[0, 1, 1],
                         [0, 0, 1],
                         [0, 1, 0]], dtype=torch.int8)
    visible = torch.tensor([[1, 1, 1, 0, 0],   # context 0,1 + itself (key 2)
                            [1, 1, 1, 1, 0],   # context + token 0 (key 2) + itself (key 3)
                            [1, 1, 1, 0, 1]],  # context + token 0 + itself (key 4), not its sibling
                           dtype=torch.bool)
    out, lse = fia_v2(q, k, k, query_rope=qr, key_rope=kr, num_query_heads=N, num_key_value_heads=1,
                      input_layout="BSND", softmax_scale=0.05, sparse_mode=9, atten_mask=tree.unsqueeze(0),
                      return_softmax_lse=True)
    want, want_lse = _golden(q[0], qr[0], k[0], kr[0], visible, 0.05)
    torch.testing.assert_close(out[0], want)
    torch.testing.assert_close(lse[0, ..., 0], want_lse)


def test_tree_mask_tnd_concatenated_by_hand(gen):
    """TND (paged, as MLA D=512 TND needs): batch 0 L_q=2, L_kv=3; batch 1 L_q=1, L_kv=2."""
    lkv = [3, 2]  # L_q = [2, 1]
    q = torch.randn(3, N, D, generator=gen, dtype=torch.float64) * 0.05
    qr = torch.randn(3, N, 64, generator=gen, dtype=torch.float64)
    ks = [torch.randn(1, n, D, generator=gen, dtype=torch.float64) * 0.05 for n in lkv]
    krs = [torch.randn(1, n, 64, generator=gen, dtype=torch.float64) for n in lkv]
    kc, table = paged_cache(ks, 16, rank=4)
    krc, _ = paged_cache(krs, 16, rank=4)
    tree = torch.tensor([0, 1, 0, 0] + [1], dtype=torch.bool)  # [[0,1],[0,0]] then [[1]]
    out, _ = fia_v2(q, kc, kc, query_rope=qr, key_rope=krc, num_query_heads=N, num_key_value_heads=1,
                    input_layout="TND", softmax_scale=0.05, sparse_mode=9, atten_mask=tree, block_table=table,
                    block_size=16, actual_seq_qlen=[2, 3], actual_seq_kvlen=lkv)
    vis0 = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    want0, _ = _golden(q[:2], qr[:2], ks[0][0].unsqueeze(1), krs[0][0].unsqueeze(1), vis0, 0.05)
    torch.testing.assert_close(out[:2], want0)
    # batch 1: the only draft token hides itself: it sees the one context key alone
    vis1 = torch.tensor([[1, 0]], dtype=torch.bool)
    want1, _ = _golden(q[2:], qr[2:], ks[1][0].unsqueeze(1), krs[1][0].unsqueeze(1), vis1, 0.05)
    torch.testing.assert_close(out[2:], want1)


def test_tree_mask_refusals(gen):
    q, qr, k, kr = _mla(gen, 2, 3)
    tree = torch.zeros(1, 2, 2, dtype=torch.bool)
    kw = dict(query_rope=qr, key_rope=kr, num_query_heads=N, num_key_value_heads=1, input_layout="BSND",
              sparse_mode=9, atten_mask=tree)
    with fia_kit.target(product="Ascend950"), pytest.raises(FIAArgumentError, match="tree_mask on Ascend950"):
        fia_v2(q, k, k, **kw)
    with fia_kit.target(cann="9.0"), pytest.raises(FIAArgumentError, match="tree_mask on A3 / CANN 9.0"):
        fia_v2(q, k, k, **kw)
    with pytest.raises(FIAArgumentError, match="atten_mask.*\\(1, 2, 2\\)"):
        fia_v2(q, k, k, **{**kw, "atten_mask": torch.zeros(1, 2, 3, dtype=torch.bool)})
    with pytest.raises(FIAArgumentError, match="L_q <= L_kv"):
        fia_v2(q, k, k, **{**kw, "actual_seq_kvlen": [1]})
    with pytest.raises(FIAArgumentError, match="v2 only"):
        fia(q, k, k, query_rope=qr, key_rope=kr, num_heads=N, num_key_value_heads=1, input_layout="BSND",
            sparse_mode=9, atten_mask=tree)
    small = torch.zeros(1, 2, 2, 64, dtype=torch.float64)
    with pytest.raises(FIAArgumentError, match="MLA"):
        fia_v2(small, small, small, num_query_heads=2, input_layout="BNSD", sparse_mode=9, atten_mask=tree)
