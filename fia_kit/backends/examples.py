"""Demo inputs: the founding document's example call (spec 1.4), seeded."""

from __future__ import annotations

import torch

from ..call import FIACall, parse_call


def founding_example(form: str = "v1", dtype: torch.dtype = torch.float16, seed: int = 0) -> FIACall:
    """The founding document's TorchAir example (spec 1.4) as a call, with seeded inputs.

    q (1, 8, 164, 128), k/v (1, 8, 1024, 128), BNSD, scale 1/sqrt(128), pre/next 65535, actual lengths [50] and
    [512]; v1 adds the shared prefix (1, 8, 1024, 128) with actual_shared_prefix_len [50] (v2 has no prefix).
    Rows 50..163 of the output are zero; batch 0 attends over 50 prefix + 512 keys.
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v, kp, vp = (torch.randn(1, 8, s, 128, generator=g).to(dtype) for s in (164, 1024, 1024, 1024, 1024))
    common = {"input_layout": "BNSD", "pre_tokens": 65535, "next_tokens": 65535}
    if form == "v1":
        return parse_call("v1", q, k, v, {**common, "num_heads": 8, "scale": 128 ** -0.5,
                                          "actual_seq_lengths": [50], "actual_seq_lengths_kv": [512],
                                          "key_shared_prefix": kp, "value_shared_prefix": vp,
                                          "actual_shared_prefix_len": [50]})
    return parse_call("v2", q, k, v, {**common, "num_query_heads": 8, "softmax_scale": 128 ** -0.5,
                                      "actual_seq_qlen": [50], "actual_seq_kvlen": [512]})
