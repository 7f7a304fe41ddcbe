"""environment.yml must mirror the pins in pyproject.toml.

pyproject.toml is the source of truth: [project].dependencies plus every optional extra.
environment.yml's `pip:` section must list exactly the same requirements with the same
exact (==) versions, plus `-e .`. torch must be pinned to exactly 2.13.0 (the CPU wheel in
/opt/wheels; a looser pin pulls the multi-GB CUDA build) and the Ascend-only packages
torch_npu / torchair must never appear in either file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (e.g. an existing Ascend env): tomli if present
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"

FORBIDDEN = {"torch-npu", "torchair"}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def normalize(name: str) -> str:
    """PEP 503 name normalisation: torch_npu, Torch.NPU and torch-npu are the same."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(req: str) -> tuple[str, str]:
    """Split 'name[extra]==1.2' into (normalised name, specifier); markers are dropped."""
    req = req.split(";", 1)[0]
    m = _REQ.match(req)
    if not m:
        raise ValueError(f"cannot parse requirement {req!r}")
    return normalize(m.group(1)), m.group(3).replace(" ", "")


def exact_pins(reqs: list[str], where: str) -> dict[str, str]:
    """{name: version} for requirements that must all be exact '==' pins."""
    pins: dict[str, str] = {}
    for req in reqs:
        name, spec = parse_requirement(req)
        assert re.fullmatch(r"==[^,<>=!~*]+", spec), f"{where}: {req!r} is not an exact == pin"
        version = spec[2:]
        assert pins.get(name, version) == version, f"{where}: {name} pinned twice, differently"
        pins[name] = version
    return pins


def load_pyproject(path: Path = PYPROJECT) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def pyproject_requirements(data: dict) -> list[str]:
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return reqs


def parse_environment_yml(text: str) -> dict:
    """Parse the small YAML subset environment.yml uses.

    Returns {"name": str, "channels": [...], "dependencies": [...], "pip": [...]}. Handles
    top-level `key: value` scalars, top-level block lists, and one nested `- pip:` list under
    `dependencies`. Comments and blank lines are ignored. Anything else raises ValueError so
    that a file this parser does not understand fails loudly instead of passing silently.
    """
    out: dict = {"name": None, "channels": [], "dependencies": [], "pip": []}
    section: str | None = None  # current top-level key whose list we are reading
    in_pip = False
    pip_indent = -1
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0:
            in_pip = False
            m = re.fullmatch(r"([A-Za-z_][\w-]*):\s*(.*)", body)
            if not m:
                raise ValueError(f"environment.yml:{lineno}: unexpected top-level line {raw!r}")
            key, value = m.group(1), m.group(2).strip()
            if value:
                out[key] = value.strip("'\"")
                section = None
            else:
                section = key
                out.setdefault(key, [])
            continue
        if not body.startswith("- "):
            raise ValueError(f"environment.yml:{lineno}: expected a list item, got {raw!r}")
        item = body[2:].strip().strip("'\"")
        if in_pip and indent > pip_indent:
            out["pip"].append(item)
            continue
        in_pip = False
        if section is None:
            raise ValueError(f"environment.yml:{lineno}: list item outside a section: {raw!r}")
        if section == "dependencies" and item == "pip:":
            in_pip, pip_indent = True, indent
            continue
        out[section].append(item)
    return out


def load_environment(path: Path = ENVIRONMENT) -> dict:
    return parse_environment_yml(path.read_text(encoding="utf-8"))


def environment_pins(env: dict) -> dict[str, str]:
    reqs = [r for r in env["pip"] if not r.startswith("-")]
    return exact_pins(reqs, "environment.yml")


# --------------------------------------------------------------------------- tests


def test_pyproject_pins_are_exact():
    exact_pins(pyproject_requirements(load_pyproject()), "pyproject.toml")


def check_pins_agree(project: dict[str, str], env: dict[str, str]) -> None:
    """AssertionError naming every package pinned in only one file, or at different versions."""
    missing = {k: v for k, v in project.items() if k not in env}
    extra = {k: v for k, v in env.items() if k not in project}
    differ = {k: (project[k], env[k]) for k in project.keys() & env.keys() if project[k] != env[k]}
    assert not missing, f"pinned in pyproject.toml but not in environment.yml: {missing}"
    assert not extra, f"pinned in environment.yml but not in pyproject.toml: {extra}"
    assert not differ, f"version mismatch (pyproject, environment.yml): {differ}"


def test_environment_pins_match_pyproject():
    project = exact_pins(pyproject_requirements(load_pyproject()), "pyproject.toml")
    check_pins_agree(project, environment_pins(load_environment()))


def test_environment_installs_package_editable_and_python():
    env = load_environment()
    assert env["name"] == "fia-kit"
    assert "-e ." in env["pip"]
    assert "pip" in env["dependencies"]
    assert any(d.startswith("python=") for d in env["dependencies"])


def test_torch_pinned_exactly():
    for where, pins in (
        ("pyproject.toml", exact_pins(load_pyproject()["project"]["dependencies"], "pyproject.toml")),
        ("environment.yml", environment_pins(load_environment())),
    ):
        assert pins.get("torch") == "2.13.0", f"{where}: torch must be pinned ==2.13.0"


@pytest.mark.parametrize("path", [PYPROJECT, ENVIRONMENT], ids=lambda p: p.name)
def test_no_ascend_only_packages(path: Path):
    if path == PYPROJECT:
        names = {parse_requirement(r)[0] for r in pyproject_requirements(load_pyproject())}
        names |= {parse_requirement(r)[0] for r in load_pyproject()["build-system"]["requires"]}
    else:
        env = load_environment()
        names = {parse_requirement(r)[0] for r in env["pip"] if not r.startswith("-")}
        names |= {normalize(re.split(r"[=<>!~ ]", d, maxsplit=1)[0]) for d in env["dependencies"]}
    bad = names & FORBIDDEN
    assert not bad, f"{path.name} lists Ascend-only packages {sorted(bad)}"


# ----------------------------------------------------- the checks themselves can fail

_GOOD_ENV = """\
name: fia-kit
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - torch==2.13.0  # comment
      - numpy==2.2.6
      - -e .
"""


def test_parser_reads_sample():
    env = parse_environment_yml(_GOOD_ENV)
    assert env["channels"] == ["conda-forge"]
    assert env["dependencies"] == ["python=3.11", "pip"]
    assert env["pip"] == ["torch==2.13.0", "numpy==2.2.6", "-e ."]
    assert environment_pins(env) == {"torch": "2.13.0", "numpy": "2.2.6"}


_SAMPLE_PROJECT = {"torch": "2.13.0", "numpy": "2.2.6"}


def test_mismatch_is_detected():
    check_pins_agree(_SAMPLE_PROJECT, environment_pins(parse_environment_yml(_GOOD_ENV)))  # agreeing files pass
    cases = {
        "version mismatch.*numpy.*2.2.6.*2.2.5": _GOOD_ENV.replace("numpy==2.2.6", "numpy==2.2.5"),
        "pyproject.toml but not in environment.yml.*numpy": _GOOD_ENV.replace("      - numpy==2.2.6\n", ""),
        "environment.yml but not in pyproject.toml.*scipy": _GOOD_ENV.replace("- -e .", "- scipy==1.0\n      - -e ."),
    }
    for message, text in cases.items():
        with pytest.raises(AssertionError, match=message):
            check_pins_agree(_SAMPLE_PROJECT, environment_pins(parse_environment_yml(text)))


def test_loose_pin_is_rejected():
    with pytest.raises(AssertionError, match="not an exact == pin"):
        exact_pins(["torch>=2.13.0"], "sample")


def test_unknown_yaml_is_rejected():
    with pytest.raises(ValueError):
        parse_environment_yml("name: x\n  stray: mapping\n")
