"""A plan's host route in words, for the places a user looks at a call (``Case.describe``, the explorer, lint).

    note = route_note(fia_kit.plan(case))
    str(note)          # "route legacy-ifa (the legacy incremental (decode) tiling, ...): a row without keys gets LSE
                       #  -3.40282e+38"
    note.with_rules()  # ... "; rules of this route only: 4 (IFA-MASK-001, IFA-MASK-002, IFA-MLA-001, ...)"

The route is the plan's (``Plan.route``, decided by the kernel's router, ``fia_kit.rules.routes``); the LSE of a row
without keys is what the kit's reference writes on that plan (``fia_kit.lse.no_key_lse``); the rules are the book's
enforced rules whose routes are this route alone (``fia_kit.rules.book``). Nothing here decides anything: it only
reads those three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROUTE_WORDS: dict[str, str] = {
    "fia": "the FIA checkers (op_host/checkers/) and tiling v3",
    "split-fuse": "the TND split-fuse checks (CheckFAIAvailability)",
    "legacy-ifa": "the legacy incremental (decode) tiling, incre_flash_attention's checks",
    "legacy-pfa": "the legacy prompt (prefill) tiling, prompt_flash_attention's checks",
}


@dataclass(frozen=True)
class RouteNote:
    """What the route of one plan means for its user.

    Attributes:
        route: one of ``fia_kit.rules.routes.ROUTES``.
        words: what the route is (``ROUTE_WORDS``).
        empty_row_lse: the softmax_lse a row without keys gets on this plan (+inf, or -3.40282e38 on the
            incremental kernels), spec 7, 8, 25.1.
        only_here: ids of the book's enforced rules that apply on this route and no other.
    """

    route: str
    words: str
    empty_row_lse: float
    only_here: tuple[str, ...]

    def __str__(self) -> str:
        return f"route {self.route} ({self.words}): a row without keys gets LSE {self.empty_row_lse:.6g}"

    def with_rules(self) -> str:
        """``str(note)`` and the ids of the rules of this route alone (the first three, and how many)."""
        shown = self.only_here if len(self.only_here) <= 4 else (*self.only_here[:3], "...")
        rules = f"{len(self.only_here)} ({', '.join(shown)})" if self.only_here else "none"
        return f"{self}; rules of this route only: {rules}"


def route_only_rules(route: str) -> tuple[Any, ...]:
    """The book's enforced rules that apply on ``route`` and on no other route."""
    from .book import RULES

    return tuple(r for r in RULES if tuple(r.routes) == (route,) and r.status == "enforced")


def route_note(plan: Any) -> RouteNote:
    """The route note of a validated ``Plan``."""
    from ..lse import no_key_lse

    route = plan.route
    return RouteNote(route, ROUTE_WORDS.get(route, route), float(no_key_lse(plan)),
                     tuple(r.id for r in route_only_rules(route)))
