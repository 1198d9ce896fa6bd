"""The interactive analysis as a standalone web page (Voilà): notebook 03's outputs, no code cells.

The page is a view: notebook 03 runs with ``save=False`` from a temporary folder outside the run folder, so opening,
refreshing or dragging in it writes nothing there (``effrank analyze`` and ``effrank reproduce`` do). The server
listens on 127.0.0.1, on the port asked for or not at all, wants a token, and refuses a request whose ``Host`` header
is not local (DNS rebinding).
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .reproduce import DEFAULT_NOTEBOOK_DIR, NOTEBOOKS

DASHBOARD = "dashboard.ipynb"
DEFAULT_PORT = 8866
HOST = "127.0.0.1"
TOKEN_ENV = "JUPYTER_TOKEN"  # the server's token: in its environment, not on its command line (which others can read)
#: Voilà's own app sets ``allow_remote_access=True``, which skips jupyter_server's check of the Host header; its
#: ``tornado_settings`` undo that, from a config file only (on the command line a value is a string, "False" true).
VOILA_CONFIG = {"Voila": {"tornado_settings": {"allow_remote_access": False}}}


@contextlib.contextmanager
def dashboard_notebook(run_dir: str | Path) -> Iterator[Path]:
    """Yields a copy of the analysis notebook for ``run_dir`` that only reads it (``save=False`` injected; not
    executed), with Voilà's config beside it, in a temporary folder outside the run folder, removed afterwards."""
    import papermill
    with tempfile.TemporaryDirectory(prefix="effrank-dashboard-") as folder:
        notebook = Path(folder) / DASHBOARD
        papermill.execute_notebook(DEFAULT_NOTEBOOK_DIR / NOTEBOOKS[-1], notebook, prepare_only=True,
                                   parameters={"run_dir": str(Path(run_dir).resolve()), "save": False},
                                   progress_bar=False)
        (notebook.parent / "voila.json").write_text(json.dumps(VOILA_CONFIG))
        yield notebook


def voila_command(notebook: str | Path, port: int = DEFAULT_PORT) -> list[str]:
    """The Voilà server for a :func:`dashboard_notebook`: outputs only (code stripped), no browser opened, on
    127.0.0.1 at ``port`` (no other port tried), with the token in ``$JUPYTER_TOKEN`` (unset: one Voilà makes up and
    logs) and only the config beside the notebook (a user's voila.json is not read)."""
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.port_retries=0",
            f"--Voila.ip={HOST}", "--Voila.auto_token=True", f"--Voila.config_file_paths={Path(notebook).parent}",
            "--strip_sources=True", "--theme=light"]


def check_port(port: int) -> None:
    """Raise ``ValueError`` (one line naming the port and a free one) unless a server can listen on 127.0.0.1:port."""
    if not 0 < port < 65536:
        raise ValueError(f"--port: {port} is not a port number (1-65535)")
    error = _bind_error(port)
    if error is not None:
        why = "is already in use" if error.errno == errno.EADDRINUSE else f"cannot be used ({error.strerror})"
        raise ValueError(f"--port: {port} {why} on {HOST}; try --port {_free_port(port)}")


def _bind_error(port: int) -> OSError | None:
    """Why a server could not listen on 127.0.0.1:port (reusing an address in TIME_WAIT, as Voilà does), or None."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            return exc
    return None


def _free_port(taken: int) -> int:
    """The first free port after ``taken`` (among the next 100), else one the system picks."""
    for port in range(taken + 1, min(taken + 101, 65536)):
        if _bind_error(port) is None:
            return port
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]
