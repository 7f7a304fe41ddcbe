"""The kernel's own rules: FIA's host routes and checks on Atlas A2/A3, as data (docs/rules.md).

    from fia_kit.rules import RULES, rule_by_id, ROUTES
    rule_by_id("FIA-MLA-001").source      # 'attention/fused_infer_attention_score/op_host/checkers/...:1131'
    fia_kit.plan("v1", q, k, v, ...).route  # 'fia' | 'split-fuse' | 'legacy-ifa' | 'legacy-pfa'

``book`` holds the rules (one per kernel check), ``routes`` the router, ``render`` docs/rules.md.
"""

from .book import COMMIT, KIT_ONLY, NO_MESSAGE, RULES, STATUSES, KernelRule, KitRule, error, rule_by_id
from .render import render_markdown
from .routes import ROUTER_SOURCE, ROUTES, RouteFacts, decide

__all__ = ["COMMIT", "KIT_ONLY", "NO_MESSAGE", "ROUTER_SOURCE", "ROUTES", "RULES", "STATUSES", "KernelRule", "KitRule", "RouteFacts",
           "decide", "error", "render_markdown", "rule_by_id"]
