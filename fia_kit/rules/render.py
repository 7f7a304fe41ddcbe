"""docs/rules.md, generated from the rule book (``python -m fia_kit.rules.render > docs/rules.md``)."""

from __future__ import annotations

from .book import COMMIT, KIT_ONLY, RULES
from .routes import ROUTER_SOURCE, ROUTES


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """The rule book as Markdown: the routes, then one table row per rule (docs/rules.md; a test keeps them equal)."""
    lines = [
        "# The kernel's rules (generated from `fia_kit/rules/book.py`; do not edit)",
        "",
        f"Read from the ops-transformer host code at commit `{COMMIT[:7]}` (2026-08-21). Sources are "
        "`path:line` at that commit; messages are regexes for the kernel's own log text (a CANN plog line).",
        "Status: **enforced** (the kit refuses a call that breaks it, with the rule's id and source in the error), "
        "**unreachable** (torch_npu cannot produce such a call), **not-enforced** (read, not checked; the note says "
        "why). The section column is the docs section the rule belongs to.",
        "",
        "## Routes",
        "",
        f"The router (`{ROUTER_SOURCE}`) sends an A2/A3 call down one of: "
        + ", ".join(f"`{r}`" for r in ROUTES) + ". `Plan.route` names it; `fia_kit/rules/routes.py` holds the "
        "conditions. Which rules apply, and the LSE a row without keys gets, depend on it (spec 8).",
        "",
        "## Rules",
        "",
        "| id | topic | condition | routes | gate | status | section | parameter | source | message | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in RULES:
        cells = (f"`{r.id}`", r.topic, r.condition, ", ".join(r.routes), r.gate or "", r.status, r.section,
                 f"`{r.parameter}`", f"`{r.source}`", f"`{r.message}`", r.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "## Rules the kit keeps that the kernel does not apply", "",
              "| topic | where | why |", "|---|---|---|"]
    lines += [f"| {_cell(k.topic)} | `{k.where}` | {_cell(k.why)} |" for k in KIT_ONLY]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
