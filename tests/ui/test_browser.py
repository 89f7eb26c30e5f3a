"""A real browser runs the dashboard: JupyterLab on localhost, headless Chromium (Debian's
``chromium`` package, driven by Playwright with ``executable_path``), Run All on the default
model; the widgets must render and the results table must appear. A screenshot is saved to
a temporary folder, or to ``docs/dashboard.png`` with ``EDGEKIT_UPDATE_SCREENSHOT=1``.
``make setup`` installs Chromium (apt) and Playwright (pip) when they are missing.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "07_compare_dashboard.ipynb"
CHROMIUM = os.environ.get("EDGEKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# smaller settings than the notebook's own, so the browser run stays short
# (the sweep then covers cells the comparison measured: they come from the store, no Ray cluster starts)
FAST_PARAMETERS = {"VARIANTS": ["fp32", "nf4"], "MAX_TOKENS": 512, "LATENCY_RUNS": 1, "NEW_TOKENS": 4,
                   "GENERATE_TOKENS": 8, "SWEEP_MODELS": ["default"], "SWEEP_VARIANTS": ["fp32", "nf4"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(folder: Path) -> Path:
    """The dashboard notebook without outputs, its parameters cell followed by faster settings."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if "parameters" in cell.metadata.get("tags", []):
            cell.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in FAST_PARAMETERS.items())
    nb.metadata.pop("widgets", None)
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with token auth, serving a copy of the notebook."""
    pytest.importorskip("playwright.sync_api", reason="install the test extra: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (make setup does)")
    notebook = _notebook_copy(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "EDGEKIT_HOME": str(tmp_path / "edgekit-home")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.open_browser=False", "--allow-root", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "jupyter.log", "w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
            time.sleep(0.5)
    yield f"{base}/lab/tree/{notebook.name}?token={token}", tmp_path
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def _wait_for_idle_kernel(page, timeout_s: float = 120) -> None:
    """Wait until the notebook's kernel is idle, accepting the kernel dialog if Lab asks."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialog.get_by_role("button", name="Select").click()
        if page.get_by_text("Python 3 (ipykernel) | Idle").count():
            time.sleep(1)
            if not page.locator(".jp-Dialog").count():
                return
        time.sleep(0.5)
    raise AssertionError("the notebook's kernel did not become idle")


def test_dashboard_runs_in_a_real_browser(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    url, folder = jupyter_lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        try:
            page.goto(url)
            page.locator(".jp-Notebook").wait_for(timeout=90_000)
            page.keyboard.press("Control+b")  # hide the file browser: the notebook gets the width
            if page.locator(".jp-toast-button", has_text="No").count():
                page.locator(".jp-toast-button", has_text="No").first.click()
            _wait_for_idle_kernel(page)
            page.locator(".lm-MenuBar-item", has_text="Run").click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()

            dashboard = page.locator(".edgekit-dashboard")
            dashboard.wait_for(timeout=90_000)
            expect(dashboard.get_by_role("button", name=re.compile("Run (comparison|sweep)"))).to_be_visible()
            variants = dashboard.locator(".widget-select-multiple", has_text="variants").locator("select")
            expect(variants).to_be_visible()
            expect(dashboard.locator("select option", has_text="int4-g128").first).to_be_attached()
            # the run ends with a tick per variant and the results table inside the widget
            expect(dashboard.get_by_text("done", exact=True)).to_be_visible(timeout=300_000)
            table = dashboard.locator("table").first
            expect(table).to_be_visible()
            for variant in FAST_PARAMETERS["VARIANTS"]:
                expect(table.get_by_text(variant, exact=True).first).to_be_visible()
            expect(dashboard.locator("img").first).to_be_visible()  # the plots
            expect(page.get_by_text("report.html", exact=False).first).to_be_attached(timeout=120_000)
            assert dashboard.locator(".jupyter-widgets .widget-html-content:has-text('Error')").count() == 0
        finally:
            shot = (ROOT / "docs" / "dashboard.png" if os.environ.get("EDGEKIT_UPDATE_SCREENSHOT")
                    else folder / "dashboard.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            target = page.locator(".edgekit-dashboard")
            if target.count():
                target.scroll_into_view_if_needed()
                target.screenshot(path=str(shot))
            else:
                page.screenshot(path=str(shot), full_page=True)
            browser.close()
    assert shot.stat().st_size > 10_000
