"""Tests of fia_kit.environment and `fia-kit doctor`, with fake torch_npu packages.

tests/fake_packages/broken: torch_npu 2.13.0 whose import raises the libhccl.so error of a
machine without CANN; its dist-info declares the ``torch.backends`` entry point that real
torch_npu declares, so a plain ``import torch`` fails there unless autoloading is off.
tests/fake_packages/working: torch_npu whose import succeeds, with one fake NPU and torchair.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fia_kit import environment
from fia_kit.backends import backend_names
from fia_kit.cli import main
from fia_kit.environment import (
    AUTOLOAD_VAR,
    NPUProbe,
    cann_version_from_files,
    detect,
    import_torch_npu,
    probe_torch_npu,
)

REPO = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fake_packages"
BROKEN = FAKES / "broken"
WORKING = FAKES / "working"
LIBHCCL = "libhccl.so: cannot open shared object file"

BUILT_IN = ("reference", "compiled", "npu", "npu-graph")  # every environment registers these, first


def fake_env(*paths: Path) -> dict[str, str]:
    """This process's environment with ``paths`` (and the repo) on PYTHONPATH, autoload unset."""
    env = {key: value for key, value in os.environ.items() if key != AUTOLOAD_VAR}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO)])
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def write_fake(root: Path, torch_npu_source: str) -> Path:
    """A fake ``torch`` (empty, fast) and a fake ``torch_npu`` with the given source."""
    for name, source in (("torch", ""), ("torch_npu", torch_npu_source)):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(source)
    return root


@pytest.fixture(scope="module")
def broken_probe() -> NPUProbe:
    return probe_torch_npu(env=fake_env(BROKEN))


@pytest.fixture(scope="module")
def working_probe() -> NPUProbe:
    return probe_torch_npu(env=fake_env(WORKING))


@pytest.fixture(scope="module")
def broken_detect() -> dict:
    """detect() and import_torch_npu() in a subprocess that sees the broken torch_npu."""
    code = (
        "import json, fia_kit.environment as e\n"
        "report = e.detect().to_dict()\n"
        "try:\n"
        "    e.import_torch_npu()\n"
        "except RuntimeError as exc:\n"
        "    report['import_error'] = str(exc)\n"
        "print(json.dumps(report))\n"
    )
    proc = run_python(code, fake_env(BROKEN))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_this_environment_has_no_torch_npu() -> None:
    if environment._installed()[0]:
        pytest.skip("torch_npu is installed in this environment")
    report = detect()
    assert report.npu == NPUProbe(installed=False, cann_version=report.npu.cann_version)
    backends = report.backends()
    assert list(backends) == list(backend_names()) and list(backends)[:4] == list(BUILT_IN)
    assert backends["reference"][0] is True
    for name in ("npu", "npu-graph"):
        usable, reason = backends[name]
        assert not usable and "not installed" in reason
    assert report.default_backend() == "reference"
    with pytest.raises(RuntimeError, match="torch_npu is not installed"):
        import_torch_npu()


def test_report_fields_and_compiled_backend() -> None:
    import torch

    report = detect()
    assert detect() is report and detect(refresh=True) is not report
    assert report.torch_version == torch.__version__
    assert report.cuda_available == torch.cuda.is_available()
    assert report.python == "{}.{}.{}".format(*sys.version_info[:3])
    usable, reason = report.backends()["compiled"]
    assert usable and reason.endswith("CPU+CUDA" if report.cuda_available else "CPU")
    assert os.environ[AUTOLOAD_VAR] == (environment.AUTOLOAD_ENV_AT_IMPORT or "0")
    assert report.autoload_env == environment.AUTOLOAD_ENV_AT_IMPORT
    assert json.loads(json.dumps(report.to_dict()))["default_backend"] == report.default_backend()


def test_probe_of_installed_but_broken_torch_npu(broken_probe: NPUProbe) -> None:
    assert broken_probe.installed and broken_probe.version == "2.13.0"
    assert not broken_probe.imports and not broken_probe.torchair
    assert broken_probe.error == f"ImportError: {LIBHCCL}: No such file or directory"
    assert broken_probe.device_count == 0


def test_detect_with_broken_torch_npu_explains_why(broken_detect: dict) -> None:
    npu_reason = broken_detect["backends"]["npu"]["reason"]
    assert npu_reason == (
        f"torch_npu 2.13.0 is installed but does not import: ImportError: {LIBHCCL}: "
        "No such file or directory (is CANN installed and set_env.sh sourced?)"
    )
    assert broken_detect["backends"]["npu"]["usable"] is False
    assert broken_detect["backends"]["npu-graph"] == {
        "usable": False,
        "reason": "needs the npu backend (torch_npu does not import)",
    }
    assert broken_detect["backends"]["reference"]["usable"] is True
    assert broken_detect["default_backend"] == "reference"
    assert broken_detect["import_error"] == f"cannot use torch_npu: {npu_reason}"


def test_autoload_trap_breaks_plain_torch_but_not_fia_kit(broken_detect: dict) -> None:
    proc = run_python("import torch", fake_env(BROKEN))
    assert proc.returncode != 0
    assert "Failed to load the backend extension: torch_npu" in proc.stderr
    # The same environment (autoload unset) let fia_kit import torch and run detect():
    assert broken_detect["autoload_env"] is None
    assert broken_detect["npu"]["installed"] is True


def test_probe_of_working_torch_npu(working_probe: NPUProbe) -> None:
    assert working_probe == NPUProbe(
        installed=True,
        version="2.13.0.fake",
        imports=True,
        device_count=1,
        device_name="Ascend910B3 (fake)",
        cann_version="8.3.RC1.fake",
        torchair=True,
    )
    report = dataclasses.replace(detect(), npu=working_probe)
    backends = report.backends()
    assert backends["npu"] == (True, "torch_npu 2.13.0.fake on 1 x Ascend910B3 (fake) (CANN 8.3.RC1.fake)")
    assert backends["npu-graph"] == (True, "TorchAir graph mode (tng.ops)")
    assert report.default_backend() == "npu"
    assert "Ascend910B3 (fake)" in report.table()


def test_working_torch_npu_without_device_or_torchair(working_probe: NPUProbe) -> None:
    no_device = dataclasses.replace(working_probe, device_count=0, device_name=None)
    backends = dataclasses.replace(detect(), npu=no_device).backends()
    assert backends["npu"] == (False, "torch_npu imports but no NPU device is available")
    assert backends["npu-graph"] == (False, "needs the npu backend (torch_npu sees no NPU)")
    no_torchair = dataclasses.replace(working_probe, torchair=False, torchair_error="ImportError: x")
    backends = dataclasses.replace(detect(), npu=no_torchair).backends()
    assert backends["npu"][0]
    assert backends["npu-graph"] == (False, "torchair does not import: ImportError: x")


def test_probe_survives_a_crash_while_importing(tmp_path: Path) -> None:
    source = "import os, sys\nsys.stderr.write('aclInit failed\\nFatal: boom\\n')\nos._exit(3)\n"
    probe = probe_torch_npu(env=fake_env(write_fake(tmp_path, source)))
    assert probe.installed and probe.version is None
    assert not probe.imports and probe.error == "Fatal: boom"


def test_probe_times_out(tmp_path: Path) -> None:
    probe = probe_torch_npu(env=fake_env(write_fake(tmp_path, "import time\ntime.sleep(60)\n")), timeout=1)
    assert probe.installed and not probe.imports
    assert probe.error == "probe timed out after 1 s"


def test_probe_with_a_missing_interpreter(tmp_path: Path) -> None:
    probe = probe_torch_npu(python=str(tmp_path / "no-python"))
    assert not probe.imports and probe.error.startswith(f"cannot run {tmp_path / 'no-python'}")


def test_cann_version_from_files(tmp_path: Path) -> None:
    cfg_home, info_home = tmp_path / "cfg", tmp_path / "info"
    cfg_home.mkdir()
    (cfg_home / "version.cfg").write_text("# version: 1.0\nruntime_running_version=[8.0.RC2.10:8.0.RC2]\n")
    (info_home / "runtime").mkdir(parents=True)
    (info_home / "runtime" / "version.info").write_text("Version=8.1.RC1\n")
    assert cann_version_from_files({"ASCEND_TOOLKIT_HOME": str(cfg_home)}) == "8.0.RC2.10"
    assert cann_version_from_files({"ASCEND_HOME_PATH": str(info_home)}) == "8.1.RC1"
    if not Path(environment.DEFAULT_CANN_HOME).exists():
        assert cann_version_from_files({"ASCEND_TOOLKIT_HOME": str(tmp_path / "none")}) is None


def test_cli_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in BUILT_IN)
    assert f"default backend: {detect().default_backend()}" in text
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["backends"]) == list(backend_names())
    assert report["torch_version"] == detect().torch_version


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_python_m_fia_kit_cli_doctor() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fia_kit.cli", "doctor"],
        env=fake_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in BUILT_IN)
