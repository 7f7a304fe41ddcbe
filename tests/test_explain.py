"""fia_kit.explain: the NPU's error text read against the kernel's rule book.

Each pasted line below is written as the kernel would print it: the message from the check's own format string in
ops-transformer at 5778144 (file:line cited next to it), inside the envelope that CANN's log macros and torch_npu
put around it:

* the error manager's report, as torch_npu shows it after its RuntimeError (format seen in vllm-ascend issue #6076):
  "E89999[PID: 13800] 2026-01-21-05:41:35.799.239 (E89999):  <message>[FUNC:f][FILE:x.cpp][LINE:n]";
* a plog line, as hicann/opbase@aa3cd74 include/op_common/log/log.h:110-112 formats every host error:
  "[file:line][SUBMOD][function][tid] OpName:[op] <message>";
* the 2026 parameter form (log.h:790, EZ0026): "Parameter X of Y has incorrect value Z. Reason: R.";
* torch_npu's status line (vllm-ascend issues #6076, #8523): "call aclnnFusedInferAttentionScoreV3 failed, error
  code is 561002".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fia_kit
from fia_kit.case import Case
from fia_kit.rules.explain import CODE_SOURCES, CODES, Finding, explain, table

FIA = "attention/fused_infer_attention_score/op_host/"
IFA = "attention/incre_flash_attention/op_host/"

TORCH_NPU_HEAD = ("RuntimeError: npu_fused_infer_attention_score:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:275 "
                  "NPU function error: call aclnnFusedInferAttentionScoreV3 failed, error code is 561002\n"
                  "[ERROR] 2026-09-02-10:00:00 (PID:4242, Device:0, RankID:-1) ERR00100 PTA call acl api failed.\n")


def _report(code: str, message: str, func: str, file: str, line: int) -> str:
    """The error manager's report of one message, as torch_npu prints it after its RuntimeError."""
    return (f"{code}: Inner Error!\n"
            f"{code}[PID: 4242] 2026-09-02-10:00:00.123.456 ({code}):  {message}[FUNC:{func}][FILE:{file}]"
            f"[LINE:{line}]\n        TraceBack (most recent call last):\n")


def _plog(file: str, line: int, func: str, message: str) -> str:
    """One CANN plog line of a host error (log.h:110-112's prefix after dlog's own header)."""
    return (f"[ERROR] OP(4242,python3):2026-09-02-10:00:00.123.456 [{file}:{line}][OPS_BASE][{func}][4242] "
            f"OpName:[FusedInferAttentionScore:FusedInferAttentionScore] {message}")


def _near(source: str, path: str, line: int, slack: int = 8) -> bool:
    """Whether a book source "path:line" is the check whose message is at ``path:line`` (the book may cite the
    OP_CHECK_IF a few lines above the format string)."""
    file, _, number = source.rpartition(":")
    return file == path and abs(int(number) - line) <= slack


def _only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


# ------------------------------------------------------------------------------------------------ message styles

# mask_checker.cpp:56-59: OP_LOGE_FOR_INVALID_VALUE_WITH_REASON(opName, "sparse_mode", value, "SparseMode only
# supports 0/1/2/3/4/9"), which prints log.h:790's "Parameter %s of %s has incorrect value %s. Reason: %s."
SPARSE_2026 = ("Parameter sparse_mode of FusedInferAttentionScore has incorrect value 5. Reason: SparseMode only "
               "supports 0/1/2/3/4/9.")


def test_the_2026_parameter_form_in_a_torch_npu_traceback():
    text = TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)
    f = _only(explain(text))
    assert _near(f.source, FIA + "checkers/mask_checker.cpp", 59)
    assert f.parameter == "sparse_mode" and "0, 1, 2, 3, 4 or 9" in f.rule
    assert f.section == "spec 6.3" and f.code == "EZ0026"
    assert "561002" in f.meaning and "fia" in f.meaning  # the aclnn status and the route are explained
    assert f.rule_id and fia_kit.rules.rule_by_id(f.rule_id).source == f.source


def test_the_older_2026_wording_with_operator_and_a_plog_line():
    # mc2_log_compat.h:391 at 5778144 (the pre-2026-07 log.h) wrote "Parameter %s of operator %s has ..."
    line = _plog("mask_checker.cpp", 56, "CheckSparseMode", SPARSE_2026.replace(" of ", " of operator ", 1))
    f = _only(explain(line))
    assert _near(f.source, FIA + "checkers/mask_checker.cpp", 59) and f.parameter == "sparse_mode"
    assert f.code is None  # a plog line carries no error-manager code, and no aclnn status was pasted


def test_a_free_text_e89999_message_of_the_split_fuse_route():
    # fused_infer_attention_score_tiling.cpp:1351: OPS_REPORT_VECTOR_INNER_ERR(name, "When attnMask is provided,
    # sparseMode must be 3 or 4") -> E89999 (common/include/err/ops_err.h:31)
    text = TORCH_NPU_HEAD + _report("E89999", "When attnMask is provided, sparseMode must be 3 or 4",
                                    "CheckFAIMask", "fused_infer_attention_score_tiling.cpp", 1351)
    f = _only(explain(text))
    assert _near(f.source, FIA + "fused_infer_attention_score_tiling.cpp", 1351)
    assert "split-fuse" in f.meaning and f.code == "E89999"
    assert "sparse_mode" in f.parameter


def test_a_free_text_ez9999_message_of_the_legacy_incremental_route():
    # incre_flash_attention_tiling_check.cpp:327: OP_LOGE(opName, "the query's heads num divided by the key/value's
    # heads num = %u, cannot be greater than 64", g) -> EZ9999 (opbase log.h:1080)
    message = "the query's heads num divided by the key/value's heads num = 128, cannot be greater than 64"
    text = TORCH_NPU_HEAD + _report("EZ9999", message, "CheckGQA", "incre_flash_attention_tiling_check.cpp", 327)
    f = _only(explain(text))
    assert _near(f.source, IFA + "incre_flash_attention_tiling_check.cpp", 327)
    assert "legacy-ifa" in f.meaning and f.code == "EZ9999"


def test_a_free_text_message_of_the_legacy_prompt_route():
    # prompt_flash_attention_tiling.cpp:1749: OP_LOGE(opName, "numHeads / numKeyValueHeads = %d, cannot be larger
    # than 64", g), in a plog line
    f = _only(explain(_plog("prompt_flash_attention_tiling.cpp", 1749, "SetTilingHeadNumRatio",
                            "numHeads / numKeyValueHeads = 96, cannot be larger than 64")))
    assert _near(f.source, "attention/prompt_flash_attention/op_host/prompt_flash_attention_tiling.cpp", 1749)
    assert "legacy-pfa" in f.meaning


def test_the_2026_argument_form():
    # pse_checker.cpp:179-181: OP_LOGE_FOR_INVALID_ARGUMENT_WITH_REASON(opName, "pseShift", "pseShift must be empty
    # in the MLA scenario"), which prints log.h:1010's "Parameter %s of %s is invalid. Reason: %s." (EZ0037)
    message = ("Parameter pseShift of FusedInferAttentionScore is invalid. Reason: pseShift must be empty in the MLA "
               "scenario.")
    f = _only(explain(_report("EZ0037", message, "CheckerFeatureCrossover", "pse_checker.cpp", 181)))
    assert _near(f.source, FIA + "checkers/pse_checker.cpp", 181)
    assert f.parameter == "pseShift" and f.code == "EZ0037" and f.section == "spec 9"


def test_a_checker_message_in_a_vllm_log_with_its_prefixes():
    # The same sparse-mode line as vLLM's worker logger prints it (vllm-ascend #12956's prefix).
    prefix = "(Worker_TP0 pid=2312) ERROR 07-28 01:48:32 [multiproc_executor.py:987] "
    text = "".join(prefix + line + "\n" for line in (TORCH_NPU_HEAD + _report(
        "EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)).splitlines())
    assert _only(explain(text)).parameter == "sparse_mode"


def test_a_message_of_the_op_that_no_rule_matches_is_still_explained_by_its_code():
    # paged_attention_checker.cpp writes its 2026 messages through the same macro (EZ0026); a reason the book
    # does not hold gives a finding with the code's meaning and the capture-and-lint advice
    message = "Parameter block_size of FusedInferAttentionScore has incorrect value 17. Reason: a reason no rule has."
    f = _only(explain(_report("EZ0026", message, "CheckBlockSize", "paged_attention_checker.cpp", 99)))
    assert f.rule_id is None and f.parameter == "block_size" and f.rule == "a reason no rule has"
    assert f.code == "EZ0026" and "fia_kit.capture" in f.fix and "lint" in f.fix
    assert f.source == CODE_SOURCES["EZ0026"]


def test_a_whole_plog_is_read_on_its_error_lines():
    info = [f"[INFO] GE(4242,python3):2026-09-02-10:00:00.{i:06d} [graph_builder.cc:{i}]4242 node {i} built"
            for i in range(5000)]
    info.insert(3000, _plog("mask_checker.cpp", 56, "CheckSparseMode", SPARSE_2026))
    assert _only(explain("\n".join(info))).parameter == "sparse_mode"


@pytest.mark.parametrize("line, file", [
    # vllm-ascend #6076 (CANN 8.5): the split-fuse TND check as older kernels worded it
    ("E89999[PID: 13800] 2026-01-21-05:41:35.799.239 (E89999):  When layout is TND, queryT(8) must be equal to the "
     "last element of actualSequenceLengthQ(5)[FUNC:CheckFAISeqlenDataInTND][FILE:fused_infer_attention_score_tiling"
     ".cpp][LINE:904]", "fused_infer_attention_score_tiling.cpp"),
    # vllm-ascend #8107: arch22/fused_infer_attention_score_tiling_check_consistency.cpp:383's OP_LOGE
    ("EZ9999[PID: 639] 2026-04-07-07:24:31.000.001 (EZ9999):  the key/value's actual sequence lengths shape size is "
     "9, it should be bigger or equal to batch size(16) or equal to 1.[FUNC:CheckActualSeqLensKv][FILE:fused_infer_"
     "attention_score_tiling_check_consistency.cpp][LINE:383]", "fused_infer_attention_score_tiling_check_consistency"),
])
def test_messages_users_reported_are_recognised_as_the_ops(line, file):
    f = _only(explain(line))
    if f.rule_id is None:  # not (yet) in the book: the host file and the code still say what happened
        assert file in f.meaning and f.code in ("E89999", "EZ9999") and "fia_kit.capture" in f.fix
    else:
        assert file in f.source


def test_one_rule_reported_twice_gives_one_finding():
    text = (TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)
            + _plog("mask_checker.cpp", 56, "CheckSparseMode", SPARSE_2026))
    assert len(explain(text)) == 1


def test_the_kits_own_error_names_its_rule():
    arguments = _arguments(sparse_mode=5)
    with pytest.raises(fia_kit.FIAArgumentError) as caught:
        fia_kit.plan("v1", arguments.pop("query"), arguments.pop("key"), arguments.pop("value"), **arguments)
    f = _only(explain(f"fia_kit.errors.FIAArgumentError: {caught.value}"))
    assert f.rule_id == caught.value.rule_id and f.source == caught.value.source and f.parameter == "sparse_mode"


# ------------------------------------------------------------------------------------------------ bare codes

@pytest.mark.parametrize("line", [
    "aclnnFusedInferAttentionScoreV3 failed, error code 561002",
    "RuntimeError: npu_fused_infer_attention_score_symint:../third_party/op-plugin/op_plugin/ops/opapi/"
    "FusedInferAttentionScoreKernelNpuOpApi.cpp:425 NPU function error: call aclnnFusedInferAttentionScoreV3 "
    "failed, error code is 561002",
    TORCH_NPU_HEAD + "E89999: Inner Error!\n",
])
def test_a_bare_tiling_code_says_what_it_means_and_how_to_find_the_rule(line):
    f = _only(explain(line))
    assert f.rule_id is None and f.code == "561002 ACLNN_ERR_INNER_TILING_ERROR"
    assert "tiling" in f.meaning and "fia_kit.capture" in f.fix and "lint" in f.fix
    # the code's meaning is cited where it is defined: the op team's table and opbase's op_errno.h:20
    assert "aclnn_return_code.md:24" in f.source and "op_errno.h:20" in f.source


def test_each_status_code_the_op_returns_is_named():
    for code, (name, _) in CODES.items():
        if code.isdigit():
            f = _only(explain(f"call aclnnFusedInferAttentionScoreV4 failed, error code is {code}"))
            assert f.code == f"{code} {name}" and f.source == CODE_SOURCES[code]


def test_another_ops_code_is_not_the_ops_error():
    assert explain("NPU function error: call aclnnIndex failed, error code is 161002") == []
    assert explain("error code is 999999") == []
    # another op's check with the FIA checker's very words: its log names its own host file
    other = _report("EZ0026", SPARSE_2026.replace("FusedInferAttentionScore", "SparseFlashAttention"),
                    "CheckSparseMode", "sparse_flash_attention_tiling.cpp", 99)
    assert explain(other.replace("\n        TraceBack (most recent call last):", "")) == []


# ------------------------------------------------------------------------------------------------ call=

def _arguments(**changes):
    built = Case(q_lens=(6, 4), kv_lens=(9, 12), dtype=torch.float16).build("v1")
    return {"query": built.query, "key": built.key, "value": built.value, **built.kwargs, **changes}


def test_a_call_that_breaks_the_same_rule_confirms_the_finding():
    text = TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)
    f = _only(explain(text, call=_arguments(sparse_mode=5)))
    assert f.confirmed is True and f.rule_id in f.confirmation


def test_a_call_the_kit_accepts_does_not_confirm_it():
    text = TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)
    for call in (_arguments(), fia_kit.plan(Case(dtype=torch.float16)), Case(dtype=torch.float16).to_fia_call()):
        f = _only(explain(text, call=call))
        assert f.confirmed is False and "accepts" in f.confirmation


def test_a_call_broken_by_another_rule_does_not_confirm_it():
    text = TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56)
    f = _only(explain(text, call=_arguments(num_heads=3)))  # the query has 2 heads: a shape error, not the mode
    assert f.confirmed is False and "another rule" in f.confirmation


def test_a_bare_code_with_the_call_names_the_kits_rule():
    f = _only(explain("aclnnFusedInferAttentionScoreV3 failed, error code 561002", call=_arguments(sparse_mode=5)))
    assert f.confirmed is True and f.parameter == "sparse_mode" and f.rule_id is not None
    assert _near(f.source, FIA + "checkers/mask_checker.cpp", 59)


@pytest.mark.parametrize("call", [{"query": 1}, object(), 42])
def test_a_call_that_cannot_be_read_leaves_the_finding_unconfirmed(call):
    f = _only(explain("aclnnFusedInferAttentionScoreV3 failed, error code 561002", call=call))
    assert f.confirmed is None and "could not be validated" in f.confirmation


# ------------------------------------------------------------------------------------------------ never raises

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.binary(), st.lists(st.sampled_from([
    "Parameter ", " of ", "operator ", "has incorrect value ", ". Reason: ", "EZ0026", "E89999[PID: 1] ",
    "(E89999):  ", "[FUNC:", "][FILE:", "mask_checker.cpp", "][LINE:", "]", "error code is ", "561002", "aclnn",
    "FusedInferAttentionScore", "\n", "\x00", "\r", "[", "OpName:[", "SparseMode only supports 0/1/2/3/4/9",
])).map("".join)))
def test_explain_never_raises_on_any_text(text):
    findings = explain(text)
    assert isinstance(findings, list) and all(isinstance(f, Finding) for f in findings)
    assert isinstance(table(findings), str)


@pytest.mark.parametrize("text", [None, 42, object(), "", "   \n\n", "hello world", "[" * 100_000,
                                  "Parameter " * 20_000 + "of x has incorrect value", b"\xff\xfe\x00" * 1000])
def test_unrecognised_text_gives_no_finding(text):
    assert explain(text) == []


def test_the_public_name():
    assert fia_kit.explain is explain and "explain" in fia_kit.__all__


# ------------------------------------------------------------------------------------------------ the CLI

def _cli(args, stdin=""):
    return subprocess.run([sys.executable, "-m", "fia_kit.cli", "explain", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_reads_a_file_or_stdin_and_prints_a_table(tmp_path):
    log = tmp_path / "npu.log"
    log.write_text(TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56))
    for args, stdin in (([str(log)], ""), (["-"], log.read_text())):
        done = _cli(args, stdin)
        assert done.returncode == 0, done.stderr
        header, rule = done.stdout.splitlines()[0], done.stdout.splitlines()[2]
        assert header.split()[:2] == ["rule", "parameter"] and "sparse_mode" in rule and "mask_checker.cpp:" in rule
        assert "fix:" in done.stdout


def test_the_cli_confirms_against_a_captured_call(tmp_path):
    log = tmp_path / "npu.log"
    log.write_text(TORCH_NPU_HEAD + _report("EZ0026", SPARSE_2026, "CheckSparseMode", "mask_checker.cpp", 56))
    capture = tmp_path / "calls.fiacap"
    arguments = _arguments()
    with fia_kit.capture(capture):
        q, k, v = arguments.pop("query"), arguments.pop("key"), arguments.pop("value")
        fia_kit.npu_fused_infer_attention_score(q, k, v, **arguments)  # call 0: fine
        with pytest.raises(fia_kit.FIAArgumentError):
            fia_kit.npu_fused_infer_attention_score(q, k, v, **{**arguments, "sparse_mode": 5})  # call 1 raised
    done = _cli([str(log), "--capture", str(capture)])
    assert done.returncode == 0 and "call 1 of" in done.stdout
    assert done.stdout.splitlines()[3].split()[-1] == "confirmed"
    done = _cli([str(log), "--capture", str(capture), "--call", "0"])
    assert done.stdout.splitlines()[3].split()[-2:] == ["not", "confirmed"] and "accepts" in done.stdout
    assert _cli([str(log), "--capture", str(capture), "--call", "7"]).returncode == 2


def test_the_cli_says_when_nothing_is_found_and_when_the_file_is_missing(tmp_path):
    done = _cli(["-"], "all is well\n")
    assert done.returncode == 1 and "no finding" in done.stdout
    done = _cli([str(tmp_path / "absent.log")])
    assert done.returncode == 2 and "cannot read" in done.stderr
