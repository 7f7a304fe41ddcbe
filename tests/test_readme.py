"""README.md's Python snippets run as written, in order, in one namespace, and give what their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The bodies of README.md's ```python fenced blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_snippets_run_and_match_their_comments(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2, "README.md lost its API snippets"
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    out, lse = namespace["out"], namespace["lse"]
    # block 0's comment: out (2, 8, 128, 64) float16, rows 100.. of batch 1 are 0; lse (2, 8, 128, 1) float32
    assert out.shape == (2, 8, 128, 64) and out.dtype == torch.float16
    assert not out[1, :, 100:].any() and out[1, :, :100].abs().sum() > 0
    assert lse.shape == (2, 8, 128, 1) and lse.dtype == torch.float32
    # block 1's comment: p.visibility.dense(1) is (100, 256) bool
    dense = namespace["p"].visibility.dense(1)
    assert dense.shape == (100, 256) and dense.dtype == torch.bool
    printed = capsys.readouterr().out
    assert "block_table" in printed  # case.describe("v2") of a paged case names the block table
    assert "compiled" in printed and "pass" in printed
    comparison = namespace["fia_kit"].compare(namespace["case"], backends=["compiled"], form="torchair-v2")
    assert comparison.passed  # the README's last line prints a comparison that agrees
