"""Explain what the NPU said: the kernel's error text, read against the rule book.

    findings = fia_kit.explain(pasted_text)              # a traceback, a CANN plog excerpt, or one line
    findings = fia_kit.explain(pasted_text, call=call)   # ... confirmed by validating the call that failed
    for f in findings: print(f)

What users paste comes in a few shapes, all written by code we can read (sources at the commit named in
``CODE_SOURCES``):

* torch_npu's RuntimeError: ``"... NPU function error: call aclnnFusedInferAttentionScoreV3 failed, error code is
  561002"``, followed by the error manager's report: ``"E89999: Inner Error!"``, then
  ``"E89999[PID: 1] 2026-01-21-05:41:35.799.239 (E89999):  <message>[FUNC:f][FILE:x.cpp][LINE:904]"`` and
  ``"TraceBack (most recent call last):"`` lines of the same ``<message>[FUNC:..][FILE:..][LINE:..]`` form;
* a CANN plog line, as the host log macro writes it: ``"[ERROR] OP(...) [x.cpp:904][SUBMOD][CheckFunc][tid]
  OpName:[FusedInferAttentionScore] <message>"``;
* the 2026 error-code scheme (EZ0008-EZ0038, CANN's log.h): ``"Parameter X of operator Y has incorrect value Z.
  Reason: R."`` (newer headers drop "operator"), ``"Parameter X of Y is invalid. Reason: R."``;
* a bare ``"aclnnFusedInferAttentionScoreV3 failed, error code 561002"``;
* the kit's own ``FIAArgumentError``, which names the book's rule: ``"... [FIA-MASK-001 at path:line]"``.

Each message is matched against the ``message`` pattern of every rule of the book (``fia_kit.rules.book.RULES``):
the book is the one table of the kernel's messages. A message that names one of the op's host files or the op but
matches no rule still gives a finding (what its error code means). A bare aclnn status code gives what the code
means and how to find the rule behind it: capture the call and lint it. Unrecognised text gives no finding;
``explain`` never raises on any text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from ..errors import FIAArgumentError

__all__ = ["Finding", "explain", "table", "CODES", "CODE_SOURCES"]

_OPS_TRANSFORMER = "libochao-huawei/ops-transformer@5778144"
_OPBASE = "hicann/opbase@aa3cd74"
_RETURN_CODES = "docs/zh/context/aclnn_return_code.md"
_ERRNO = "include/nnopbase/opdev/op_errno.h"
_LOG = "include/op_common/log/log.h"

# Where each code's meaning comes from: "repository@commit path:line" (the aclnn status codes: the op team's table
# and the header that defines them; the error manager's codes: the macro that reports each).
CODE_SOURCES: dict[str, str] = {
    **{code: f"{_OPS_TRANSFORMER} {_RETURN_CODES}:{doc}; {_OPBASE} {_ERRNO}:{header}" for code, doc, header in (
        ("161001", 11, 15), ("161002", 12, 16), ("361001", 13, 17), ("561000", 22, 18), ("561001", 23, 19),
        ("561002", 24, 20), ("561003", 25, 21), ("561103", 28, 24), ("561112", 38, 35))},
    "EZ9999": f"{_OPBASE} {_LOG}:1080",
    "E89999": f"{_OPS_TRANSFORMER} common/include/err/ops_err.h:31",
    "E69999": f"{_OPS_TRANSFORMER} common/include/err/ops_err.h:32",
    **{code: f"{_OPBASE} {_LOG}:{line}" for code, line in (
        ("EZ0008", 313), ("EZ0009", 337), ("EZ0010", 363), ("EZ0011", 389), ("EZ0012", 413), ("EZ0013", 439),
        ("EZ0014", 465), ("EZ0015", 490), ("EZ0016", 516), ("EZ0017", 542), ("EZ0035", 566), ("EZ0018", 592),
        ("EZ0019", 618), ("EZ0020", 642), ("EZ0021", 668), ("EZ0022", 694), ("EZ0023", 720), ("EZ0024", 746),
        ("EZ0025", 772), ("EZ0026", 796), ("EZ0027", 822), ("EZ0028", 847), ("EZ0037", 1015), ("EZ0038", 1041))},
}

_CAPTURE_ADVICE = ("capture the failing call (fia_kit.capture, docs capture.md) and lint it (fia_kit.lint, or "
                   "`fia-kit lint FILE --messages`): the kit names the rule the call breaks, before the NPU does; "
                   "then `fia_kit.explain(log, call=captured)` confirms it")

# code -> (name, what it means). aclnn status codes (what the aclnn call returns, torch_npu prints it as "error code
# is N") and the error manager's codes (what the host code reported, printed before each message).
CODES: dict[str, tuple[str, str]] = {
    "161001": ("ACLNN_ERR_PARAM_NULLPTR", "a required tensor (query, key, value, attentionOut) reached aclnn as a "
               "null pointer: the op's first parameter check failed, before its host checkers ran"),
    "161002": ("ACLNN_ERR_PARAM_INVALID", "aclnn's own parameter check refused an argument (a dtype or format "
               "outside the supported set, or key/value lists of different lengths), before tiling"),
    "361001": ("ACLNN_ERR_RUNTIME_ERROR", "a call into the NPU runtime failed inside the API: not an argument "
               "rule (device memory, a stream, the driver)"),
    "561000": ("ACLNN_ERR_INNER", "an internal error of the API"),
    "561001": ("ACLNN_ERR_INNER_INFERSHAPE_ERROR", "the op's output-shape inference failed: the shapes or "
               "layout of the inputs do not fit together"),
    "561002": ("ACLNN_ERR_INNER_TILING_ERROR", "the op's host tiling refused the call: one of its checkers "
               "(FIA, TND split-fuse, legacy IFA or PFA route) found an argument it does not support; the "
               "checker's message is in the CANN log (plog) and in torch_npu's traceback after 'E89999'/'EZ....'"),
    "561003": ("ACLNN_ERR_INNER_FIND_KERNEL_ERROR", "no NPU kernel binary was found for this call (the op's "
               "kernel package may not be installed): not an argument rule"),
    "561103": ("ACLNN_ERR_INNER_NULLPTR", "an internal null pointer (a tensor the API allocates or makes "
               "contiguous): not an argument rule"),
    "561112": ("ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND", "the op's kernel package was not loaded: an "
               "installation problem, not an argument rule"),
    "EZ9999": ("OP_LOGE", "a host check failed and wrote its own message (the older free-text form)"),
    "E89999": ("OPS_REPORT_VECTOR_INNER_ERR", "a host check failed and wrote its own message (free text)"),
    "E69999": ("OPS_REPORT_CUBE_INNER_ERR", "a host check failed and wrote its own message (free text)"),
    "EZ0008": ("OP_LOGE_FOR_INVALID_SHAPE", "a parameter has a shape the op refuses (the right shape is named)"),
    "EZ0009": ("OP_LOGE_FOR_INVALID_SHAPE_WITH_REASON", "a parameter has a shape the op refuses, with the reason"),
    "EZ0010": ("OP_LOGE_FOR_INVALID_SHAPES_WITH_REASON", "parameters whose shapes do not fit together"),
    "EZ0011": ("OP_LOGE_FOR_INVALID_SHAPEDIM", "a parameter has a rank the op refuses"),
    "EZ0012": ("OP_LOGE_FOR_INVALID_SHAPEDIM_WITH_REASON", "a parameter has a rank the op refuses, with the reason"),
    "EZ0013": ("OP_LOGE_FOR_INVALID_SHAPEDIMS_WITH_REASON", "parameters whose ranks do not fit together"),
    "EZ0014": ("OP_LOGE_FOR_INVALID_SHAPESIZE", "a parameter has a size the op refuses"),
    "EZ0015": ("OP_LOGE_FOR_INVALID_SHAPESIZE_WITH_REASON", "a parameter has a size the op refuses, with the reason"),
    "EZ0016": ("OP_LOGE_FOR_INVALID_SHAPESIZES_WITH_REASON", "parameters whose sizes do not fit together"),
    "EZ0017": ("OP_LOGE_FOR_INVALID_FORMAT", "a parameter has a storage format the op refuses"),
    "EZ0018": ("OP_LOGE_FOR_INVALID_FORMATS_WITH_REASON", "parameters whose formats do not fit together"),
    "EZ0019": ("OP_LOGE_FOR_INVALID_DTYPE", "a parameter has a dtype the op refuses (the accepted ones are named)"),
    "EZ0020": ("OP_LOGE_FOR_INVALID_DTYPE_WITH_REASON", "a parameter has a dtype the op refuses, with the reason"),
    "EZ0021": ("OP_LOGE_FOR_INVALID_DTYPES_WITH_REASON", "parameters whose dtypes do not fit together"),
    "EZ0022": ("OP_LOGE_FOR_INVALID_TENSORNUM", "a tensor list has a length the op refuses"),
    "EZ0023": ("OP_LOGE_FOR_INVALID_TENSORNUMS_WITH_REASON", "tensor lists whose lengths do not fit together"),
    "EZ0024": ("OP_LOGE_FOR_INVALID_VALUE", "a parameter has a value the op refuses (the right value is named)"),
    "EZ0025": ("OP_LOGE_FOR_INVALID_LISTSIZE", "a list parameter has a length the op refuses"),
    "EZ0026": ("OP_LOGE_FOR_INVALID_VALUE_WITH_REASON", "a parameter has a value the op refuses, with the reason"),
    "EZ0027": ("OP_LOGE_FOR_INVALID_VALUES_WITH_REASON", "parameters whose values do not fit together"),
    "EZ0028": ("OP_LOGE_FOR_INVALID_STRIDE", "a tensor has strides the op refuses"),
    "EZ0035": ("OP_LOGE_FOR_INVALID_FORMAT_WITH_REASON", "a parameter has a storage format the op refuses, with "
               "the reason"),
    "EZ0037": ("OP_LOGE_FOR_INVALID_ARGUMENT_WITH_REASON", "a parameter is refused as a whole (given where it "
               "must be empty, or missing), with the reason"),
    "EZ0038": ("OP_LOGE_FOR_INVALID_LISTSIZE_WITH_REASON", "a list parameter has a length the op refuses, with the "
               "reason"),
}
_STATUS_CODES = tuple(c for c in CODES if c.isdigit())

# What the op's host code is called in logs: its files (FILE:/[file:line] of a message) and its names.
_OP_FILES = re.compile(r"(fused_infer_attention_score|fia_|incre_flash_attention|prompt_flash_attention|"
                       r"(?<![a-z])(actual_seq_len|base|common|dequant|fia|learnable_sink|left_padding|mask|"
                       r"paged_attention|post_quant|pse|rope|softmax_lse|system_prefix)_checker)\w*\.(cpp|h)")
_OP_NAMES = re.compile(r"FusedInferAttentionScore|IncreFlashAttention|PromptFlashAttention|"
                       r"npu_fused_infer_attention_score")

_MAX_LINE = 2000  # a longer line is cut before matching: the book's patterns then run in bounded time
_MAX_LINES = 1_000_000
_SHORT_PASTE = 2000  # lines: a longer text (a whole plog) is read only on lines that carry an error's marks
_ERROR_MARKS = ("ERROR", "rror", "[FUNC:", "OpName:", "Parameter", "EZ", "E8", "E6", "E2")  # substrings: fast

# ----------------------------------------------------------------------------------------- the shapes of a line
# A prefix a logger puts before each line: vLLM's "(Worker_TP0 pid=1) ERROR 07-28 01:48:32 [file.py:987] ",
# torch.distributed's "[rank0]:", a bare "ERROR ... [x.py:1]" or a timestamped "[2026-05-31 11:54:25.2][UC][E] ".
_LOGGER_PREFIX = re.compile(r"^\s*(?:\([^()]*pid=\d+\)\s*)?(?:\[rank\d+\]:\s*)*"
                            r"(?:(?:ERROR|WARNING|INFO)\s+\d\d-\d\d\s+[\d:.]+\s+\[[^\]]*\]\s?)?")
# The error manager's report: "E89999[PID: 13800] 2026-01-21-05:41:35.799.239 (E89999):  <message>", or the newer
# "Invalid_Input(EZ0004): <message>", or a header "EZ9999: Inner Error!".
_REPORT = re.compile(r"^\s*(?:[A-Za-z_]+\()?(?P<code>E[A-Z0-9]\d{4})(?:\[PID:\s*\d+\][^(]*\((?P=code)\))?\)?:\s*"
                     r"(?P<message>.*)$")
# The host log macro's prefix in a plog line: "[file.cpp:123][SUBMOD][Function][tid] OpName:[name] <message>".
_PLOG = re.compile(r"\[(?P<file>[\w.\-/]+\.(?:cpp|cc|h|hpp)):(?P<line>\d+)\]\[[^\]]*\]\[(?P<func>[^\]]*)\]"
                   r"\[\d+\]\s*(?:OpName:\[(?P<op>[^\]]*)\]\s*)?(?P<message>.*)$")
# The error manager's suffix of each reported message.
_WHERE = re.compile(r"\[FUNC:(?P<func>[^\]]*)\]\[FILE:(?P<file>[^\]]*)\]\[LINE:(?P<line>\d+)\]\s*$")
# The 2026 scheme: "Parameter(s) X of operator Y has/have incorrect <what> Z. Reason: R." / "... It should be R."
_PARAMETER_FORM = re.compile(r"Parameters? (?P<parameter>.+?) of (?:operator )?(?P<op>\S+) (?:(?:has|have) "
                             r"(?:incorrect|invalid) [\w ]+?(?P<value> .*?)?|is invalid)[.,] (?:Reason: |[Ii]t "
                             r"should be )(?P<reason>.*?)\.?\s*$")
# torch_npu's and aclnn's status: "call aclnnX failed, error code is 561002", "aclnnX failed, error code 561002".
_STATUS = re.compile(r"\b(?:[Ee]rror ?[Cc]ode|errno|[Rr]et(?:urn)? ?[Cc]ode)(?: is)?\s*[:=\[]?\s*(?P<code>\d{6})\b")
_STATUS_WORDS = ("rror code", "rror Code", "rrorCode", "rrorcode", "errno", "et code", "etCode", "eturn code")
_API = re.compile(r"aclnn\w+")
# The kit's own FIAArgumentError names the book's rule: "... [FIA-MASK-001 at attention/.../mask_checker.cpp:56]".
_KIT_ERROR = re.compile(r"\[(?P<id>[A-Z]+(?:-[A-Z0-9]+)+) at [^\]\s]+:\d+\]")
_FIA_APIS = re.compile(r"aclnn(FusedInferAttentionScore|IncreFlashAttention|PromptFlashAttention)\w*", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One thing the pasted text says went wrong, in the kit's words.

    Attributes:
        rule: the rule in words (the book's condition), or what the error code means where no rule matched.
        parameter: the argument the rule is about (as the kernel's message or the book names it), or None.
        source: where the rule (or the code's meaning) comes from: the kernel's "path:line" at ops-transformer
            5778144 for a rule of the book; the header or doc that defines a code otherwise.
        section: the docs section of the rule ("spec N.N", docs/README.md), or None.
        meaning: what happened: which host check refused the call, on which route, with the error code.
        fix: what to change, or how to find out.
        rule_id: the book's id (``fia_kit.rules.book.rule_by_id``), None for a code or an unmatched message.
        line: the pasted line that gave this finding.
        code: the error code found with it ("EZ0026", "561002 ACLNN_ERR_INNER_TILING_ERROR"), or None.
        confirmed: with ``call=``: True when the kit's validation of that call refuses it by this rule, False when
            it accepts the call or refuses it by another rule, None without a call (or when the call cannot be
            read).
        confirmation: what validating the call said, in words (None without a call).
    """

    rule: str
    parameter: str | None
    source: str | None
    section: str | None
    meaning: str
    fix: str
    rule_id: str | None = None
    line: str = ""
    code: str | None = None
    confirmed: bool | None = None
    confirmation: str | None = None

    def __str__(self) -> str:
        head = f"[{self.rule_id}]" if self.rule_id else f"[{self.code or 'message'}]"
        parts = [f"{head} {self.parameter + ': ' if self.parameter else ''}{self.rule}",
                 f"  meaning: {self.meaning}", f"  fix: {self.fix}"]
        if self.source:
            parts.append(f"  source: {self.source}" + (f" ({self.section})" if self.section else ""))
        if self.confirmation:
            parts.append(f"  call: {self.confirmation}")
        return "\n".join(parts)


@dataclass(frozen=True)
class _Message:
    """One message found in the text: what a host check wrote, with what the log put around it."""

    text: str  # the message itself, prefixes and [FUNC:][FILE:][LINE:] suffix removed
    line: str  # the pasted line, stripped
    code: str | None = None  # the error manager's code (EZ0026, E89999) where the line shows it
    file: str | None = None  # the host file the log names, where it names one
    func: str | None = None


def explain(text: Any, call: Any = None) -> list[Finding]:
    """The findings of an NPU error text; [] for text that is not one of the op's errors. Never raises.

    Args:
        text: what the user pasted: a traceback, a plog excerpt, one line (str; bytes are decoded as UTF-8 with
            replacement). Anything else gives [].
        call: optionally the call that failed: a captured call (``fia_kit.load_capture``), a ``FIACall``, a
            ``Plan``, a case, or a dict of the op's arguments ({"query": q, "key": k, "value": v, "num_heads": 8,
            ...}, with an optional "form": "v1"/"v2", default "v1"). Each finding is then confirmed or not by
            validating that call (``Finding.confirmed``).
    Returns:
        One finding per rule of the book a message matches, in the order the text shows them; when no rule
        matches, one per message of the op (a line naming one of its host files, or the op in the 2026 form); when
        there is none either, one for the aclnn status code, if the text holds one of the op's.
    """
    try:
        findings = _findings(_as_text(text))
        if call is not None and findings:
            findings = _confirm(findings, call)
        return findings
    except Exception:  # noqa: BLE001  (the contract: any text, any call; a bug here must not hide the user's error)
        return []


def table(findings: Iterable[Finding]) -> str:
    """A text table of findings: rule id (or code), parameter, rule, source file:line, docs section, confirmed."""
    rows = [{"rule": f.rule_id or f.code or "-", "parameter": f.parameter or "-", "what": _short(f.rule),
             "source": _where(f.source), "docs": f.section or "-",
             "call": "-" if f.confirmed is None else "confirmed" if f.confirmed else "not confirmed"}
            for f in findings]
    if not rows:
        return "no finding: the text holds no error of the op that the kit knows"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    line = lambda r: "  ".join(r[k].ljust(widths[k]) for k in keys).rstrip()  # noqa: E731
    return "\n".join([line({k: k for k in keys}), line({k: "-" * widths[k] for k in keys}), *map(line, rows)])


# ------------------------------------------------------------------------------------------------ reading text

def _as_text(text: Any) -> str:
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text).decode("utf-8", errors="replace")
    return text if isinstance(text, str) else ""


def _where(source: str | None) -> str:
    """A source's file name and line ("mask_checker.cpp:56"; the first of several), for tables."""
    if not source:
        return "-"
    first = source.split(";")[0].split()[-1]
    return first.rsplit("/", 1)[-1]


def _short(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _messages(text: str) -> list[_Message]:
    """Every line of ``text`` that can hold a host check's message, with what its log prefix or suffix says."""
    found = []
    lines = text.replace("\r", "\n").split("\n")[:_MAX_LINES]
    long_text = len(lines) > _SHORT_PASTE
    for raw in lines:
        line = raw.replace("\x00", "").strip()[:_MAX_LINE]
        if not line or long_text and not any(mark in line for mark in _ERROR_MARKS):
            continue
        body = _LOGGER_PREFIX.sub("", line, count=1).strip()
        code = file = func = None
        plog = _PLOG.search(body)
        if plog:
            file, func, body = plog["file"], plog["func"], plog["message"]
        report = _REPORT.match(body)
        if report:
            code, body = report["code"], report["message"]
        where = _WHERE.search(body)
        if where:
            file, func, body = where["file"], where["func"], body[:where.start()]
        body = body.strip()
        if body and not body.startswith("Inner Error") and not body.startswith("TraceBack"):
            found.append(_Message(body, line, code, file, func))
    return found


def _findings(text: str) -> list[Finding]:
    if not text.strip():
        return []
    status = _status_code(text)
    by_rule: list[Finding] = []
    unmatched: list[Finding] = []
    seen: set[str] = set()
    for message in _messages(text):
        rules = _matching_rules(message)
        for rule in rules:
            if rule.id not in seen:
                seen.add(rule.id)
                by_rule.append(_rule_finding(rule, message, status))
        if not rules and _about_the_op(message) and message.line not in {f.line for f in unmatched}:
            unmatched.append(_unmatched_finding(message, status))
    findings = by_rule or unmatched  # once a rule matched, other lines are the failure travelling up the stack
    if not findings and status is not None:
        findings.append(_code_finding(*status))
    return findings


def _status_code(text: str) -> tuple[str, str | None, str] | None:
    """(code, aclnn API or None, the line) of the first aclnn status code of the op in ``text``, else None. A code
    whose line names another aclnn API (aclnnIndex, ...) is that op's, not this one's."""
    if not any(word in text for word in _STATUS_WORDS):
        return None
    for match in _STATUS.finditer(text):
        start = text.rfind("\n", 0, match.start()) + 1
        apis = _API.findall(text, start, match.start())
        api = apis[-1] if apis else None
        if match["code"] in _STATUS_CODES and (api is None or _FIA_APIS.fullmatch(api)):
            end = text.find("\n", match.end())
            return match["code"], api, text[start:end if end >= 0 else len(text)].strip()[:_MAX_LINE]
    return None


def _op_file(path: str) -> bool:
    """Whether a host file a log names is one of the op's (FIA, its checkers, the legacy IFA/PFA tilings)."""
    name = path.rsplit("/", 1)[-1]
    return bool(_OP_FILES.search(name)) or any(_source_file(rule).endswith("/" + name) for rule, _ in _book())


def _about_the_op(message: _Message) -> bool:
    """Whether a message that matches no rule is still the op's: its log names an op host file, or it names the
    op in the 2026 form."""
    if message.file:
        return _op_file(message.file)
    form = _PARAMETER_FORM.search(message.text)
    return bool(form and _OP_NAMES.search(form["op"]))


# ------------------------------------------------------------------------------------------------ the rule book

@cache
def _book() -> tuple[tuple[Any, re.Pattern[str]], ...]:
    """(rule, its compiled message pattern) for every rule of the book with a usable pattern."""
    from .book import RULES

    compiled = []
    for rule in RULES:
        pattern = getattr(rule, "message", None)
        if not pattern:
            continue
        try:
            compiled.append((rule, re.compile(pattern)))
        except re.error:
            continue  # a pattern that does not compile matches nothing (tests of the book catch it)
    return tuple(compiled)


def _matching_rules(message: _Message) -> list[Any]:
    """The rule a kit error names (``[ID at path:line]``), else the rules whose pattern matches the message; where
    the log names the host file, only the rules of that file when any of them matches."""
    kit = _KIT_ERROR.search(message.text)
    if kit:
        named = [rule for rule, _ in _book() if rule.id == kit["id"]]
        if named:
            return named
    if message.file and not _op_file(message.file):
        return []  # another op's check (its log names its own host file), however alike its words
    rules = [rule for rule, pattern in _book() if pattern.search(message.text)]
    if message.file and len(rules) > 1:
        name = message.file.rsplit("/", 1)[-1]
        same_file = [r for r in rules if _source_file(r).endswith(name)]
        rules = same_file or rules
    return rules


def _source_file(rule: Any) -> str:
    return str(getattr(rule, "source", "") or "").rsplit(":", 1)[0]


def _routes(rule: Any) -> str:
    routes = getattr(rule, "routes", ()) or ()
    return ", ".join(routes) if not isinstance(routes, str) else routes


def _code_words(code: str | None) -> str:
    if code is None or code not in CODES:
        return ""
    name, meaning = CODES[code]
    return f"{code} ({name}): {meaning}"


def _section(rule: Any) -> str | None:
    """The rule's docs section as the kit cites it: "spec 6.3" (the book stores "6.3")."""
    section = getattr(rule, "section", None)
    if not section:
        return None
    section = str(section)
    return section if section.startswith("spec") else f"spec {section}"


def _rule_finding(rule: Any, message: _Message, status: tuple[str, str | None, str] | None) -> Finding:
    form = _PARAMETER_FORM.search(message.text)
    parameter = form["parameter"] if form else getattr(rule, "parameter", None) or None
    condition = getattr(rule, "condition", "") or str(rule)
    routes = _routes(rule)
    where = f"a host check of route {routes}" if routes else "a host check of the op"
    meaning = f"{where} refused the call before any compute ({_where(getattr(rule, 'source', None))})"
    gate = getattr(rule, "gate", None)
    if gate:
        meaning += f"; the rule depends on the product / CANN version (target gate '{gate}', fia_kit.targets)"
    codes = [c for c in (message.code, status[0] if status else None) if c]
    if codes:
        meaning += ". Reported as " + ", then ".join(f"{c} ({CODES[c][0]})" if c in CODES else c for c in codes)
    state, note = getattr(rule, "status", "enforced"), getattr(rule, "note", "")
    change = f"change {parameter}" if parameter else "change the call"
    if state == "unreachable":
        fix = (f"torch_npu sets this itself ({note or 'the Python API cannot break this rule'}): a call made "
               f"from Python should not meet this check; capture it (fia_kit.capture) and report it with this log")
    elif state == "not-enforced":
        fix = (f"{change} so that the rule holds. The kit does not enforce this rule ({note or 'see the book'}), "
               "so fia_kit.lint cannot catch it before the NPU does")
    else:
        fix = f"{change} so that the rule holds; fia_kit.lint(call) checks the fixed call before the NPU sees it"
    code = message.code or (f"{status[0]} {CODES[status[0]][0]}" if status else None)
    return Finding(rule=condition, parameter=parameter, source=getattr(rule, "source", None) or None,
                   section=_section(rule), meaning=meaning, fix=fix, rule_id=getattr(rule, "id", None),
                   line=message.line, code=code)


def _unmatched_finding(message: _Message, status: tuple[str, str | None, str] | None) -> Finding:
    form = _PARAMETER_FORM.search(message.text)
    where = f" ({message.file}, in {message.func})" if message.file and message.func else \
        f" ({message.file})" if message.file else ""
    meaning = f"a host check of the op{where} refused the call, with a message no rule of the kit's book matches"
    code_words = _code_words(message.code) or (_code_words(status[0]) if status else "")
    if code_words:
        meaning += f". Reported as {code_words}"
    return Finding(rule=form["reason"] if form and form["reason"] else message.text,
                   parameter=form["parameter"] if form else None,
                   source=CODE_SOURCES.get(message.code or "") or None, section="spec 25.3",
                   meaning=meaning, fix=_CAPTURE_ADVICE + "; and report the message: the book may miss this rule",
                   line=message.line, code=message.code)


def _code_finding(code: str, api: str | None, line: str) -> Finding:
    name, meaning = CODES[code]
    who = f"{api} returned" if api else "the aclnn call returned"
    return Finding(rule=f"{who} {code} ({name})", parameter=None, source=CODE_SOURCES.get(code),
                   section="spec 25.3", meaning=f"{name}: {meaning}. The code alone does not name the rule; the "
                   "checker's message is in the CANN log (plog, under ~/ascend/log) or after 'E89999'/'EZ....' "
                   "in torch_npu's traceback: paste it too", fix=_CAPTURE_ADVICE, line=line, code=f"{code} {name}")


# ------------------------------------------------------------------------------------------------ call=

class _Unreadable(Exception):
    """``call=`` is not something a call can be read from (the call's own errors are FIAArgumentErrors)."""


def _as_fia_call(call: Any) -> Any:
    """The parsed call behind ``call`` (FIACall, Plan, captured call, case, or a dict of the op's arguments).
    Raises _Unreadable when there is no call to read, FIAArgumentError when the call's keywords are refused."""
    from ..call import FIACall, parse_call
    from ..planning import Plan

    if isinstance(call, FIACall):
        return call
    if isinstance(call, Plan):
        if call.call is None:
            raise _Unreadable("a Plan without its parsed call cannot be validated again")
        return call.call
    if isinstance(call, Mapping):
        arguments = dict(call)
        form = arguments.pop("form", "v1")
        missing = [n for n in ("query", "key", "value") if n not in arguments]
        if missing:
            raise _Unreadable(f"the dict of the op's arguments lacks {' + '.join(missing)}")
        return parse_call(form, arguments.pop("query"), arguments.pop("key"), arguments.pop("value"), arguments)
    if not callable(getattr(call, "to_fia_call", None)):
        raise _Unreadable(f"a {type(call).__name__} is not a captured call, a FIACall, a Plan, a case or a dict "
                          "of the op's arguments")
    try:
        return call.to_fia_call()
    except FIAArgumentError as err:
        if getattr(call, "replayable", True) is False:  # a captured call known by its metadata only
            raise _Unreadable(str(err)) from err
        raise


def _validate(call: Any) -> tuple[FIAArgumentError | None, Any, str | None]:
    """(the kit's error for the call or None, its plan when it validates, why the call could not be read)."""
    from ..planning import build_plan

    try:
        parsed = _as_fia_call(call)
    except _Unreadable as why:
        return None, None, str(why)
    except FIAArgumentError as err:
        return err, None, None  # parse_call refused the keywords themselves: that is the call's error
    except Exception as err:  # noqa: BLE001  (a captured call that cannot be rebuilt)
        return None, None, f"{type(err).__name__}: {err}"
    try:
        return None, build_plan(parsed), None
    except FIAArgumentError as err:
        return err, None, None


def _confirm(findings: list[Finding], call: Any) -> list[Finding]:
    error, plan, unreadable = _validate(call)
    if unreadable is not None:
        return [replace(f, confirmation=f"the call could not be validated: {unreadable}") for f in findings]
    kit_id = getattr(error, "rule_id", None) if error is not None else None
    route = getattr(plan, "route", None) if plan is not None else None
    out = []
    for f in findings:
        if error is None:
            words = "the kit's validation accepts this call"
            if route:
                words += f" (route {route})"
            out.append(replace(f, confirmed=False, confirmation=words + (
                ": the log is from another call, or the kit misses this rule of the kernel (the kernel's host "
                "code outranks the kit: please report it)" if f.rule_id else "")))
        elif f.rule_id is None and f.code is not None and f.code.split()[0] in _STATUS_CODES:
            out.append(_from_kit_error(f, error))
        elif f.rule_id is not None and f.rule_id == kit_id:
            out.append(replace(f, confirmed=True, confirmation=f"the kit's validation refuses this call by the "
                               f"same rule ({kit_id}): {error}", fix=_fix_from(error, f.fix)))
        elif kit_id is None and _same_parameter(f.parameter, error.parameter):
            out.append(replace(f, confirmed=False, confirmation=f"the kit's validation refuses this call on the "
                               f"same parameter, by a rule of its own (not in the kernel's book): {error}"))
        else:
            other = f"{kit_id}: " if kit_id else ""
            out.append(replace(f, confirmed=False, confirmation=f"the kit's validation refuses this call by "
                               f"another rule ({other}{error.rule}, parameter {error.parameter}): fix that "
                               "first, then run again"))
    return out


def _same_parameter(a: str | None, b: str | None) -> bool:
    """Whether two parameter names ("sparse_mode", "sparse_mode + atten_mask") share a name."""
    names = lambda text: set(re.split(r"\s*[+/]\s*", text or "")) - {""}  # noqa: E731
    return bool(names(a) & names(b))


def _from_kit_error(finding: Finding, error: FIAArgumentError) -> Finding:
    """A bare code's finding, completed by the rule the kit's validation names."""
    rule_id = getattr(error, "rule_id", None)
    return replace(finding, rule=error.rule, parameter=error.parameter, rule_id=rule_id,
                   source=getattr(error, "source", None) or finding.source,
                   section=_section_of(rule_id) or finding.section,
                   meaning=f"{finding.meaning.split('. The code alone')[0]}; the kit's validation of the call "
                   f"names the rule: {error}", fix=_fix_from(error, f"change {error.parameter} so that it holds: "
                                                             f"{error.rule}"),
                   confirmed=True, confirmation=f"the kit's validation refuses this call: {error}")


def _fix_from(error: FIAArgumentError, fallback: str) -> str:
    return f"{error.hint}" if getattr(error, "hint", None) else fallback


def _section_of(rule_id: str | None) -> str | None:
    if rule_id is None:
        return None
    try:
        from .book import rule_by_id

        return _section(rule_by_id(rule_id))
    except Exception:  # noqa: BLE001  (an id the book does not know)
        return None
