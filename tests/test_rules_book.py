"""The kernel rule book (fia_kit.rules): well-formed entries, docs/rules.md generated from it, errors that cite it.

Where the ops-transformer mirror is on this machine, each rule's message is also found next to its source line.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from fia_kit import FIAArgumentError, targets
from fia_kit.rules import COMMIT, KIT_ONLY, NO_MESSAGE, ROUTES, RULES, STATUSES, render_markdown, rule_by_id

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path("/work/.mirror/libochao-huawei+ops-transformer/repo")


def _headings() -> set[str]:
    found = set()
    for path in (ROOT / "docs").glob("*.md"):
        found.update(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)[. ]", path.read_text(encoding="utf-8"), re.M))
    return found


def test_docs_rules_md_is_generated_from_the_book():
    assert (ROOT / "docs" / "rules.md").read_text(encoding="utf-8") == render_markdown(), \
        "regenerate: python -m fia_kit.rules.render > docs/rules.md"


def test_docs_readme_links_the_rules():
    assert "(rules.md)" in (ROOT / "docs" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_rule_is_well_formed(rule):
    assert re.fullmatch(r"(FIA|SF|IFA|PFA)-[A-Z]+-\d{3}", rule.id)
    assert re.fullmatch(r"attention/[a-z_]+/op_host/[\w/]+\.(cpp|h):\d+", rule.source)
    assert rule.routes and set(rule.routes) <= set(ROUTES)
    assert rule.status in STATUSES
    assert (rule.note != "") or rule.status == "enforced"
    assert rule.section in _headings(), f"{rule.id}: docs section {rule.section} has no heading"
    assert rule.gate is None or rule.gate in targets.RULES
    pattern = re.compile(rule.message)
    assert rule.message == NO_MESSAGE or not pattern.search(""), "a message pattern must not match empty text"
    assert rule.parameter and rule.condition and rule.topic


def test_ids_are_unique_and_looked_up():
    assert len({r.id for r in RULES}) == len(RULES)
    assert all(rule_by_id(r.id) is r for r in RULES)
    with pytest.raises(FIAArgumentError, match="rule book"):
        rule_by_id("FIA-NOPE-999")


def test_kit_only_rules_say_where_and_why():
    assert KIT_ONLY and all(k.topic and k.where.startswith("planning.") and k.why for k in KIT_ONLY)


def test_an_error_shows_the_rule_id_and_source_beside_parameter_rule_and_value():
    q = torch.zeros(1, 1, 4, 512, dtype=torch.float16)
    import fia_kit

    with pytest.raises(FIAArgumentError) as err:
        fia_kit.plan("v1", q, torch.zeros(1, 6, 2, 512, dtype=torch.float16),
                     torch.zeros(1, 6, 2, 512, dtype=torch.float16), query_rope=torch.zeros(1, 1, 4, 64).half(),
                     key_rope=torch.zeros(1, 6, 2, 64).half(), num_heads=4, num_key_value_heads=2,
                     input_layout="BSND")
    e, rule = err.value, rule_by_id("FIA-MLA-002")
    assert (e.rule_id, e.source, e.parameter) == (rule.id, rule.source, "num_key_value_heads")
    text = str(e)
    assert text.startswith("num_key_value_heads: ") and "got 2" in text and "A3 / CANN" in text
    assert f"[{rule.id} at {rule.source}]" in text


def _literal_stem(pattern: str) -> str:
    """The regex's leading literal text (escapes resolved), up to its first operator."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            out, i = out + pattern[i + 1], i + 2
            continue
        if c in "\\.[{*+?|^$()":
            break
        out, i = out + c, i + 1
    return out


@pytest.mark.skipif(not MIRROR.exists(), reason="the ops-transformer mirror is not on this machine")
@pytest.mark.parametrize("rule", [r for r in RULES if r.message != NO_MESSAGE], ids=lambda r: r.id)
def test_message_is_next_to_its_source_line(rule):
    path, line = rule.source.rsplit(":", 1)
    text = subprocess.run(["git", "-C", str(MIRROR), "show", f"{COMMIT}:{path}"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.splitlines()
    window = "\n".join(text[max(0, int(line) - 12):int(line) + 12])
    stem = _literal_stem(rule.message)
    assert len(stem) >= 10 and stem in window, f"{rule.id}: {stem!r} not near {rule.source}"
