"""The teaching notebooks in a real browser: JupyterLab driven by headless Chromium through playwright.

One JupyterLab server (this Python, a free 127.0.0.1 port, a random token, temporary Jupyter config/data/runtime,
settings and workspace dirs, news and update checks off) serves a temporary copy of ``notebooks/`` (so autosave
never touches the committed notebooks). Debian's ``/usr/bin/chromium`` is driven by the playwright package
(``make browser-deps`` installs it; ``playwright install`` is never used).

* ``RUN_ALL`` notebooks (the explorer's, plus the graph-mode one) are run with Run > Run All Cells; the test waits
  for every code cell to finish, then checks that the widgets and plotly figures render, and, in the explorer,
  that choosing another sparse mode redraws the figure.
* The other notebooks are opened and their committed outputs render-checked (plotly figures where stored), which
  keeps the whole test near 70 s on two cores; nbval already executes every notebook. On stored (not re-run)
  outputs jupyterlab-plotly may print a "Javascript Error" from a redraw race; only those are tolerated.
* In every notebook no output may show a traceback or an error.

Screenshots go to ``test-artifacts/browser/`` (gitignored). Without Chromium or playwright the test skips, unless
the ``CI`` environment variable is set: there it must run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_ALL = ("03_masks_and_sparse_modes.ipynb", "08_graph_mode_and_profiling.ipynb")
EXPLORER_NOTEBOOK = "03_masks_and_sparse_modes.ipynb"
CELL_TIMEOUT_S = 120
# Lab settings: no news / update toasts, no autosave.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
ERROR_TEXT = re.compile(r"Traceback|\w*Error\b|Error displaying widget")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: `make browser-deps` installs Chromium)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET") -> object:
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base url, token) of a JupyterLab serving a copy of notebooks/."""
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} not found (Debian's chromium; install with `make browser-deps`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    home = tmp_path_factory.mktemp("jupyter")
    served = home / "notebooks"
    served.mkdir()
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, served / nb.name)
    shutil.copytree(ROOT / "examples", home / "examples")  # notebook 08 reads ../examples, as under `make lab`
    for name, values in SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1"}
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={served}", f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = (home / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=served)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (home / "lab.log").read_text()[-3000:]) from error
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab: tuple[str, str]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _shutdown_kernels(base: str, token: str) -> None:
    for session in _api(base, token, "/api/sessions"):
        _api(base, token, f"/api/sessions/{session['id']}", method="DELETE")


def _code_cell_count(name: str) -> int:
    cells = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]
    return sum(c["cell_type"] == "code" for c in cells)


def _has_plotly_output(name: str) -> bool:
    return "application/vnd.plotly.v1+json" in (NOTEBOOKS / name).read_text(encoding="utf-8")


def _open(page, base: str, token: str, name: str) -> None:
    # A workspace of its own, reset: Lab must not restore the tabs an earlier page left open.
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # Kernel started and idle: the toolbar's execution indicator says so.
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)


def _run_all(page, name: str) -> None:
    """Run > Run All Cells, then wait until every code cell shows an execution count (none pending)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    expected = _code_cell_count(name)
    page.wait_for_function(
        """(n) => {
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
            const done = prompts.filter(p => /\\[\\d+\\]/.test(p.textContent));
            return prompts.length === n && done.length === n;
        }""", arg=expected, timeout=CELL_TIMEOUT_S * 1000, polling=500)


def _errors(page, stored_outputs: bool) -> list[str]:
    """Error texts shown by outputs. With ``stored_outputs`` (an opened, not re-run notebook), jupyterlab-plotly's
    "Javascript Error" on a stored figure is left out: its renderer races a redraw against the first draw of
    several stored figures ("This element is not a Plotly plot" in the console); figures drawn by run-all count."""
    texts = page.eval_on_selector_all(
        '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output.jp-mod-error, '
        '.jp-OutputArea-output', "nodes => nodes.map(n => [n.getAttribute('data-mime-type') || '', "
        "n.className, n.textContent])")
    bad = []
    for mime, classes, text in texts:
        if stored_outputs and text.startswith("Javascript Error"):
            continue
        if "stderr" in mime or "jp-mod-error" in classes:
            if ERROR_TEXT.search(text):
                bad.append(text[:500])
        elif "Error displaying widget" in text or "Traceback (most recent call last)" in text:
            bad.append(text[:500])
    return bad


def _figure_state(page) -> str:
    """The SVG markup of every plotly figure on the page (changes when a figure is redrawn)."""
    return page.eval_on_selector_all(".js-plotly-plot .main-svg", "nodes => nodes.map(n => n.innerHTML).join('|')")


def _check_explorer(page, name: str) -> None:
    page.wait_for_selector(".jupyter-widgets", timeout=60_000)
    assert page.locator(".widget-dropdown").count() > 0, "the explorer's dropdowns did not render"
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    select = page.locator(".widget-dropdown", has=page.locator("label", has_text=re.compile(r"^sparse_mode$")))
    select = select.locator("select").first
    select.scroll_into_view_if_needed()
    before = _figure_state(page)
    current = select.input_value()
    options = [o for o in select.locator("option").evaluate_all("os => os.map(o => o.value)") if o != current]
    assert options, "the sparse_mode dropdown offers no other mode"
    select.select_option(options[0])
    page.wait_for_function("(before) => [...document.querySelectorAll('.js-plotly-plot .main-svg')]"
                           ".map(n => n.innerHTML).join('|') !== before", arg=before, timeout=60_000, polling=250)
    page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}-after-sparse-mode.png"))
    assert _figure_state(page) != before


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")))
def test_notebook_in_browser(name: str, lab: tuple[str, str], browser) -> None:
    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, base, token, name)
        if name in RUN_ALL:
            _run_all(page, name)
        text = (NOTEBOOKS / name).read_text(encoding="utf-8")
        if name == EXPLORER_NOTEBOOK:
            _check_explorer(page, name)
        elif "fia_kit.explore(" in text and name in RUN_ALL:
            page.wait_for_selector(".jupyter-widgets", timeout=60_000)
        if _has_plotly_output(name) or (name in RUN_ALL and ".figure()" in text):
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            assert page.locator(".js-plotly-plot .main-svg").count() > 0
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}.png"))
        errors = _errors(page, stored_outputs=name not in RUN_ALL)
        assert not errors, f"{name} shows errors in the browser:\n" + "\n---\n".join(errors)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}-failed.png"), full_page=True)
        raise
    finally:
        page.close()
        _shutdown_kernels(base, token)
