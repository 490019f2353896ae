"""JupyterLab as `make lab` starts it, driven by headless Chromium: widgets render, a click updates them.

`kplab lab` (what `make lab` runs) is started on a free localhost port with a known token; it
brings the lab up first.  Debian's Chromium (Playwright cannot download its own browser here)
opens notebook 00, runs its first cells, clicks "send 100 requests" and waits for the backend
histogram to fill; and opens notebook 03, runs every cell, and finds the path picture with the
hops of the traced connection lit.  Screenshots are kept in artifacts/ (gitignored); the path
picture goes to docs/ only with `KPLAB_DOCS_SCREENSHOT=1` (a test run leaves the tree as checked out).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kplab.errors import KplabError
from kplab.lab import Lab

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = "/usr/bin/chromium"
LAB = "crsbr"
TOKEN = "kplab-browser-test"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[str]:
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make test-debs)")
    port = free_port()
    env = {**os.environ, "KPLAB_LAB": LAB, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    with open(tmp_path / "jupyter.log", "w") as log:
        notebooks = tmp_path / "labs"  # a copy: JupyterLab may autosave what the test runs
        shutil.copytree(REPO / "labs", notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        argv = [sys.executable, "-m", "kplab.cli", "lab", "--port", str(port), "--token", TOKEN,
                "--notebooks", str(notebooks)]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90s"
                time.sleep(0.5)
            assert f"{base}/lab?token={TOKEN}" in (tmp_path / "jupyter.log").read_text()
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            try:
                Lab(LAB).down()
            except KplabError:
                pass


@contextmanager
def chromium(tmp_path: Path, shot: str, timeout_ms: int) -> Iterator[Any]:
    """A page of headless Chromium; at the end, whatever happened, a screenshot in artifacts/`shot`."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            if browser.pages:
                browser.pages[-1].screenshot(path=str(ARTIFACTS / shot))
            browser.close()


def open_notebook(page: Any, url: str) -> None:
    """Open a notebook and wait for its kernel; a slow kernel start asks which kernel: accept, as a person would."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        accept.wait_for(timeout=5_000)
        accept.click()
    except PlaywrightTimeout:
        pass


def run_cell(page: Any, cell: Any) -> None:
    """Select `cell`, press the toolbar's run button, wait until it has an execution count."""
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputPrompt").click()
    page.locator("[data-command='notebook:run-cell-and-select-next']").first.click()
    page.wait_for_function("(el) => /\\[\\d+\\]/.test(el.querySelector('.jp-InputPrompt').innerText)",
                           arg=cell.element_handle(), polling=500)


def test_widgets_render_and_the_histogram_fills(jupyter: str, tmp_path: Path) -> None:
    with chromium(tmp_path, "browser-traffic.png", 60_000) as page:
        open_notebook(page, f"{jupyter}/lab/tree/00-welcome.ipynb?token={TOKEN}")
        code = page.locator(".jp-Notebook .jp-CodeCell")
        for text in ("start(", "Traffic("):  # `lab = start(...)` + topology, then the Traffic widget
            run_cell(page, code.filter(has_text=text).first)
        page.locator(".jp-OutputArea svg text", has_text="web-").first.wait_for()  # the topology
        traffic = page.locator(".kplab-traffic")
        traffic.wait_for()
        assert traffic.locator(".widget-hprogress").count() == 0
        traffic.get_by_role("button", name="send 100 requests").click()
        page.wait_for_function(
            "() => (document.querySelector('.kplab-traffic')?.innerText || '').includes('100 answered')")
        bars = traffic.locator(".widget-hprogress")
        assert bars.count() == 3  # one bar per web pod
        counts = [int(t) for t in traffic.locator(".widget-label").all_inner_texts() if t.strip().isdigit()]
        assert sum(counts) == 100 and all(c > 0 for c in counts), counts


def test_notebook_03_runs_and_the_path_picture_lights_the_traced_hops(jupyter: str, tmp_path: Path) -> None:
    with chromium(tmp_path, "browser-03.png", 600_000) as page:
        open_notebook(page, f"{jupyter}/lab/tree/03-iptables.ipynb?token={TOKEN}")
        code = page.locator(".jp-Notebook .jp-CodeCell")
        for i in range(code.count()):  # every code cell in turn, as a learner pressing Shift+Enter
            run_cell(page, code.nth(i))
        assert page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)").count() == 0
        picture = page.locator(".kplab-path").first
        picture.scroll_into_view_if_needed()
        lit = picture.locator("rect.entry.hit")
        keys = [lit.nth(i).get_attribute("data-key") for i in range(lit.count())]
        assert "nat|PREROUTING" in keys and "filter|FORWARD" in keys, keys
        assert picture.locator("text", has_text="DNAT").count() >= 1
        picture.screenshot(path=str(ARTIFACTS / "browser-path-03.png"))
        if os.environ.get("KPLAB_DOCS_SCREENSHOT") == "1":
            picture.screenshot(path=str(REPO / "docs" / "path-picture-03.png"))
