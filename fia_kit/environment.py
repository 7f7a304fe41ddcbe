"""Environment detection for fia-kit: Python, torch, CUDA, torch_npu, CANN and TorchAir.

torch_npu is never imported here before it has been shown to import in a subprocess:
without CANN, ``import torch_npu`` raises ``ImportError: libhccl.so ...``, and once
torch_npu is merely installed, torch's device-backend autoloading (entry point group
``torch.backends``) makes a plain ``import torch`` raise as well.  Importing this module
therefore sets ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (unless the user set it) before torch
is imported.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

AUTOLOAD_VAR = "TORCH_DEVICE_BACKEND_AUTOLOAD"
#: Value of TORCH_DEVICE_BACKEND_AUTOLOAD before fia_kit set its default (None: unset).
AUTOLOAD_ENV_AT_IMPORT = os.environ.get(AUTOLOAD_VAR)
os.environ.setdefault(AUTOLOAD_VAR, "0")  # before anything imports torch

DEFAULT_CANN_HOME = "/usr/local/Ascend/ascend-toolkit/latest"


@dataclass(frozen=True)
class NPUProbe:
    """What a subprocess found out about torch_npu.

    ``error`` says why torch_npu cannot be used: the import error, or a failed device query.
    """

    installed: bool
    version: str | None = None
    imports: bool = False
    error: str | None = None
    device_count: int = 0
    device_name: str | None = None
    cann_version: str | None = None
    torchair: bool = False
    torchair_error: str | None = None


def _installed() -> tuple[bool, str | None]:
    """Return (installed, distribution version) of torch_npu without importing it."""
    import importlib.metadata
    import importlib.util
    import sys

    if "torch_npu" not in sys.modules and importlib.util.find_spec("torch_npu") is None:
        return False, None
    for name in ("torch-npu", "torch_npu"):
        try:
            return True, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return True, None


def _import_facts() -> dict[str, Any]:
    """Import torch and torch_npu and query devices, CANN and TorchAir (probe subprocess only)."""
    import importlib

    facts: dict[str, Any] = {"imports": False, "torchair": False}
    try:
        import torch
        import torch_npu
    except Exception as exc:
        facts["error"] = f"{type(exc).__name__}: {exc}"
        return facts
    facts["imports"] = True
    facts["version"] = getattr(torch_npu, "__version__", None)
    try:
        facts["device_count"] = torch.npu.device_count() if torch.npu.is_available() else 0
        if facts["device_count"]:
            facts["device_name"] = torch.npu.get_device_name(0)
    except Exception as exc:
        facts["error"] = f"torch.npu device query failed: {type(exc).__name__}: {exc}"
    try:
        facts["cann_version"] = getattr(importlib.import_module("torch_npu.version"), "cann", None)
    except Exception:
        facts["cann_version"] = None
    try:
        import torchair  # noqa: F401  (importable only after torch_npu)

        facts["torchair"] = True
    except Exception as exc:
        facts["torchair_error"] = f"{type(exc).__name__}: {exc}"
    return facts


# The probe prints one JSON line once installation is known (so a crash while importing
# still reports it) and a final line marked "done".
_PROBE_SCRIPT = "\n".join(
    [
        "from __future__ import annotations",
        "import json",
        "from typing import Any",
        inspect.getsource(_installed),
        inspect.getsource(_import_facts),
        "_info = dict(zip(('installed', 'version'), _installed()))",
        "print(json.dumps(_info), flush=True)",
        "if _info['installed']:",
        "    _info.update({k: v for k, v in _import_facts().items() if v is not None})",
        "print(json.dumps(dict(_info, done=True)), flush=True)",
    ]
)


def _text(stream: str | bytes | None) -> str:
    """Decode captured output (TimeoutExpired may carry bytes even in text mode)."""
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def _last_json(stdout: str) -> dict[str, Any]:
    """Return the last line of ``stdout`` that is a JSON object ({} if none)."""
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _last_line(text: str) -> str | None:
    """Return the last non-blank line of ``text``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _version_in(path: Path) -> str | None:
    """Read a CANN version from a version.cfg / version.info file (None if absent)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"(?im)^\s*\w*version\s*=\s*\[?([0-9A-Za-z][^\]\s:]*)", text)
    return match.group(1) if match else None


def cann_version_from_files(env: Mapping[str, str] | None = None) -> str | None:
    """Find the CANN toolkit version from ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH / the default path."""
    env = os.environ if env is None else env
    homes = (env.get("ASCEND_TOOLKIT_HOME"), env.get("ASCEND_HOME_PATH"), DEFAULT_CANN_HOME)
    for home in filter(None, homes):
        root = Path(home)
        for path in (root / "version.cfg", *sorted(root.glob("*/version.info"))):
            version = _version_in(path)
            if version:
                return version
    return None


def _to_probe(facts: Mapping[str, Any], env: Mapping[str, str], error: str | None) -> NPUProbe:
    """Build an NPUProbe from the probe's JSON; ``error`` (a failed probe) forces imports=False."""
    return NPUProbe(
        installed=bool(facts.get("installed")),
        version=facts.get("version"),
        imports=error is None and bool(facts.get("imports")),
        error=error or facts.get("error"),
        device_count=int(facts.get("device_count") or 0),
        device_name=facts.get("device_name"),
        cann_version=facts.get("cann_version") or cann_version_from_files(env),
        torchair=error is None and bool(facts.get("torchair")),
        torchair_error=facts.get("torchair_error"),
    )


def probe_torch_npu(
    python: str = sys.executable, env: Mapping[str, str] | None = None, timeout: float = 60
) -> NPUProbe:
    """Find out in a subprocess whether torch_npu is installed, imports, and sees NPUs.

    ``env`` defaults to this process's environment; TORCH_DEVICE_BACKEND_AUTOLOAD is forced
    to 0 so that the import of torch_npu is tested on its own.  A crash, a timeout or output
    without the final JSON line gives ``imports=False`` with the last stderr line as error.
    """
    run_env = {**(os.environ if env is None else env), AUTOLOAD_VAR: "0"}
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE_SCRIPT],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        message = f"probe timed out after {timeout:g} s"
        return _to_probe(_last_json(_text(exc.stdout)), run_env, message)
    except OSError as exc:
        return _to_probe({}, run_env, f"cannot run {python}: {exc}")
    facts = _last_json(proc.stdout)
    if facts.get("done"):
        return _to_probe(facts, run_env, None)
    error = _last_line(proc.stderr) or f"probe exited with code {proc.returncode}"
    return _to_probe(facts, run_env, error)


def _first_line(text: str | None) -> str:
    """First line of an error message, for one-line reasons."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "unknown error"


def npu_import_problem(npu: NPUProbe) -> str | None:
    """Why torch_npu cannot be imported in this environment, or None if it can."""
    if not npu.installed:
        return "torch_npu is not installed"
    if npu.imports:
        return None
    error = _first_line(npu.error)
    version = f" {npu.version}" if npu.version else ""
    hint = " (is CANN installed and set_env.sh sourced?)" if ".so" in error else ""
    return f"torch_npu{version} is installed but does not import: {error}{hint}"


@functools.cache
def _dynamo_error() -> str | None:
    """Why torch._dynamo (hence torch.compile) cannot be imported, or None."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception as exc:
        return f"torch._dynamo does not import: {type(exc).__name__}: {_first_line(str(exc))}"
    return None


@dataclass(frozen=True)
class EnvironmentReport:
    """Facts about the running environment and the kit's backends."""

    python: str
    platform: str
    torch_version: str
    cuda_available: bool
    cuda_device: str | None
    npu: NPUProbe
    autoload_env: str | None

    def npu_usable(self) -> tuple[bool, str]:
        """(usable, reason) of the npu backend."""
        problem = npu_import_problem(self.npu)
        if problem:
            return False, problem
        if self.npu.device_count == 0:
            detail = f": {_first_line(self.npu.error)}" if self.npu.error else ""
            return False, f"torch_npu imports but no NPU device is available{detail}"
        cann = self.npu.cann_version or "unknown"
        devices = f"{self.npu.device_count} x {self.npu.device_name or 'NPU'}"
        return True, f"torch_npu {self.npu.version} on {devices} (CANN {cann})"

    def graph_usable(self) -> tuple[bool, str]:
        """(usable, reason) of the npu-graph backend (TorchAir)."""
        if not self.npu_usable()[0]:
            if not self.npu.installed:
                state = "is not installed"
            else:
                state = "sees no NPU" if self.npu.imports else "does not import"
            return False, f"needs the npu backend (torch_npu {state})"
        if not self.npu.torchair:
            return False, f"torchair does not import: {_first_line(self.npu.torchair_error)}"
        return True, "TorchAir graph mode (tng.ops)"

    def compile_usable(self) -> tuple[bool, str]:
        """(usable, reason) of torch.compile-based backends."""
        dynamo_error = _dynamo_error()
        devices = "CPU+CUDA" if self.cuda_available else "CPU"
        return (False, dynamo_error) if dynamo_error else (True, f"torch.compile on {devices}")

    def backends(self) -> dict[str, tuple[bool, str]]:
        """Map each registered backend (``fia_kit.backends.backend_names()``) to (usable, reason)."""
        from . import backends  # imports torch and registers the built-in backends: only on demand

        return backends.registry.availability(self)

    def default_backend(self) -> str:
        """Return "npu" when the npu backend is usable, else "reference"."""
        return "npu" if self.npu_usable()[0] else "reference"

    def _rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the environment part of the table."""
        npu = self.npu
        autoload = self.autoload_env if self.autoload_env is not None else "unset (fia_kit uses 0)"
        if not npu.installed:
            npu_text = "not installed"
        else:
            npu_text = f"{npu.version or '?'}, " + ("imports" if npu.imports else "does not import")
        return [
            ("python", self.python),
            ("platform", self.platform),
            ("torch", self.torch_version),
            ("cuda", self.cuda_device if self.cuda_available else "not available"),
            ("torch_npu", npu_text),
            ("npu devices", f"{npu.device_count}" + (f" x {npu.device_name}" if npu.device_name else "")),
            ("cann", npu.cann_version or "not found"),
            ("torchair", "imports" if npu.torchair else "not available"),
            (AUTOLOAD_VAR, autoload),
        ]

    def table(self) -> str:
        """Aligned plain-text table of the environment and the backends with reasons."""
        rows = self._rows()
        width = max(len(key) for key, _ in rows)
        lines = [f"{key:<{width}}  {str(value)}" for key, value in rows]
        lines += ["", "backends:"]
        backends = self.backends()
        name_width = max(map(len, backends))
        for name, (usable, reason) in backends.items():
            lines.append(f"  {name:<{name_width}}  {'yes' if usable else 'no ':<3}  {reason}")
        lines.append(f"default backend: {self.default_backend()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields, the backends and the default backend."""
        return {
            **asdict(self),
            "backends": {name: {"usable": ok, "reason": why} for name, (ok, why) in self.backends().items()},
            "default_backend": self.default_backend(),
        }


@functools.cache
def _detect() -> EnvironmentReport:
    """Build the report (probing torch_npu in a subprocess only when it is installed)."""
    import torch

    npu = probe_torch_npu() if _installed()[0] else NPUProbe(False, cann_version=cann_version_from_files())
    cuda = torch.cuda.is_available()
    return EnvironmentReport(
        python=platform.python_version(),
        platform=platform.platform(),
        torch_version=torch.__version__,
        cuda_available=cuda,
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
        npu=npu,
        autoload_env=AUTOLOAD_ENV_AT_IMPORT,
    )


def detect(refresh: bool = False) -> EnvironmentReport:
    """Detect the environment once per process (``refresh=True`` probes again)."""
    if refresh:
        _detect.cache_clear()
    return _detect()


def import_torch_npu() -> ModuleType:
    """Import torch_npu, but only after the probe showed that it imports.

    Raises RuntimeError with the probe's reason otherwise (instead of a crash or a
    confusing libhccl.so error deep inside another import).
    """
    problem = npu_import_problem(detect().npu)
    if problem:
        raise RuntimeError(f"cannot use torch_npu: {problem}")
    import torch_npu

    return torch_npu
