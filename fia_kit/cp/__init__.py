"""Context parallelism on FIA: the LSE across ranks, on a real torch.distributed group (docs/context_parallel.md).

    from fia_kit import cp
    lengths = cp.local_lengths(seq_lens, world_size=4, interleave_size=1)   # (W, B): tokens of each request per rank
    results = cp.launch(cp.scenarios.dcp_decode_check, world_size=2)        # gloo ranks on 127.0.0.1
    results = cp.run_in_process(cp.scenarios.dcp_decode_check, world_size=2)  # the same, as threads

Modules: ``update`` (the ``npu_attention_update`` twin), ``layouts`` (which rank holds which token), ``groups``
(a torch.distributed group, an in-process group, the launcher), ``recipes`` (the real call sites, argument for
argument), ``validation`` (against float64 single-device attention), ``figures``.
"""

from .update import npu_attention_update

__all__ = ["npu_attention_update"]
