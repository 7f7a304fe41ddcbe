"""The kernel's rule book: one entry per host check of FIA on Atlas A2/A3, read from ops-transformer at 5778144.

Each ``KernelRule`` names the check's stable id, where it lives in the kernel's host code (path:line at commit
5778144, 2026-08-21), the routes it applies on (``fia_kit.rules.routes``), its product/CANN gate, the kernel's own
message as a regex (what a CANN plog shows), the docs section, and whether the kit enforces it:

    "enforced"      validation raises FIAArgumentError(rule_id=..., source=...) when a call breaks it;
    "unreachable"   torch_npu's Python API cannot produce a call that breaks it (tensors it allocates, attributes
                    it fixes): listed, not checked;
    "not-enforced"  reachable, read, and not checked by the kit; ``note`` says why.

Validation looks rules up here (``rule_by_id``, ``error``) rather than repeating their text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import FIAArgumentError
from .routes import ROUTES

COMMIT = "5778144076def6311557939ab5cbfe8303f13e8f"
NO_MESSAGE = r"(?!)"  # the pattern of a rule without a log line of its own: matches no text
STATUSES = ("enforced", "unreachable", "not-enforced")

_FIA = "attention/fused_infer_attention_score/op_host/"
_CHK = _FIA + "checkers/"
_IFA = "attention/incre_flash_attention/op_host/"
_PFA = "attention/prompt_flash_attention/op_host/"
_ALL = ROUTES
_LEGACY = ("legacy-ifa", "legacy-pfa")


@dataclass(frozen=True)
class KernelRule:
    """One host check of the kernel (see the module docstring for the fields' meaning).

    ``message`` is a regex for the kernel's log text of this check; a rule without a log line of its own (a
    rewrite, a template that does not match) has ``NO_MESSAGE``, which matches nothing.
    """

    id: str
    topic: str
    condition: str
    source: str
    routes: tuple[str, ...]
    gate: str | None
    message: str
    section: str
    status: str
    note: str
    parameter: str

    def applies(self, route: str) -> bool:
        """Whether a call on ``route`` meets this check."""
        return route in self.routes


def _rule(id: str, topic: str, condition: str, source: str, routes: tuple[str, ...], message: str, section: str,
          parameter: str, *, gate: str | None = None, status: str = "enforced", note: str = "") -> KernelRule:
    return KernelRule(id, topic, condition, source, routes, gate, message, section, status, note, parameter)


RULES: tuple[KernelRule, ...] = (
    # ------------------------------------------------------------------------------------------ sparse modes, masks
    _rule("FIA-MASK-001", "sparse_mode values", "sparse_mode must be 0, 1, 2, 3, 4 or 9",
          _CHK + "mask_checker.cpp:56", ("fia",), r"SparseMode only supports 0/1/2/3/4/9", "6.3", "sparse_mode"),
    _rule("FIA-MASK-002", "a mask for sparse modes other than 0",
          "sparse_mode != 0 needs atten_mask (after A2's decode rewrite, FIA-MASK-003)",
          _CHK + "mask_checker.cpp:578", ("fia",), r"atten_mask cannot be empty", "6.3", "sparse_mode + atten_mask"),
    _rule("FIA-MASK-003", "decode sparse_mode rewritten to 0 (A2)",
          "on ASCEND910B (A2), a call the FIA route treats as the old incremental op (BSH/BSND/BNSD, S_q = 1, Q/K D = "
          "V D, no rope) gets sparse_mode 0, pre/next_tokens INT_MAX and no query lengths / query padding before any "
          "check: any sparse_mode, mask or not, runs as sparse_mode 0",
          _FIA + "fused_infer_attention_score_tiling_info_parser.cpp:686", ("fia",), NO_MESSAGE, "6.5",
          "sparse_mode", gate="decode_sparse_forced_zero",
          note="a rewrite, not a refusal: the kit validates and computes such a call as sparse_mode 0 on A2; A3 "
               "(SocVersion ASCEND910_93) keeps the caller's sparse_mode [inferred: A3 reports ASCEND910_93]"),
    _rule("FIA-MASK-004", "MLA D=512 sparse modes", "MLA with D = 512 (query_rope/key_rope) allows sparse_mode "
          "0, 3, 4 or 9", _CHK + "mask_checker.cpp:80", ("fia",), r"Only support sparse 0/3/4/9 when ifa mla",
          "6.5", "sparse_mode"),
    _rule("FIA-MASK-005", "Q/K D != V D sparse modes", "when Q/K D differs from V D (other than 192/128), "
          "sparse_mode must be 0, 2 or 3", _CHK + "mask_checker.cpp:217", ("fia",),
          r"only sparse mode 0/2/3 is supported", "6.3", "sparse_mode"),
    _rule("FIA-MASK-006", "the compressed mask of modes 2-4", "sparse_mode 2, 3, 4 need atten_mask of shape "
          "(2048, 2048), (1, 2048, 2048) or (1, 1, 2048, 2048)", _CHK + "mask_checker.cpp:566", ("fia",),
          r"The shape of atten_mask must be \[2048, 2048\], \[1, 2048, 2048\] or \[1, 1, 2048,\s*2048\]", "6.4", "atten_mask"),
    _rule("FIA-MASK-008", "quantised-K/V decode sparse mode", "S_q = 1 with int8/int4 K/V and a float query: "
          "sparse_mode must be 0", _CHK + "mask_checker.cpp:68", ("fia", "legacy-ifa"),
          r"When S of query equal to 1, sparseMode only supports 0", "6.5", "sparse_mode",
          note="on A2/A3 such calls take the legacy-ifa route, whose GQA path reads sparse_mode without checking it "
               "[inferred: no check found in incre_flash_attention_tiling_check.cpp]; the kit keeps the FIA "
               "checker's refusal (spec 25.1) rather than compute an undefined mode"),
    _rule("IFA-MASK-001", "legacy IFA MLA decode sparse mode", "the legacy incremental MLA (quantised K/V) with "
          "S_q = 1: sparse_mode must be 0", _IFA + "incre_flash_attention_tiling_check.cpp:1472", ("legacy-ifa",),
          r"when queryS = 1, sparseMode\(\d+\) only support 0", "6.5", "sparse_mode"),
    _rule("IFA-MASK-002", "legacy IFA MLA multi-token sparse mode", "the legacy incremental MLA (quantised K/V) "
          "with S_q > 1: sparse_mode 3 (antiquant) or 3/9 (full quant)",
          _IFA + "incre_flash_attention_tiling_check.cpp:1466", ("legacy-ifa",),
          r"when queryS > 1, sparseMode\(\d+\) only support 3", "6.5", "sparse_mode"),
    _rule("IFA-MASK-003", "legacy IFA MLA with TND: sparse modes", "the legacy incremental MLA with TND/TND_NTD: "
          "sparse_mode 0 without a mask, 3 (with the 2048 mask) or 9", _IFA + "incre_flash_attention_tiling_check.cpp"
          ":1450", ("legacy-ifa",), r"TND/TND_NTD only support (sparse\(\d+\) = 0/3/9|noMask when sparse = 0)",
          "6.5", "sparse_mode"),
    _rule("FIA-TOKENS-001", "pre/next tokens leave a band", "after the sparse mode sets the tokens, -next_tokens "
          "> pre_tokens is refused (no key left)", _CHK + "mask_checker.cpp:308", ("fia",),
          r"next_tokens \* \(-1\) > pre_tokens", "6.3", "pre_tokens + next_tokens"),
    _rule("SF-MASK-001", "split-fuse sparse modes", "on the split-fuse route sparse_mode is 0, 3 or 4",
          _FIA + "fused_infer_attention_score_tiling.cpp:1341", ("split-fuse",),
          r"In split fuse senario, sparseMode shall be 0 or 3 or 4", "6.3", "sparse_mode", status="unreachable",
          note="the router sends other sparse modes to the FIA route (IsUsingFAI needs 0/3/4)"),
    _rule("SF-MASK-002", "split-fuse: no mask means sparse_mode 0", "on the split-fuse route a call without "
          "atten_mask must have sparse_mode 0", _FIA + "fused_infer_attention_score_tiling.cpp:1345", ("split-fuse",),
          r"When attnMask is not provided, sparseMode must be 0", "6.3", "sparse_mode + atten_mask"),
    _rule("SF-MASK-003", "split-fuse: a mask means sparse_mode 3 or 4", "on the split-fuse route a call with "
          "atten_mask must have sparse_mode 3 or 4 (sparse_mode 0 with a mask is refused)",
          _FIA + "fused_infer_attention_score_tiling.cpp:1351", ("split-fuse",),
          r"When attnMask is provided, sparseMode must be 3 or 4", "6.3", "sparse_mode + atten_mask"),
    # ------------------------------------------------------------------------------------------------ heads, GQA
    _rule("FIA-MLA-001", "MLA D=512 query heads", "decode MLA (D = 512 with rope): num_heads in {1, 2, 4, 8, 16, "
          "32, 64, 128}", _CHK + "common_checker.cpp:1131", ("fia",),
          r"num_heads must be in the range of \{1, 2, 4, 8, 16, 32, 64, 128\}", "12", "num_heads",
          gate="mla_heads"),
    _rule("FIA-MLA-002", "MLA D=512 kv heads", "decode MLA (D = 512 with rope): num_key_value_heads must be 1",
          _CHK + "common_checker.cpp:1138", ("fia",), r"num_key_value_heads must be 1 in the Decode MLA", "12",
          "num_key_value_heads", gate="mla_heads"),
    _rule("IFA-MLA-001", "legacy IFA MLA heads", "the legacy incremental MLA (int8/int4 K/V): num_key_value_heads "
          "1 and G in {1, 2, 4, ..., 128}", _IFA + "incre_flash_attention_tiling_check.cpp:1675", ("legacy-ifa",),
          r"MLA only support \{1, 2, 4, 8, 16, 32, 64, 128\}|heads num\(\d+\) only support 1 in MLA", "12",
          "num_heads + num_key_value_heads", gate="mla_heads"),
    _rule("IFA-GQA-001", "legacy IFA group size", "the legacy incremental route without rope: N_q / N_kv <= 64",
          _IFA + "incre_flash_attention_tiling_check.cpp:326", ("legacy-ifa",),
          r"heads num divided by the key/value's heads num = \d+, cannot be greater than 64", "10",
          "num_key_value_heads", gate="gqa_ratio"),
    _rule("PFA-GQA-001", "legacy PFA group size", "the legacy prompt route: N_q / N_kv <= 64",
          _PFA + "prompt_flash_attention_tiling.cpp:1748", ("legacy-pfa",),
          r"numHeads / numKeyValueHeads = \d+, cannot be larger than 64", "10", "num_key_value_heads",
          gate="gqa_ratio"),
    _rule("FIA-GQA-001", "FIA route group size", "the FIA route has no cap on N_q / N_kv outside decode MLA "
          "(the kit's old 'G <= 64' is the legacy routes' rule)", _CHK + "common_checker.cpp:656", ("fia",),
          r"axis G must be in the range", "10", "num_key_value_heads", status="not-enforced",
          note="no such check on the FIA route; listed so that the G <= 64 of the legacy routes is not "
               "mistaken for it"),
    _rule("FIA-MLA-003", "MLA D=512 template features", "the non-quantised MLA D=512 template takes no "
          "learnable_sink, shared prefix, pse_shift or left padding (no template matches otherwise)",
          _FIA + "arch22/fia_tiling_nonquant_mla.cpp:103", ("fia",), NO_MESSAGE, "12",
          "query_rope + query_padding_size/kv_padding_size",
          note="no message of its own: the template registry finds no tiling; the kit refuses left padding here "
               "(the other features have their own checks)"),
    _rule("FIA-ROPE-001", "rope tensors together", "query_rope and key_rope are given together",
          _CHK + "rope_checker.cpp:403", ("fia",), r"When query_rope is (not )?empty, key_rope (must|cannot) be empty",
          "12", "query_rope + key_rope"),
    _rule("FIA-ROPE-002", "rope head dim", "query_rope / key_rope have D = 64", _CHK + "rope_checker.cpp:61",
          ("fia",), r"When rope exists, the d axis of rope must be 64", "12", "query_rope"),
    _rule("FIA-ROPE-003", "query head dim with rope", "with rope, Q/K D is 128 or 512", _CHK + "rope_checker.cpp:84",
          ("fia",), r"When rope exists, the D axis of query and key must be 128 or 512", "12", "query"),
    _rule("FIA-ROPE-004", "rope dtypes", "query_rope has the query's dtype and key_rope the key's",
          _CHK + "rope_checker.cpp:157", ("fia",), r"The dtype of (query|key)_rope and (query|key) must be the same",
          "12", "query_rope"),
    # ------------------------------------------------------------------------------------------------ axes, D
    _rule("FIA-AXIS-001", "batch size", "B must be in (0, 65536]", _CHK + "common_checker.cpp:568", _ALL,
          r"The value of B must be within the range \(0, \d+\]", "18.2", "query"),
    _rule("FIA-AXIS-002", "Q/K D != V D: head dims", "when Q/K D differs from V D (other than 192/128), both must "
          "be <= 128", _CHK + "common_checker.cpp:598", ("fia",),
          r"must be <= 128 when D of query and key is not equal to D of value", "12",
          "value", gate="qk_v_head_dims"),
    _rule("FIA-LAYOUT-001", "head dim alignment (A2)", "on ASCEND910B (A2), a call that is not 'legacy IFA' "
          "shaped with BSH/BSND/BNSD/BNSD_BSND needs V D a multiple of 16", _CHK + "common_checker.cpp:1160",
          ("fia",), r"should be align to 16", "18.2", "query", status="not-enforced",
          note="A2 only (the A3 branch skips ValidateNoRopeLayoutDim); the kit computes any D so that examples "
               "stay small (as for tnd_head_dims)"),
    _rule("FIA-LAYOUT-002", "TND head dims (A2)", "on ASCEND910B (A2) without rope, TND needs D in {64, 128, 192} "
          "(NTD, BSH_BNSD, BSND_BNSD, NTD_TND: {64, 128})", _CHK + "common_checker.cpp:1203", ("fia",),
          r"when input_layout is TND, only query\|key\|value headDim", "12", "query", gate="tnd_head_dims",
          status="not-enforced", note="A2 only; documented in targets (tnd_head_dims, checked: no): the kit "
                                      "computes any D"),
    _rule("IFA-PREC-001", "legacy IFA precision modes", "the legacy incremental route takes inner_precise 0 or 1",
          _IFA + "incre_flash_attention_tiling.cpp:620", ("legacy-ifa",), r"precision mode\[\d+\] should be 0 or 1",
          "7", "inner_precise"),
    _rule("FIA-PREC-001", "inner_precise range", "inner_precise must be in [0, 4]", _CHK + "common_checker.cpp:1279",
          ("fia",), r"The value of inner_precise must be in the range of \[0, \d+\]", "7", "inner_precise", status="not-enforced",
          note="the kit takes 0-3 on the FIA route, S_q = 1 included (2/3 add the row-invalid correction, spec 7 "
               "[inferred] for decode); 4 has no documented meaning and stays refused"),
    # ------------------------------------------------------------------------------------------------ LSE, pse
    _rule("FIA-LSE-001", "softmax_lse with Q/K D != V D", "GQA without rope and Q/K D != V D (other than 192/128): "
          "softmax_lse_flag must be False", _CHK + "softmax_lse_checker.cpp:134", ("fia",),
          r"softmax_lse_flag must be False", "8", "softmax_lse_flag"),
    _rule("FIA-PSE-001", "pse_shift with MLA", "pse_shift must be empty with MLA rope", _CHK + "pse_checker.cpp:181",
          ("fia",), r"pseShift must be empty in the MLA scenario", "9", "pse_shift"),
    _rule("FIA-PSE-002", "pse_shift with transposed / packed layouts", "pse_shift must be empty for BSH_BNSD, "
          "BSND_BNSD, TND, NTD, NTD_TND, TND_NTD", _CHK + "pse_checker.cpp:186", ("fia",),
          r"pseShift must be empty when the inputLayout is", "9", "pse_shift"),
    _rule("FIA-PSE-003", "pse_shift with Q/K D != V D", "pse_shift must be empty when Q/K D differs from V D",
          _CHK + "pse_checker.cpp:159", ("fia",), r"pseShift must be empty when D of query and key is not equal",
          "9", "pse_shift"),
    # ------------------------------------------------------------------------------------------------ learnable sink
    _rule("FIA-SINK-001", "learnable_sink dtype", "on A2/A3 learnable_sink must be bfloat16",
          _CHK + "learnable_sink_checker.cpp:55", ("fia",), r"dtype of learnable_sink must be BFLOAT16", "13",
          "learnable_sink"),
    _rule("FIA-SINK-002", "learnable_sink with pse_shift", "pse_shift must be empty with learnable_sink",
          _CHK + "learnable_sink_checker.cpp:90", ("fia",), r"pseShift must be empty when learnable sink", "13",
          "learnable_sink + pse_shift", status="not-enforced",
          note="shadowed: a sink needs TND/NTD_TND, where pse_shift is already refused (FIA-PSE-002); the kit's "
               "own sink + pse check stays"),
    _rule("FIA-SINK-003", "learnable_sink and inner_precise", "inner_precise must be 0 with learnable_sink",
          _CHK + "learnable_sink_checker.cpp:100", ("fia",), r"The value of inner_precise must be \d+ when learnable sink", "13",
          "learnable_sink + inner_precise"),
    _rule("FIA-SINK-004", "learnable_sink head dims", "with learnable_sink, Q/K D in {64, 128, 192} and V D in "
          "{64, 128}", _CHK + "learnable_sink_checker.cpp:144", ("fia",),
          r"must be in the range of \{64, 128(, 192)?\} when learnable sink", "13",
          "learnable_sink", note="checked for float16/bfloat16 queries; the kit's float32/float64 examples keep "
                                 "any D, as the TND head-dim rule (targets tnd_head_dims) does"),
    _rule("SF-SINK-001", "split-fuse: learnable_sink dtype", "on the split-fuse route learnable_sink has the "
          "query's dtype (float16 or bfloat16)", _FIA + "fused_infer_attention_score_tiling.cpp:1158",
          ("split-fuse",), r"Input dtype of Q and learnable sink must be consistent", "13", "learnable_sink"),
    _rule("SF-SINK-002", "split-fuse: learnable_sink and inner_precise", "on the split-fuse route a sink needs "
          "inner_precise 0", _FIA + "fused_infer_attention_score_tiling.cpp:1181", ("split-fuse",),
          r"When learnable sink is enabled, innerPrecise shall not be 1, 2 or 3", "13",
          "learnable_sink + inner_precise"),
    # ------------------------------------------------------------------------------------------------ shared prefix
    _rule("FIA-PREFIX-001", "shared prefix with paging", "key/value_shared_prefix must be empty with block_table",
          _CHK + "system_prefix_checker.cpp:288", ("fia",), r"prefix must be empty when page attention", "14",
          "key_shared_prefix + block_table"),
    _rule("FIA-PREFIX-002", "shared prefix layouts", "key/value_shared_prefix must be empty for BSH_BNSD, "
          "BSND_BNSD and the TND family", _CHK + "system_prefix_checker.cpp:315", ("fia",),
          r"prefix must be empty when the inputLayout is", "14", "key_shared_prefix + input_layout"),
    _rule("FIA-PREFIX-003", "shared prefix with MLA", "key/value_shared_prefix must be empty with MLA rope",
          _CHK + "system_prefix_checker.cpp:320", ("fia",), r"prefix must be empty in (PFA|IFA) MLA scenario", "14",
          "key_shared_prefix + query_rope"),
    _rule("FIA-PREFIX-004", "shared prefix with left padding", "key/value_shared_prefix must be empty with "
          "query/kv_padding_size", _CHK + "system_prefix_checker.cpp:299", ("fia",),
          r"prefix must be empty when left padding is enabled", "14",
          "query_padding_size/kv_padding_size + key_shared_prefix"),
    # ------------------------------------------------------------------------------------------------ left padding
    _rule("FIA-PAD-001", "left padding with paging", "query/kv_padding_size must be empty with block_table",
          _CHK + "left_padding_checker.cpp:180", ("fia",), r"leftPadding must be empty when page attention", "15",
          "query_padding_size/kv_padding_size + block_table"),
    _rule("FIA-PAD-002", "left padding layouts", "left padding is refused for BSH_BNSD, BSND_BNSD and the TND "
          "family", _CHK + "left_padding_checker.cpp:138", ("fia",),
          r"input_layout cannot be \w+ when leftpadding is enabled", "15",
          "query_padding_size/kv_padding_size + input_layout"),
    # ------------------------------------------------------------------------------------------------ paged attention
    _rule("FIA-PA-001", "block_table dtype", "block_table must be int32", _CHK + "paged_attention_checker.cpp:105",
          ("fia",), r"blockTable dtype only support INT32", "11", "block_table"),
    _rule("FIA-PA-002", "paged attention needs kv lengths", "with block_table, actual_seq_lengths_kv is required",
          _CHK + "paged_attention_checker.cpp:199", ("fia",),
          r"actual_seq_lengths_kv cannot be empty", "11", "actual_seq_lengths_kv"),
    _rule("FIA-PA-003", "block_size (non-quantised)", "with block_table, block_size a multiple of 16 in [16, 1024]",
          _CHK + "paged_attention_checker.cpp:568", ("fia",),
          r"when page attention enable, blockSize\(\d+\) must be a multiple of", "11", "block_size", gate="block_size"),
    _rule("FIA-PA-005", "block_size for other head dims", "with block_table, no rope and Q/K D not 64/128: "
          "S_q > 1 needs block_size a multiple of 128 in [128, 1024], S_q = 1 a multiple of 16 in [16, 512]",
          _CHK + "paged_attention_checker.cpp:593", ("fia",), r"block_size.*a multiple of (128|16) in range of",
          "11", "block_size", gate="block_size", status="not-enforced",
          note="the kit checks the D-independent rule (FIA-PA-003, a multiple of 16 up to 1024): its tests and "
               "examples page tiny heads (D 16) with block 16; a D 256 paged prefill with block 16 is accepted by "
               "the kit and refused by the kernel"),
    # ------------------------------------------------------------------------------------------------ unreachable
    _rule("FIA-LSE-002", "softmax_lse allocated", "softmax_lse_flag True needs a softmax_lse output tensor",
          _CHK + "softmax_lse_checker.cpp:53", ("fia",), r"softmaxLse cannot be empty", "8", "softmax_lse_flag",
          status="unreachable", note="torch_npu allocates softmax_lse itself from the flag"),
    _rule("FIA-OUT-001", "attention_out allocated", "attention_out must exist", _CHK + "common_checker.cpp:60",
          _ALL, r"attention_out", "4.3", "attention_out", status="unreachable",
          note="torch_npu allocates attention_out itself"),
    _rule("FIA-PA-004", "non-contiguous caches", "on arch22 only the MLA D512 PA template takes non-contiguous "
          "caches", _CHK + "paged_attention_checker.cpp:748", ("fia",), r"non-contiguous cache is supported only",
          "11", "key/value", status="unreachable",
          note="torch_npu's bindings make inputs contiguous before the call [inferred]"),
)


@dataclass(frozen=True)
class KitRule:
    """A rule the kit keeps that the kernel's host code does not apply (or applies only on some routes)."""

    topic: str
    where: str
    why: str


KIT_ONLY: tuple[KitRule, ...] = (
    KitRule("the compressed mask's content", "planning._check_mask", "the kernel checks the 2048 template's shape "
            "only (FIA-MASK-006); the kit also requires triu(ones, 1), since any other content has no defined "
            "answer (spec 6.4, 22 #6)"),
    KitRule("sparse_mode 5-8", "planning._check_sparse", "refused by the FIA checker (FIA-MASK-001); the legacy PFA "
            "route's own sparse-mode range was not read; the kit does not model modes 5-8"),
    KitRule("inner_precise 4", "planning._check_inner_precise", "the FIA checker takes [0, 4] (FIA-PREC-001); "
            "the docs give 0-3 and no meaning for 4 (spec 7)"),
    KitRule("learnable_sink layouts TND / NTD_TND only", "planning._check_sink", "no layout check in the A2/A3 "
            "sink checker; the docs restrict sinks to TND (spec 13)"),
    KitRule("S_q = 1 with int8/int4 K/V needs sparse_mode 0", "planning._check_sparse", "the FIA checker's rule "
            "(FIA-MASK-008); on A2/A3 such calls take the legacy-ifa route, which does not check it [inferred]"),
    KitRule("Q/K D != V D outside the TND family (A2/A3)", "planning._check_key_value_shapes", "the FIA checkers "
            "let BSH/BSND/BNSD with D <= 128 through; the kit follows the docs (rule qk_v_head_dims, spec 12) "
            "[not settled: whether an arch22 template takes them was not read]"),
    KitRule("MLA with int8/int4 K/V and a float query", "planning.build_plan", "refused by the "
            "kit (spec 12, 16.3); the legacy IFA route has an antiquant MLA branch "
            "(incre_flash_attention_tiling_check.cpp:1466) that the kit does not model"),
    KitRule("a decode mask as (B, S_kv)", "planning._decode_mask", "the FIA route reads a 2-D mask as "
            "(S_q', S_kv') and 3-D/4-D as (B|1, [1,] S_q', S_kv') even for S_q = 1 (mask_checker.cpp:496); the "
            "docs' (B, S_kv) reading is kept (spec 6.2, 22 #16)"),
)

_BY_ID = {r.id: r for r in RULES}
assert len(_BY_ID) == len(RULES), "duplicate rule id"


def rule_by_id(rule_id: str) -> KernelRule:
    """The rule with id ``rule_id``. Raises FIAArgumentError for an unknown id."""
    try:
        return _BY_ID[rule_id]
    except KeyError:
        raise FIAArgumentError("rule_id", f"is not in the kernel rule book ({len(RULES)} rules)", rule_id) from None


def error(rule_id: str, rule: str, got: Any = None, *, parameter: str | None = None,
          **kwargs: Any) -> FIAArgumentError:
    """An FIAArgumentError for a break of book rule ``rule_id``: ``rule`` says what was broken for this call (with
    the docs section), the error carries the book's id and kernel source; the parameter defaults to the book's."""
    entry = rule_by_id(rule_id)
    return FIAArgumentError(parameter or entry.parameter, rule, got, rule_id=entry.id, source=entry.source,
                            **kwargs)
