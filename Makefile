# fia-kit developer entry points.
#
#   make lab     JupyterLab on 127.0.0.1 serving notebooks/   (extra args: JUPYTER_ARGS=...)
#   make test    pytest + nbval over tests/ and notebooks/      (extra args: PYTEST_ARGS=...); needs browser-deps
#   make bench   benchmarks/run_all.py (or benchmarks/bench_reference.py)  (BENCH_ARGS=...)
#   make lint    ruff check fia_kit tests benchmarks notebooks/*.py (the notebook sources)
#   make notebooks  execute notebooks/NN_*.py into the committed .ipynb   (only some: NB="03 05"); needs browser-deps
#
# Which Python?
#   By default everything runs in a project virtualenv, .venv/, created on first use from
#   pyproject.toml (`python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'`) and
#   refreshed whenever pyproject.toml is newer than the stamp .venv/.installed.
#   BOOTSTRAP_PYTHON (default python3) is the interpreter that creates the venv.
#
#   To use an existing environment instead (e.g. an Ascend box where torch + torch_npu +
#   torchair already come with CANN and must not be replaced), override PYTHON:
#
#       make test PYTHON=/path/to/env/bin/python
#       make lab  PYTHON=$$(which python3)
#
#   Then no venv is created and no dependency is installed or upgraded; the only thing done
#   is `$(PYTHON) -m pip install -e . --no-deps` when `import fia_kit` fails from outside the
#   checkout. That environment must already provide the test/lab tools it needs
#   (pytest, nbval, hypothesis, jupyterlab, ...), e.g. via
#   `pip install -e '.[dev]'` on a machine where the pinned torch suits.

DEFAULT_PYTHON   := .venv/bin/python
PYTHON           ?= $(DEFAULT_PYTHON)
BOOTSTRAP_PYTHON ?= python3
PY               := $(PYTHON)

JUPYTER_ARGS ?=
PYTEST_ARGS  ?=
NB           ?=
BENCH_ARGS   ?=

# JupyterLab refuses to start as root without --allow-root (CI containers run as root).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

ifeq ($(PYTHON),$(DEFAULT_PYTHON))
ENV_READY := .venv/.installed
else
ENV_READY := external-env
endif

LINT_PATHS := $(wildcard fia_kit tests benchmarks notebooks/[0-9][0-9]_*.py)

.PHONY: lab test bench lint notebooks venv external-env browser-deps

venv: $(ENV_READY)

.venv/.installed: pyproject.toml
	$(BOOTSTRAP_PYTHON) -m venv .venv
	.venv/bin/python -m pip install -e '.[dev]'
	touch $@

# Existing interpreter: install only this package (editable, no deps) if it is not importable.
# The check drops the current directory from sys.path so the checkout itself does not count.
external-env:
	@$(PYTHON) -c "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.', os.getcwd())]; import fia_kit" 2>/dev/null \
	  || { echo "fia_kit not importable by $(PYTHON); installing it editable without deps"; \
	       $(PYTHON) -m pip install -e . --no-deps; }

# lab-settings/overrides.json: no "Jupyter news" question and no update check (also with an external PYTHON).
lab: $(ENV_READY)
	$(PY) -m jupyterlab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 --no-browser $(ALLOW_ROOT) \
	  --LabApp.app_settings_dir=$(CURDIR)/lab-settings $(JUPYTER_ARGS)

# Debian's chromium for tests/test_browser.py (driven by playwright; never `playwright install`). Without root/apt
# the install fails softly and the browser test skips (in CI, where CI is set, it fails instead).
browser-deps:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
	  || echo "chromium could not be installed: tests/test_browser.py will skip"

test: $(ENV_READY) browser-deps
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg $(PYTEST_ARGS) tests notebooks

bench: $(ENV_READY)
	@if [ -f benchmarks/run_all.py ]; then \
	  echo "$(PY) benchmarks/run_all.py $(BENCH_ARGS)"; $(PY) benchmarks/run_all.py $(BENCH_ARGS); \
	else \
	  echo "$(PY) benchmarks/bench_reference.py $(BENCH_ARGS)"; $(PY) benchmarks/bench_reference.py $(BENCH_ARGS); \
	fi

lint: $(ENV_READY)
	$(PY) -m ruff check $(LINT_PATHS)

# Execute the jupytext sources (notebooks/NN_name.py) into the committed notebooks; see notebooks/README.md.
notebooks: $(ENV_READY) browser-deps
	$(PY) -m fia_kit.notebook_tools build $(NB)
