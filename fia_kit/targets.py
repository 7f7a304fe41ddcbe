"""Products and CANN versions: the one table of the op's rules that depend on them (spec 25.3; docs/targets.md).

    with fia_kit.target(product="A3", cann="8.3"):     # or FIA_KIT_TARGET="A3/8.3" in the environment
        fia_kit.plan("v1", q, k, v, ...)                # TND last-length rule of CANN 8.3

The default is the newest Atlas A2/A3 stack the kit knows (``DEFAULT``). Validation asks ``rule(name)`` for the
current target's setting, and an error from a target-dependent rule names the rule and the target.

CANN versions: the rules marked "2026-08 kernels" come from the newest kernel tree read (a 2026-08-21 snapshot);
the kit places them in CANN 9.1, the first release after it [inferred: the sources give a date, not a release].
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import FIAArgumentError

PRODUCTS = ("A2", "A3", "Ascend950")
CANN_VERSIONS = ("8.0", "8.1", "8.2", "8.3", "8.5", "9.0", "9.1")
NEWER_KERNELS = "9.1"  # [inferred] first CANN with the 2026-08 kernel rules
ENV_VARIABLE = "FIA_KIT_TARGET"


@dataclass(frozen=True)
class Target:
    """A product and CANN version. ``str(target)`` is "A3 / CANN 9.1"."""

    product: str = "A3"
    cann: str = CANN_VERSIONS[-1]

    def __post_init__(self) -> None:
        if self.product not in PRODUCTS:
            raise FIAArgumentError("target.product", f"must be one of {PRODUCTS} (spec 18.1, 25.3)", self.product)
        if self.cann not in CANN_VERSIONS:
            raise FIAArgumentError("target.cann", f"must be one of {CANN_VERSIONS}", self.cann)

    def at_least(self, version: str) -> bool:
        return _version_key(self.cann) >= _version_key(version)

    def __str__(self) -> str:
        return f"{self.product} / CANN {self.cann}"


DEFAULT = Target("A3", CANN_VERSIONS[-1])


@dataclass(frozen=True)
class Variant:
    """One setting of a rule, for the products in ``products`` from CANN ``since`` (inclusive) on."""

    products: tuple[str, ...]
    since: str
    value: Any
    text: str

    def matches(self, target: Target) -> bool:
        return target.product in self.products and target.at_least(self.since)


@dataclass(frozen=True)
class Rule:
    """A rule whose setting depends on the target; ``variants`` are tried newest first."""

    name: str
    topic: str
    source: str
    variants: tuple[Variant, ...]
    checked: bool = True  # False: documented, not enforced by the kit's validation

    def value(self, target: Target) -> Any:
        for variant in self.variants:
            if variant.matches(target):
                return variant.value
        raise AssertionError(f"rule {self.name} has no setting for {target}")


A2A3 = ("A2", "A3")
ALL = PRODUCTS
_RULES = (
    Rule("tnd_last_length", "TND: query T against the last cumulative query length", "spec 5.2, 25.1", (
        Variant(ALL, NEWER_KERNELS, "at_least", "T >= last (rows past it are not computed); T < last refused"),
        Variant(ALL, "8.0", "equal", "T must equal the last cumulative length"))),
    Rule("tnd_head_dims", "TND family without rope: Q/K head dim", "spec 12, 25.5", (
        Variant(A2A3, "8.0", (64, 128, 192), "the kernel takes Q/K D in {64, 128, 192} (V D 128 with Q/K D 192); "
                                             "NOT checked: the kit computes any D (small D keeps examples cheap)"),
        Variant(("Ascend950",), "8.0", None, "any D <= 512 [inferred from V5]")), checked=False),
    Rule("mla_heads", "MLA D=512 (non-quantised): query / kv head counts", "spec 12, 22 #17", (
        Variant(("Ascend950",), "8.0", tuple(range(1, 129)), "N_q in [1, 128], N_kv = 1 (arch35 branch of "
                                                             "CheckHeadNum)"),
        Variant(A2A3, "8.0", (1, 2, 4, 8, 16, 32, 64, 128), "N_q in {1, 2, 4, ..., 128}, N_kv = 1 (so G up to "
                                                            "128: FIA-MLA-001/002)"))),
    Rule("block_size", "paged attention: block_size for prefill (S_q > 1)", "spec 11, 22 #8", (
        Variant(ALL, NEWER_KERNELS, (16, 1024), "a multiple of 16, at most 1024 (V5 doc)"),
        Variant(ALL, "8.0", (128, 512), "128..512 in steps of 128 (torch_npu doc); decode: a multiple of 16"))),
    Rule("mla_d512_lse", "MLA D=512 with softmax_lse", "spec 8, 25.1", (
        Variant(ALL, "8.0", True, "accepted (vllm-ascend context-parallel MLA decode uses it; the docs say "
                                  "unsupported)"),)),
    Rule("gqa_ratio", "GQA: N_q / N_kv", "spec 10, 18.2", (
        Variant(("Ascend950",), "8.0", None, "no limit for non-quantised D 64/128 (V5), else <= 64"),
        Variant(A2A3, "8.0", 64, "N_q / N_kv <= 64 on the legacy routes (IFA without rope, PFA); the FIA "
                                 "route has no cap (IFA-GQA-001, PFA-GQA-001)"))),
    Rule("tree_mask", "sparse_mode 9 (tree mask)", "spec 6.6, 25.1", (
        Variant(("Ascend950",), "8.0", False, "refused"),
        Variant(A2A3, NEWER_KERNELS, True, "v2, MLA only"),
        Variant(A2A3, "8.0", False, "not in the kernels before the 2026-08 tree"))),
    Rule("qk_v_head_dims", "Q/K head dim different from V head dim", "spec 12, 18.5, 25.3", (
        Variant(("Ascend950",), "8.0", "any", "any layout (TND family: Q/K 192 with V 128); all D <= 128 with "
                                              "sparse_mode 0/2/3 otherwise"),
        Variant(A2A3, "8.0", "tnd_192", "TND family Q/K D 192 with V D 128, or all D <= 128 with sparse_mode "
                                        "0/2/3"))),
    Rule("decode_sparse_forced_zero", "FIA route, S_q = 1 (BSH/BSND/BNSD, no rope): the caller's sparse_mode",
         "spec 6.5, 22 #18", (
             Variant(A2A3, "8.0", True, "rewritten to sparse_mode 0, pre/next_tokens INT_MAX (SocVersion "
                                        "ASCEND910B, which A3 reports too; FIA-MASK-003)"),
             Variant(ALL, "8.0", False, "kept: a non-zero sparse_mode needs a mask"))),
    Rule("fp8_inputs", "FP8 / HiFloat8 / FP4 inputs", "spec 25.3", (
        Variant(ALL, "8.0", False, "Ascend950 only, not modelled by the kit"),)),
)
RULES: dict[str, Rule] = {r.name: r for r in _RULES}

_current: contextvars.ContextVar[Target | None] = contextvars.ContextVar("fia_kit_target", default=None)


def current() -> Target:
    """The target in force: ``target(...)``'s, else FIA_KIT_TARGET ("A3/8.3", "Ascend950"), else DEFAULT."""
    chosen = _current.get()
    if chosen is not None:
        return chosen
    spec = os.environ.get(ENV_VARIABLE, "").strip()
    return parse(spec) if spec else DEFAULT


def parse(text: str) -> Target:
    """"A3/8.3", "A2", "Ascend950/9.1" -> Target (the CANN version defaults to the newest)."""
    product, _, cann = text.partition("/")
    return Target(product.strip(), cann.strip() or CANN_VERSIONS[-1])


@contextlib.contextmanager
def target(product: str = "A3", cann: str = CANN_VERSIONS[-1]) -> Iterator[Target]:
    """Validate against ``product`` / ``cann`` inside the block (see the module docstring)."""
    token = _current.set(Target(product, cann))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def rule(name: str) -> Any:
    """The current target's setting of rule ``name``."""
    return RULES[name].value(current())


def refuse(parameter: str, rule_name: str, text: str, got: Any = None, **kwargs: Any) -> FIAArgumentError:
    """An FIAArgumentError for a target-dependent rule: names the rule and the target."""
    t = current()
    return FIAArgumentError(parameter, f"{text} [rule {rule_name} on {t}; {RULES[rule_name].source}]", got,
                            target=str(t), **kwargs)


def table_markdown() -> str:
    """The rules table as Markdown (docs/targets.md holds it; a test keeps them equal)."""
    lines = ["| rule | topic | products | from CANN | setting | source | checked |",
             "|---|---|---|---|---|---|---|"]
    for r in _RULES:
        for v in r.variants:
            lines.append(f"| `{r.name}` | {r.topic} | {', '.join(v.products)} | {v.since} | {v.text} | "
                         f"{r.source} | {'yes' if r.checked else 'no'} |")
    return "\n".join(lines)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
