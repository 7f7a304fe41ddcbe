"""The semantics in docs/ are the repository's own: every "spec N.N" citation resolves, nothing points outside.

The code, errors, tests and notebooks cite the op's semantics as "spec N.N" / "section N.N" (docs/README.md: these
mean section N.N of docs/). These checks read the repository's text files; they need no import of fia_kit.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The files that hold the numbered sections 0-25 (docs/README.md maps them); other docs/ files are not numbered.
SECTION_FILES = ("semantics.md", "quantisation.md", "limits.md", "callers.md", "evidence.md", "updates.md")
# Every number the semantics are cited by: the top-level sections and the sub-sections they have.
EXPECTED_SECTIONS = (
    [str(n) for n in range(26)]
    + [f"1.{k}" for k in range(1, 7)]
    + [f"3.{k}" for k in range(1, 9)]
    + [f"4.{k}" for k in range(1, 4)]
    + [f"5.{k}" for k in range(1, 5)]
    + [f"6.{k}" for k in range(1, 7)]
    + [f"16.{k}" for k in range(1, 5)]
    + [f"18.{k}" for k in range(1, 6)]
    + [f"25.{k}" for k in range(1, 6)]
)
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".toml", ".cfg", ".yml", ".yaml", ".json", ".sh", ""}

HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)[.\s]", re.MULTILINE)
NUMBER = r"\d{1,2}(?:\.\d{1,2})?(?!\d)"  # section numbers run 0-25: a year is not one
# "spec 6.3", "spec section 6.3", "section 6.3", "sections 3 and 9", "spec 3-14", "spec 6.3, 16.1", "docs section 5.2"
CITATION = re.compile(
    rf"\b(?:spec(?:\s+section)?|sections?)\s+({NUMBER}(?:\s*(?:,|and|-|–|/)\s*{NUMBER}(?!\w|\.\d))*)",
    re.IGNORECASE,
)
TABLE_ROW_CITATION = re.compile(r"\b(?:spec|section)\s+22,?\s+(?:rows?\s+|#)(\d+)", re.IGNORECASE)
QUESTION_CITATION = re.compile(
    r"\b(?:spec|section)\s+23,?\s+(?:q\.|items?\s+|questions?\s+|open\s+questions?\s+)(\d+)"
    r"((?:\s*(?:,|and)\s*(?:q\.)?\d+)*)",
    re.IGNORECASE,
)
OPEN_QUESTION = re.compile(r"\bopen\s+question\s+(\d+)", re.IGNORECASE)
# Pointers to the workspace outside the repository (written split so this file does not match itself).
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"\bshared/" + r"(?:spec|seed|notes)\b", "fia_" + r"spec\.md"]))


def _repo_text_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (a walk without ignored folders when git is absent)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "dist"}
        paths = [p for p in ROOT.rglob("*") if not skip.intersection(p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]


def _headings() -> dict[str, list[str]]:
    """Section number -> the docs files that have a heading with it."""
    found: dict[str, list[str]] = {}
    for name in SECTION_FILES:
        for number in HEADING.findall((DOCS / name).read_text(encoding="utf-8")):
            found.setdefault(number, []).append(name)
    return found


def _cited_numbers(text: str) -> list[str]:
    """Every section number a text cites, ranges given by their two ends."""
    numbers = []
    for match in CITATION.finditer(text):
        numbers += re.findall(NUMBER, match.group(1))
    return numbers


def _section_body(number: str) -> str:
    text = (DOCS / "evidence.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {number}.")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _disagreement_rows() -> set[int]:
    return {int(n) for n in re.findall(r"^\| (\d+) \|", _section_body("22"), re.MULTILINE)}


def _open_questions() -> set[int]:
    return {int(n) for n in re.findall(r"^(\d+)\. ", _section_body("23"), re.MULTILINE)}


FILES = _repo_text_files()


def test_every_section_has_exactly_one_home() -> None:
    headings = _headings()
    missing = [n for n in EXPECTED_SECTIONS if n not in headings]
    doubled = {n: files for n, files in headings.items() if len(files) > 1}
    assert not missing, f"docs/ has no heading for sections {missing}"
    assert not doubled, f"sections with more than one heading: {doubled}"


def test_the_index_links_every_docs_file() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for name in (*SECTION_FILES, "targets.md", "capture.md"):
        assert f"]({name})" in index, f"docs/README.md does not link {name}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_resolve_to_a_docs_heading(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    headings = _headings()
    unresolved = sorted({n for n in _cited_numbers(text) if n not in headings})
    assert not unresolved, f"{path.relative_to(ROOT)} cites sections {unresolved}, which docs/ does not have"
    rows = {int(n) for n in TABLE_ROW_CITATION.findall(text)}
    assert rows <= _disagreement_rows(), f"cites rows {sorted(rows - _disagreement_rows())} of section 22"
    questions = {int(n) for n in OPEN_QUESTION.findall(text)}
    for first, more in QUESTION_CITATION.findall(text):
        questions |= {int(first), *map(int, re.findall(r"\d+", more))}
    assert questions <= _open_questions(), f"cites questions {sorted(questions - _open_questions())} of section 23"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = sorted({m.group(0) for m in OUTSIDE.finditer(text)})
    assert not hits, f"{path.relative_to(ROOT)} refers to {hits}: cite docs/ instead"


def test_docs_links_resolve() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).is_file(), f"{page.name} links {target}, which does not exist"


def test_modules_the_docs_name_exist() -> None:
    for page in DOCS.glob("*.md"):
        for module in re.findall(r"`(fia_kit/[\w/]+\.py)`", page.read_text(encoding="utf-8")):
            assert (ROOT / module).is_file(), f"{page.name} names {module}, which does not exist"


def test_disputes_and_open_questions_stay_visible() -> None:
    text = "".join((DOCS / name).read_text(encoding="utf-8") for name in SECTION_FILES)
    assert _disagreement_rows() == set(range(1, 23))  # rows 17-22: the kernel host code read for issue 20
    assert _open_questions() == set(range(1, 9))
    for tag in ("[inferred]", "[doc]", "[code]", "[usage]"):
        assert tag in text, f"the docs lost the {tag} tag"


def test_the_patterns_catch_what_they_must() -> None:
    """The checks above can fail: a citation of a missing section, a pointer outside, are each detected."""
    assert _cited_numbers("see spec 6.3, 16.1 and spec section 4.2; sections 3 and 9; spec 3-14") == [
        "6.3", "16.1", "4.2", "3", "9", "3", "14"
    ]
    assert _cited_numbers("docs section 25.1 (spec 22 row 4); spec 6.3, 16.1.") == ["25.1", "22", "6.3", "16.1"]
    assert "99.9" not in _headings() and _cited_numbers("spec " + "99.9") == ["99.9"]
    assert not _cited_numbers("the inspection 3 of the specification")
    assert OUTSIDE.search("see ../" + "shared" + "/x") and OUTSIDE.search("fia_" + "spec.md")
    assert not OUTSIDE.search("docs/semantics.md")
    assert QUESTION_CITATION.findall("spec section 23, items 4 and 5") == [("4", " and 5")]
    assert TABLE_ROW_CITATION.findall("spec section 22, row 9; spec 22 #8") == ["9", "8"]
