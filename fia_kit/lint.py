"""Check a call before running it: every rule the op refuses, and legal calls that most likely mean something else.

    findings = fia_kit.lint("v1", q, k, v, num_heads=8, input_layout="BNSD", sparse_mode=4)
    findings = fia_kit.lint(captured_call)     # or a Plan, a parsed call, a case
    for f in findings: print(f)                # severity, parameter, rule, message
    findings.route                             # the kernel's host route of the call, "fia", ..., or None

"error" findings are the op's refusals, all of them: after each one the offending argument is set to a harmless
value and the call is validated again (``fia_kit.planning.build_plan`` is the one set of rules). "warning" findings
are the pitfalls of docs section 25.5 (spec 25.5): legal calls that do something other than what was meant. A clean
call gives no finding; lint never raises for a bad call. The list also says which host route the kernel sends the
call down (``Findings.route``, ``Plan.route``), since which rules apply depends on it: a field, not a finding.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .call import FIACall, parse_call
from .errors import FIAArgumentError
from .masks import INT_MAX, compressed_causal_mask
from .planning import Plan, build_plan
from .signatures import SCHEMAS, canonical_name, keyword_defaults, spelled

__all__ = ["Finding", "Findings", "lint", "RULES"]

Severity = Literal["error", "warning"]

# rule id -> what it warns about (the "error" rules are named after the refused parameter: "refused-<name>").
RULES: dict[str, str] = {
    "scale-one": "scale left at 1.0: scores are not divided by sqrt(D) (spec 18.5)",
    "mask-all-true": "an all-True mask: True means masked out, so every row is fully masked (spec 6.1, 7)",
    "mask-keep-polarity": "a mask with SDPA's polarity (True = keep) (spec 6.1)",
    "decode-mask-rank": "an under-ranked or batch-broadcast decode mask, reported silently wrong past 512 keys "
                        "(spec 6.2)",
    "pse-rank": "(error) a pse_shift without its per-head axis: the real op accepts it and is reported "
                "silently wrong; the kit refuses it (spec 9)",
    "band-default": "sparse_mode 4 with the default pre/next_tokens: no band (spec 6.3)",
    "band-ignored": "pre_tokens/next_tokens given where the mode ignores them (spec 6.3, 6.5)",
    "lengths-leading-zero": "cumulative lengths starting with 0: an extra empty batch (spec 5.2)",
    "query-past-lengths": "a packed query longer than its last cumulative length (spec 5.2, 25.1)",
    "decode-mask-noop": "a decode mask that changes nothing but costs a read (spec 6.5)",
    "graph-list-lengths": "int lists as lengths in graph mode: a recompile per value (spec 25.4)",
    "not-checked": "a captured call known by its metadata only (traced with fake tensors): nothing checked",
    "paged-cumulative-kv": "cumulative KV lengths in a paged TND call, which takes per-batch ones (spec 5.2, 11)",
    "mask-diagonal-hidden": "a mask hiding every row's own diagonal key: most likely inverted (spec 6.1)",
}
_MAX_ROUNDS = 16


@dataclass(frozen=True)
class Finding:
    """One problem of a call.

    Attributes:
        severity: "error" (the op refuses the call) or "warning" (legal, most likely not what was meant).
        parameter: the keyword as the call's form spells it, or "query" / "key" / "value" (several: " + ").
        rule: a short id ("refused-<parameter>" for errors, a ``RULES`` key for warnings).
        message: what happens, the docs section ("spec N.N") and how to fix it.
        target: the product / version the rule is for, where the kit's error names one.
    """

    severity: Severity
    parameter: str
    rule: str
    message: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.parameter}: [{self.rule}] {self.message}"


class Findings(list):
    """The findings of one call (a list of ``Finding``), with the call's host route.

    Attributes:
        route: the kernel's host route of the call (``Plan.route``: "fia", "split-fuse", "legacy-ifa",
            "legacy-pfa"), which decides which of the kernel's rules apply; None for a call with errors (the
            router reads the arguments as given, so the neutralised call's route need not be the call's) or one
            that was not checked.
    """

    route: str | None = None

    @classmethod
    def of(cls, findings: list[Finding], route: str | None = None) -> Findings:
        out = cls(findings)
        out.route = route
        return out


def lint(target: Any, query: torch.Tensor | None = None, key: torch.Tensor | None = None,
         value: torch.Tensor | None = None, /, *, graph: bool | None = None, **kwargs: Any) -> Findings:
    """Findings for one call; never raises for a bad call.

    Args:
        target: a form ("v1", "v2", or a SCHEMAS key such as "torchair.v2") followed by the op's tensors and
            keywords; or a captured call (``fia_kit.load_capture``), a ``Plan``, a parsed ``FIACall``, or a case
            (anything with ``to_fia_call()`` or ``build(form)``).
        graph: whether the call runs in graph mode (TorchAir, or inside torch.compile); default: True for
            "torchair.*" forms and captured TorchAir calls, else False.
    Returns:
        Errors first (in the order the op checks them), then warnings; ``.route`` is the call's host route (None
        when the call has errors).
    """
    form_graph = False
    if getattr(target, "kind", None) == "infer_output":
        return Findings()  # a captured _infer_output companion: it only allocates outputs, nothing to check
    if getattr(target, "replayable", True) is False:
        return Findings.of([_finding("warning", "call", "not-checked", "the capture holds only this call's "
                                     "metadata (fake tensors of a traced graph, or a value the file cannot hold), so "
                                     "its rules cannot be checked (docs capture.md). Fix: capture the model eagerly, "
                                     "without torch.compile.")])
    try:
        if isinstance(target, str):
            version = target.rsplit(".", 1)[-1]
            if target not in SCHEMAS and target not in ("v1", "v2"):
                return Findings.of([_finding("error", "form", "refused-form", f"form must be 'v1', 'v2' or one of "
                                             f"{', '.join(SCHEMAS)} (spec 1); got {target!r}")])
            form_graph = target.startswith("torchair")
            call = parse_call(version, query, key, value, kwargs)
        else:
            if query is not None or kwargs:
                raise FIAArgumentError("target", "takes tensors and keywords only after a form name", "given")
            form_graph = bool(getattr(target, "graph", False))
            call = _as_call(target)
    except FIAArgumentError as err:
        return Findings.of([_error_finding(err, None)])
    errors, plan, neutral = _errors(call)
    warnings = _warnings(plan, neutral, form_graph if graph is None else graph) if plan is not None else []
    return Findings.of(errors + warnings, None if errors or plan is None else plan.route)


def _as_call(target: Any) -> FIACall:
    if isinstance(target, Plan):
        if target.call is None:
            raise FIAArgumentError("target", "a Plan without its parsed call cannot be linted", "Plan")
        return target.call
    from .backends import as_call

    try:
        return as_call(target)
    except TypeError as err:
        raise FIAArgumentError("target", "must be a form name, a captured call, a Plan, a parsed call or a case",
                               type(target).__name__) from err


# ------------------------------------------------------------------------------------------------ errors

def _spell(call: FIACall, canonical: str) -> str:
    return spelled(canonical, call.form)


def _finding(severity: Severity, parameter: str, rule: str, message: str, target: str | None = None) -> Finding:
    return Finding(severity, parameter, rule, message, target)


def _error_finding(err: FIAArgumentError, call: FIACall | None) -> Finding:
    parameter = err.parameter
    if call is not None and call.form == "v2":
        parameter = " + ".join(_spell(call, canonical_name(p)) for p in parameter.split(" + "))
    slug = re.sub(r"[^a-z0-9_]+", "-", err.parameter.lower()).strip("-") or "call"
    fix = f" Fix: {err.hint}." if err.hint else " Fix: change the argument to satisfy the rule."
    target = getattr(err, "target", None)
    where = f" on {target}" if target else ""
    pse = call.options.get("pse_shift") if call is not None else None
    if slug == "pse_shift" and isinstance(pse, torch.Tensor) and pse.dim() == 4 and pse.shape[1] == 1 \
            and call.options["num_heads"] > 1:
        return _finding("error", parameter, "pse-rank",
                        f"pse_shift {tuple(pse.shape)} has no per-head axis: the real op was reported to accept "
                        "such a pse and compute wrong results, and the kit refuses it: there is no broadcast "
                        f"over heads (spec 9, 25.5). Fix: expand it to (B or 1, N_q={call.options['num_heads']}, "
                        "S_q, S_kv).", target)
    return _finding("error", parameter, f"refused-{slug}",
                    f"the op refuses this call{where}: {err.rule} (got {err.got}).{fix}", target)


def _parameters(err: FIAArgumentError) -> list[str]:
    """Canonical names in an error's parameter ("a + b", "a/b + c")."""
    return [canonical_name(p.strip()) for p in re.split(r"\s*\+\s*|/", err.parameter) if p.strip()]


def _errors(call: FIACall) -> tuple[list[Finding], Plan | None, set[str]]:
    """Every refusal: validate, neutralise the offending argument(s), validate again, until the call passes.

    Returns the error findings, the plan of the (neutralised) call when it finally validates, and the canonical
    names neutralised on the way (an error naming one of them again is an artefact and ends the search).
    """
    findings: list[Finding] = []
    neutral: set[str] = set()
    for _ in range(_MAX_ROUNDS):
        try:
            return findings, build_plan(call), neutral
        except FIAArgumentError as err:
            names = _parameters(err)
            if neutral & set(names):
                return findings, None, neutral
            findings.append(_error_finding(err, call))
            fixed = _neutralise(call, names)
            if fixed is None:
                return findings, None, neutral
            neutral |= set(names)
            call = fixed
        except Exception:  # a rule the kit does not phrase as FIAArgumentError: stop, report what was found
            return findings, None, neutral
    return findings, None, neutral


def _neutralise(call: FIACall, names: list[str]) -> FIACall | None:
    """The call with each named argument replaced by a value no rule refuses, or None where that is impossible."""
    options = dict(call.options)
    given = set(call.given)
    defaults = {canonical_name(n): d for n, d in keyword_defaults(call.form).items()}
    pairs = {"query_rope": "key_rope", "key_rope": "query_rope", "key_shared_prefix": "value_shared_prefix",
             "value_shared_prefix": "key_shared_prefix"}
    changed = False
    for name in names:
        if name not in options:
            return None  # query / key / value / form: the geometry itself is wrong
        if name == "atten_mask" and options["atten_mask"] is None:
            options["sparse_mode"] = 0  # "a mask is needed for this mode": take the mode away
            new = None
        elif name == "atten_mask" and options["sparse_mode"] in (2, 3, 4):
            new = compressed_causal_mask()
        else:
            new = _fitting(call, name, defaults.get(name))
        for n in (name, pairs.get(name)):
            if n is None:
                continue
            if n != name:
                new = defaults.get(n)
            if not _same(options[n], new) or n == "atten_mask":
                changed = True
            options[n] = new
            given.discard(n)
    if not changed and all(_same(call.options[n], options[n]) for n in options):
        return None
    return dataclasses.replace(call, options=options, given=frozenset(given))


def _fitting(call: FIACall, name: str, default: Any) -> Any:
    """A value of ``name`` that the call's tensors agree with (block size, head counts), else the default."""
    from . import paged
    from .layouts import parse_layout

    try:
        layout = parse_layout(call.options["input_layout"])
        is_paged = call.options["block_table"] is not None
        if name == "block_size" and is_paged:
            return paged.cache_block_size(call.key)
        if name == "num_heads" and layout.heads_explicit:
            return int(call.query.shape[layout.query.index("N")])
        if name == "num_key_value_heads":
            heads = paged.cache_num_heads(call.key) if is_paged else (
                call.key.shape[layout.query.index("N")] if layout.heads_explicit else None)
            if not heads and layout.heads_explicit:  # an H-shaped key or cache: H / the query's head dim
                heads = call.key.shape[-1] // call.query.shape[-1]
            return int(heads) if heads else default
    except (FIAArgumentError, IndexError, ValueError, AttributeError):
        pass
    return default


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


# ------------------------------------------------------------------------------------------------ warnings

def _warnings(plan: Plan, neutral: set[str], graph: bool) -> list[Finding]:
    call = plan.call
    found: list[Finding] = []
    for check in _CHECKS:
        found.extend(f for f in check(plan, call, graph)
                     if canonical_name(f.parameter.split(" + ")[0]) not in neutral)
    return found


def _warn(call: FIACall, canonical: str, rule: str, message: str) -> Finding:
    return _finding("warning", _spell(call, canonical), rule, message)


def _scale_one(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    d = plan.head_dim + (64 if plan.query_rope is not None else 0)
    if plan.scale != 1.0 or d <= 1 or plan.quant is not None and call.query.dtype == torch.int8:
        return []
    name = _spell(call, "scale")
    return [_warn(call, "scale", "scale-one",
                  f"{name} is 1.0 (the op's default): scores are q.k without the 1/sqrt(D) of attention, so the "
                  f"softmax is much sharper than intended (spec 18.5). Fix: pass {name}={d ** -0.5:.6g} "
                  f"(1/sqrt({d})), or leave 1.0 only if the query is already scaled.")]


def _regions(plan: Plan) -> list[tuple[int, torch.Tensor, int, int]]:
    """Per batch with rows and keys: (b, the mask rows it reads (L_q', S_kv') as bool, L_q', visible keys)."""
    out = []
    mask = plan.atten_mask
    for b, p in enumerate(plan.batches):
        keys = plan.prefix_len + p.kv_len
        rows = 1 if plan.decode else p.q_len
        if rows == 0 or keys == 0:
            continue
        m = mask[b if mask.shape[0] > 1 else 0]
        r0, c0 = p.mask_origin
        region = m.reshape(1, -1)[:, c0:] if plan.decode else m[r0:r0 + rows, c0:]
        out.append((b, region, rows, keys))
    return out


def _mask_content(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    if plan.atten_mask is None:
        return []
    regions = _regions(plan)
    if not regions:
        return []
    if _keep_polarity(plan, regions):
        return [_warn(call, "atten_mask", "mask-keep-polarity",
                      "the mask looks like SDPA's (True = attend): FIA's True/1 means MASKED OUT, so each row sees "
                      "what it should not (spec 6.1). Fix: pass ~mask (logical not), or for causal attention "
                      "sparse_mode=3 with fia_kit.masks.compressed_causal_mask().")]
    if all(bool(r[:, :keys].all()) for _, r, _, keys in regions):
        return [_warn(call, "atten_mask", "mask-all-true",
                      "every visible position is True, and True/1 means masked out: every row is fully masked, "
                      "so the output is the uniform mean of the values (or 0 with inner_precise 2/3) (spec 6.1, "
                      "7). Fix: invert the mask (True = hidden), or drop it.")]
    return []


def _keep_polarity(plan: Plan, regions: list[tuple[int, torch.Tensor, int, int]]) -> bool:
    """A lower-triangular True mask (a causal keep-mask), or True on every valid key and False on the padding."""
    if not plan.decode and any(_lower_triangular(plane) for plane in plan.atten_mask):
        return True
    padded = [(r[:, :keys], r[:, keys:]) for _, r, _, keys in regions]
    return all(bool(used.all()) and not bool(beyond.any()) for used, beyond in padded) \
        and any(beyond.numel() for _, beyond in padded)


def _lower_triangular(plane: torch.Tensor) -> bool:
    """plane (S_q', S_kv') == tril(ones, d) for some d, with at least one False and two rows: True = keep."""
    rows, cols = plane.shape
    if rows < 2 or bool(plane.all()) or not bool(plane.any()):
        return False
    counts = plane.sum(-1)
    r = int(torch.nonzero(counts)[0])
    d = int(counts[r]) - 1 - r
    return torch.equal(plane, torch.ones(rows, cols, dtype=torch.bool, device=plane.device).tril(d))


def _decode_mask_rank(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    raw = call.options["atten_mask"]
    if not plan.decode or plan.atten_mask is None or raw is None:
        return []
    broadcast = raw.shape[0] == 1 and plan.batch > 1
    four_d = raw.dim() == 4 and raw.shape[-1] > 512
    if not (broadcast or four_d):
        return []
    what = f"a batch-1 mask {tuple(raw.shape)} broadcast over {plan.batch} batches" if broadcast else \
        f"a 4-D decode mask {tuple(raw.shape)}"
    return [_warn(call, "atten_mask", "decode-mask-rank",
                  f"{what}: the op's checker accepts it, but a (1, 1, 1, S) bf16 paged decode mask was reported "
                  "silently ignored past key 512 on hardware (spec 6.2, 25.5). Fix: pass one row per batch, "
                  f"(B, S_kv) = ({plan.batch}, {raw.shape[-1]}).")]


def _band(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    o = call.options
    pre, nxt, mode = o["pre_tokens"], o["next_tokens"], o["sparse_mode"]
    if not plan.decode and mode == 4 and pre == INT_MAX and nxt == INT_MAX:
        return [_warn(call, "sparse_mode", "band-default",
                      "sparse_mode 4 (band) with pre_tokens and next_tokens at their default 2147483647: the band "
                      "is unbounded and every key is visible, as with no mask at all (spec 6.3). Fix: pass the "
                      "window, e.g. pre_tokens=W, next_tokens=0 for a sliding window of W keys before the "
                      "diagonal.")]
    if plan.decode:
        why = "with S_q == 1 (decode) sparse_mode, pre_tokens and next_tokens are ignored (spec 6.5)"
    elif mode in (1, 2, 3):
        why = f"sparse_mode {mode} ignores pre_tokens and next_tokens (spec 6.3)"
    elif mode == 0 and o["atten_mask"] is None:
        why = "sparse_mode 0 without atten_mask ignores pre_tokens and next_tokens (spec 6.3)"
    else:
        return []
    return [_warn(call, name, "band-ignored", f"{name}={o[name]} has no effect: {why}. Fix: drop it, or use "
                  "sparse_mode 4 (or 0 with a mask) for a band.")
            for name in ("pre_tokens", "next_tokens") if o[name] != INT_MAX]


def _packed_lengths(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    if not plan.layout.packed:
        return []
    from .lengths import read_lengths

    found = []
    names = ["actual_seq_lengths"] + ([] if plan.paged else ["actual_seq_lengths_kv"])
    for canonical in names:
        values = read_lengths(canonical, call.options[canonical]) or ()
        if len(values) > 1 and values[0] == 0:
            spelled = _spell(call, canonical)
            found.append(_warn(call, canonical, "lengths-leading-zero",
                               f"{spelled}={list(values)} starts with 0: packed layouts take the B cumulative END "
                               f"offsets, so this declares {len(values)} batches, the first empty (spec 5.2). "
                               f"Fix: drop the leading 0: {list(values[1:])}."))
    q_values = read_lengths("actual_seq_lengths", call.options["actual_seq_lengths"]) or ()
    total = plan.query.shape[2]
    if q_values and total > q_values[-1]:
        found.append(_warn(call, "query", "query-past-lengths",
                           f"the packed query has T = {total} rows but the last cumulative length is "
                           f"{q_values[-1]}: rows {q_values[-1]}..{total - 1} are not computed (their output is "
                           "unspecified), and older kernels refuse the call (\"queryT must equal the last actual "
                           "length\") (spec 5.2, 25.1). Fix: pass a query of exactly the last cumulative length, "
                           "or extend the last length over the padding."))
    return found


def _decode_mask_noop(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    if not plan.decode or call.options["atten_mask"] is None:
        return []
    mode = call.options["sparse_mode"]
    if plan.atten_mask is None:  # modes 2-4: the compressed template, with S_q == 1
        return [_warn(call, "atten_mask", "decode-mask-noop",
                      f"with S_q == 1 sparse_mode {mode} is ignored and the compressed mask changes nothing, but "
                      "the op still reads it (spec 6.5, 25.5). Fix: drop atten_mask and use sparse_mode 0 for "
                      "decode steps.")]
    regions = _regions(plan)
    if regions and all(not bool(r[:, :keys].any()) for _, r, _, keys in regions):
        return [_warn(call, "atten_mask", "decode-mask-noop",
                      "the decode mask hides none of the valid keys (only positions past each batch's length, "
                      "which the lengths already exclude): it changes nothing but costs a read (spec 6.5). "
                      "Fix: drop atten_mask.")]
    return []


def _graph_lengths(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    if not graph:
        return []
    return [_warn(call, name, "graph-list-lengths",
                  f"{_spell(call, name)} is a Python {type(call.options[name]).__name__} in graph mode: its values "
                  "are constants of the graph, so every new value recompiles (or rebinds) it (spec 25.4). Fix: "
                  "pass an int64 tensor on the device (TorchAir's tng.ops take them so).")
            for name in ("actual_seq_lengths", "actual_seq_lengths_kv", "actual_shared_prefix_len")
            if name in call.options and call.options[name] is not None
            and not isinstance(call.options[name], torch.Tensor)]


def _paged_cumulative_kv(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    """Paged TND: kv lengths that rise by at least each batch's L_q, as cu_seqlens_k[1:] would, and so make batches
    read the same block twice (a wide block_table's padding, or another batch's blocks): a porting trap."""
    if not (plan.paged and plan.layout.packed) or plan.batch < 2:
        return []
    kv, q = plan.kv_len, plan.q_len
    steps = [b - a for a, b in zip(kv, kv[1:], strict=False)]
    if not all(step >= max(1, n) for step, n in zip(steps, q[1:], strict=True)):
        return []
    table = plan.block_table.cpu()
    read = [int(x) for b, n in enumerate(kv) for x in table[b, :-(-n // plan.block_size)]]
    if len(set(read)) == len(read):
        return []
    name = _spell(call, "actual_seq_lengths_kv")
    return [_warn(call, "actual_seq_lengths_kv", "paged-cumulative-kv",
                  f"{name}={list(kv)} rises like cumulative lengths (cu_seqlens_k[1:]) and makes the batches read "
                  "some blocks twice, but with a paged cache the TND kv lengths are PER BATCH (spec 5.2, 11). Fix: "
                  f"pass the per-batch lengths, here {[kv[0], *steps]} if these were cumulative.")]


def _diagonal_hidden(plan: Plan, call: FIACall, graph: bool) -> list[Finding]:
    """An explicit prefill mask hiding every computed row's own key (i, i + P + L_kv - L_q), not all True."""
    if plan.atten_mask is None or plan.decode:
        return []
    regions = _regions(plan)
    if not regions or _keep_polarity(plan, regions) or all(bool(r[:, :k].all()) for _, r, _, k in regions):
        return []
    for _, region, rows, keys in regions:
        i = torch.arange(rows, device=region.device)
        j = i + keys - rows
        inside = (j >= 0) & (j < region.shape[1])
        if not bool(inside.any()) or not bool(region[i[inside], j[inside]].all()):
            return []
    return [_warn(call, "atten_mask", "mask-diagonal-hidden",
                  "every row hides its own key (the diagonal, aligned bottom-right): FIA's True/1 means MASKED OUT "
                  "(spec 6.1), so this looks like a keep-mask (SDPA, flex, FlashInfer: True = attend) passed as is. "
                  "Fix: pass ~mask; fia_kit.port.translate converts a CUDA call's mask for you.")]


_CHECKS: tuple[Callable[[Plan, FIACall, bool], list[Finding]], ...] = (
    _scale_one, _mask_content, _decode_mask_rank, _band, _packed_lengths, _decode_mask_noop, _graph_lengths,
    _paged_cumulative_kv, _diagonal_hidden)


def summary(findings: list[Finding]) -> Mapping[str, list[str]]:
    """{"error": [rule, ...], "warning": [rule, ...]} of a list of findings (for tables)."""
    return {s: [f.rule for f in findings if f.severity == s] for s in ("error", "warning")}

