"""`effrank dashboard`: a view that leaves the run folder as it was, served on the port asked for or not at all,
behind a token and a check of the Host header. The page itself, in a real browser: tests/test_browser.py."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import nbformat
import papermill
import pytest

from effrank_utils import cli
from effrank_utils.cli import main
from effrank_utils.report.dashboard import HOST, TOKEN_ENV, dashboard_notebook, voila_command
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep

GUARD = 180  # seconds: a guard against a hang, not a speed test
PAGE = "Effective-rank region"  # printed by notebook 03, so on the page once it ran


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run folder, analyzed with a band of its own (the page must not overwrite it)."""
    run_dir = tmp_path_factory.mktemp("dashboard") / "run"
    run_sweep(load_preset("smoke", ranks=[1, 2, 4, 8, 16]), run_dir)
    assert main(["analyze", str(run_dir), "--band", "0.7", "0.8"]) == 0
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.socket() as other:
        other.bind((HOST, 0))
        other.listen()
        yield other.getsockname()[1]


def test_the_dashboard_notebook_only_reads_the_run_folder(run_dir, snapshot):
    before = snapshot(run_dir)
    with dashboard_notebook(run_dir) as notebook:
        folder = notebook.parent
        assert run_dir.resolve() not in notebook.resolve().parents
        executed = folder / "executed.ipynb"  # what the page runs, where it runs it
        papermill.execute_notebook(notebook, executed, kernel_name="python3", cwd=folder, progress_bar=False)
        printed = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells
                          if c.cell_type == "code" for o in c.outputs)
        assert PAGE in printed and "not saved (save=False)" in printed
    assert not folder.exists()  # the copy goes with the server
    assert snapshot(run_dir) == before
    assert json.loads((run_dir / "summary.json").read_text())["band"] == [0.7, 0.8]


def test_a_taken_port_is_refused_before_anything_starts(run_dir, monkeypatch, capsys):
    def started(*args, **kwargs):
        raise AssertionError("a server was started")

    monkeypatch.setattr(cli.subprocess, "call", started)
    monkeypatch.setattr(cli.subprocess, "Popen", started)
    with taken_port() as port:
        assert main(["dashboard", str(run_dir), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(rf"error: --port: {port} is already in use on {HOST}; try --port (\d+)\n", err)
    assert int(err.split()[-1]) != port


def test_voila_serves_on_the_port_asked_for_or_not_at_all(run_dir, tmp_path):
    log = tmp_path / "voila.log"
    with taken_port() as port, dashboard_notebook(run_dir) as notebook, log.open("w") as out:
        proc = subprocess.Popen(voila_command(notebook, port), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + GUARD
            while proc.poll() is None:
                assert "is running at" not in log.read_text(), f"Voila took another port: {log.read_text()[-500:]}"
                assert time.monotonic() < deadline, "Voila neither served nor stopped"
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait()
    assert proc.returncode != 0 and "is running at" not in log.read_text()


def get(port: int, path: str, host: str | None = None, headers: dict[str, str] | None = None
        ) -> http.client.HTTPResponse:
    """One GET to the server (redirects not followed), with ``host`` as the Host header; the response, body read."""
    connection = http.client.HTTPConnection(HOST, port, timeout=GUARD)
    connection.request("GET", path, headers={"Host": host or f"{HOST}:{port}", **(headers or {})})
    response = connection.getresponse()
    response.body = response.read().decode(errors="replace")
    connection.close()
    return response


def handshake(port: int, path: str, host: str | None = None) -> int:
    """The status of a WebSocket handshake with ``host`` as Host (and the Origin a page of that host sends)."""
    host = host or f"{HOST}:{port}"
    return get(port, path, host, {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                  "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                                  "Origin": f"http://{host}"}).status


def refused(response: http.client.HTTPResponse) -> bool:
    """Forbidden, or sent to the login page; never the page."""
    login = response.status == 302 and response.headers["Location"].startswith("/login")
    return (response.status == 403 or login) and PAGE not in response.body


def test_the_server_wants_its_token_and_a_local_host(run_dir, tmp_path):
    port, token = free_port(), secrets.token_hex(24)
    log = tmp_path / "voila.log"
    with dashboard_notebook(run_dir) as notebook, log.open("w") as out:
        proc = subprocess.Popen(voila_command(notebook, port), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, TOKEN_ENV: token})
        try:
            deadline = time.monotonic() + GUARD
            while True:
                assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
                try:
                    get(port, "/login")
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"the server never answered: {log.read_text()[-2000:]}"
                    time.sleep(0.5)
            evil = f"evil.example:{port}"
            assert refused(get(port, "/"))
            assert refused(get(port, "/?token=wrong"))
            assert refused(get(port, f"/?token={token}", host=evil))  # DNS rebinding: the token is no help
            page = get(port, f"/?token={token}")
            assert page.status == 200 and PAGE in page.body
            [kernel] = re.findall(r'"kernelId": "([0-9a-f-]{36})"', page.body)
            channels = f"/api/kernels/{kernel}/channels"
            assert handshake(port, channels) == 403
            assert handshake(port, f"{channels}?token={token}", host=evil) == 403
            assert handshake(port, f"{channels}?token={token}") == 101
        finally:
            proc.terminate()
            proc.wait()
