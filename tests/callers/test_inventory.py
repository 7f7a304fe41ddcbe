"""The caller folder holds at least 30 cited call patterns, each naming repository, path and a commit."""

from __future__ import annotations

import re

import _callers
import test_sglang_op_plugin_torchair  # noqa: F401  (importing a module registers its @caller patterns)
import test_vllm_ascend  # noqa: F401


def test_at_least_thirty_cited_patterns():
    names = {name for name, *_ in _callers.CITED}
    assert len(names) >= 30, sorted(names)
    for _name, repo, path, commit, where in _callers.CITED:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", repo) and path and where
        assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert {repo for _, repo, *_ in _callers.CITED} >= {"vllm-project/vllm-ascend", "sgl-project/sglang",
                                                         "Ascend/op-plugin", "Ascend/torchair"}
