"""``fia_kit.__all__`` is the public surface: every name resolves, heavy modules load only on first use, and
importing has no side effect beyond the documented TORCH_DEVICE_BACKEND_AUTOLOAD default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fia_kit

PROBE = """
import json, os, sys
import fia_kit
loaded = sorted(m for m in ("plotly", "ipywidgets", "fia_kit.explorer", "fia_kit.figures",
                            "fia_kit.backends.lookalike", "torch_npu") if m in sys.modules)
first = dict(loaded=loaded, autoload=os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD"))
missing = [n for n in fia_kit.__all__ if getattr(fia_kit, n, None) is None]
print(json.dumps(dict(first, missing=missing, plotly_after="plotly" in sys.modules)))
"""


def _probe() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_import_loads_no_widgets_no_plotly_and_every_public_name_resolves():
    report = _probe()
    assert report["loaded"] == [], report
    assert report["autoload"] == "0"
    assert report["missing"] == []
    assert report["plotly_after"]  # the figures and the explorer did load once asked for


def test_the_surface_names_what_users_call():
    expected = {"plan", "Plan", "run", "compare", "Case", "npu_fused_infer_attention_score",
                "npu_fused_infer_attention_score_v2", "visibility_figure", "explore", "FIAArgumentError",
                "compute_dtype", "register_backend", "backend_names", "Visibility", "FORMS"}
    assert expected <= set(fia_kit.__all__)
    assert len(fia_kit.__all__) == len(set(fia_kit.__all__))
    assert fia_kit.Case is __import__("fia_kit.case", fromlist=["Case"]).Case


def test_context_parallel_is_public():
    assert {"npu_attention_update", "cp"} <= set(fia_kit.__all__)
    assert fia_kit.npu_attention_update is fia_kit.cp.npu_attention_update
