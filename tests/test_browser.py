"""The interactive analysis in a real browser: Chromium (Debian's package) driven by Playwright, through
JupyterLab ("Run All" on notebook 03) and through the Voilà page of `effrank dashboard`.

Each test drags the band, switches the reference, types a value and toggles the axis, and checks that the summary
shows the numbers the analysis gives for those settings, that the figure is redrawn, and that the page logged no
JavaScript errors; the dashboard's also that opening, dragging and refreshing left the run folder as it was (every
file's content and mtime). Screenshots go to ``$EFFRANK_ARTIFACTS/browser`` (default ``test-artifacts/browser``).
``make test`` installs Chromium when it is missing; with ``EFFRANK_REQUIRE_BROWSER=1`` (set by ``.ci/run``) a
missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from effrank_utils.report import analysis
from effrank_utils.report.dashboard import TOKEN_ENV, dashboard_notebook, voila_command
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("EFFRANK_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
CHROMIUM = shutil.which("chromium")
GUARD = 180  # seconds: a guard against a hang, not a speed test

if CHROMIUM is None or not __import__("importlib").util.find_spec("playwright"):
    if os.environ.get("EFFRANK_REQUIRE_BROWSER") == "1":
        raise RuntimeError("the browser tests need Debian's chromium and playwright (make test installs both)")
    pytest.skip("chromium or playwright not installed (make test installs them)", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    run_sweep(load_preset("smoke", ranks=[1, 2, 4, 8, 16], seeds=[0, 1]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def study(run_dir):
    return load_study(run_dir)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process, ready once ``url`` answers; stopped afterwards (its output kept in ``log``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + GUARD
            while True:
                assert proc.poll() is None, f"server exited early: {log.read_text()[-2000:]}"
                try:
                    urllib.request.urlopen(url, timeout=5)
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"server never answered: {log.read_text()[-2000:]}"
                    time.sleep(0.5)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


OFFLINE = "net::ERR_NAME_NOT_RESOLVED"  # an external host (Voila's template links a CDN font sheet): no internet here


def new_page(browser) -> tuple[Page, list[str]]:
    """A page that collects JavaScript errors and failed requests to the local server."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and OFFLINE not in m.text else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url} ({request.failure})")
            if request.url.startswith("http://127.0.0.1") else None)
    page.set_default_timeout(GUARD * 1000)
    return page, errors


def summary(page: Page) -> str:
    return page.locator(".widget-html-content", has_text="Effective-rank region").first.inner_text()


def figure_src(page: Page) -> str:
    return page.locator("img.widget-image").first.get_attribute("src") or ""


def wait_until(read, done) -> str:
    """Poll ``read()`` until ``done(value)`` (the kernel recomputes, then the page updates)."""
    deadline = time.monotonic() + GUARD
    while not done(now := read()):
        assert time.monotonic() < deadline, f"the page never got there; it shows {now[:160]!r}"
        time.sleep(0.2)
    return now


def changed(read, before: str) -> str:
    return wait_until(read, lambda now: now != before)


def slider_band(page: Page) -> tuple[float, float]:
    readout = page.locator(".widget-readout").first.inner_text()
    lo, hi = (float(x) for x in re.findall(r"\d\.\d+", readout))
    return lo, hi


def expected(study, band, reference) -> str:
    """What the panel must show: the analysis for these settings, HTML-escaped as the widget shows it (the page
    shows it unescaped)."""
    return analysis.summary_text(study, analysis.analyze(study, band, reference))


def exercise_panel(page: Page, study, shots: str) -> None:
    """Drag, choose, type, toggle; check the numbers and the redraws after each."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".widget-html-content", has_text="Effective-rank region").first.scroll_into_view_if_needed()
    first = summary(page)
    assert first == expected(study, (0.85, 0.95), "teacher")
    page.screenshot(path=ARTIFACTS / f"{shots}_1_start.png")

    handle = page.locator(".noUi-handle-lower").first
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] - 60, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    figure = figure_src(page)
    dragged = changed(lambda: summary(page), first)
    band = slider_band(page)
    assert band[0] < 0.85 and band[1] == 0.95
    assert dragged == expected(study, band, "teacher")
    changed(lambda: figure_src(page), figure)
    page.screenshot(path=ARTIFACTS / f"{shots}_2_dragged.png")

    page.locator(".widget-dropdown select").first.select_option(label="best student")
    best = changed(lambda: summary(page), dragged)
    assert best == expected(study, band, "best_student")
    value = page.locator(".widget-text input").first
    changed(lambda: value.input_value(), "")  # the box shows the reference in use, rounded
    best_mean = study.table.groupby("rank")["final_accuracy"].mean().max()  # the best rank's mean over seeds
    assert float(value.input_value()) == pytest.approx(round(best_mean, 4))

    page.locator(".widget-dropdown select").first.select_option(label="typed value")
    value.fill("0.3")
    value.press("Enter")
    typed = wait_until(lambda: summary(page), lambda text: "reference accuracy 0.3000" in text)
    assert typed == expected(study, band, 0.3)
    page.screenshot(path=ARTIFACTS / f"{shots}_3_typed.png")

    figure = figure_src(page)
    page.locator(".widget-toggle-button", has_text="log").first.click()
    changed(lambda: figure_src(page), figure)
    assert summary(page) == typed  # display only: the numbers stay
    page.screenshot(path=ARTIFACTS / f"{shots}_4_log_axis.png")


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: Voila's page, when left, asks the server to shut its kernel down without the _xsrf cookie Voila never sets: refused
#: (Voila 0.5.13, with or without a token); the kernel stays until the server stops.
BEACON_REFUSED = "Failed to load resource: the server responded with a status of 403 (Forbidden)"


def test_jupyterlab_runs_notebook_03_and_the_panel_responds(browser, run_dir, study, tmp_path):
    import papermill

    from effrank_utils.cli import write_lab_settings
    write_lab_settings()  # what make install does: JupyterLab saves widget state, so a reopened panel renders
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    papermill.execute_notebook(ROOT / "notebooks" / "03_effective_rank_analysis.ipynb", lab_dir / "03.ipynb",
                               parameters={"run_dir": str(run_dir)}, prepare_only=True, progress_bar=False)
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_dir}", "--allow-root"]
    with server(command, f"http://127.0.0.1:{port}/api/status?token={token}", ARTIFACTS / "jupyterlab.log"):
        page, errors = new_page(browser)
        page.goto(f"http://127.0.0.1:{port}/lab/tree/03.ipynb?token={token}")
        try:
            page.wait_for_selector(".jp-Notebook")
            page.get_by_text("Python (effrank) | Idle").wait_for()  # the notebook's kernel is up
            if page.locator(".jp-Dialog").count():  # "Select Kernel", when JupyterLab asks
                page.locator(".jp-Dialog .jp-mod-accept").click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            page.wait_for_selector(".widget-html-content:has-text('Effective-rank region')")
            exercise_panel(page, study, "jupyterlab")
            page.keyboard.press("Control+s")  # widget state is saved with the notebook (make install's setting)
            wait_until(lambda: (lab_dir / "03.ipynb").read_text(), lambda text: WIDGET_STATE in text)
        finally:
            page.screenshot(path=ARTIFACTS / "jupyterlab_last.png")
        assert errors == []


def test_dashboard_page_serves_the_panel_without_code_and_writes_nothing(browser, run_dir, study, snapshot):
    before = snapshot(run_dir)
    port, token = free_port(), secrets.token_hex(16)
    with (dashboard_notebook(run_dir) as notebook,
          server(voila_command(notebook, port), f"http://127.0.0.1:{port}/login", ARTIFACTS / "voila.log",
                 env={**os.environ, TOKEN_ENV: token})):
        page, errors = new_page(browser)
        try:
            page.goto(f"http://127.0.0.1:{port}/?token={token}")
            page.wait_for_selector(".widget-html-content:has-text('Effective-rank region')")
            assert page.locator(".jp-InputArea-editor, .CodeMirror, .cm-editor").count() == 0  # no code cells
            exercise_panel(page, study, "dashboard")
            assert errors == []
            page.reload()  # runs the notebook again; the token is remembered (a cookie)
            page.wait_for_selector(".widget-html-content:has-text('Effective-rank region')")
        finally:
            page.screenshot(path=ARTIFACTS / "dashboard_last.png")
        assert set(errors) <= {BEACON_REFUSED}
    assert snapshot(run_dir) == before  # a view: opening, dragging and refreshing wrote nothing in the run folder
