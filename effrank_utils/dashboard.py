"""The interactive analysis as a standalone web page (Voilà): notebook 03's outputs, no code cells."""

from __future__ import annotations

import sys
from pathlib import Path

from .reproduce import DEFAULT_NOTEBOOK_DIR, NOTEBOOKS
from .run_folder import NOTEBOOK_DIR

DASHBOARD = "dashboard.ipynb"
DEFAULT_PORT = 8866


def dashboard_notebook(run_dir: str | Path) -> Path:
    """A copy of the analysis notebook with ``run_dir`` injected as its parameter (not executed), in
    ``<run_dir>/notebooks/dashboard.ipynb``."""
    import papermill
    run_dir = Path(run_dir).resolve()
    target = run_dir / NOTEBOOK_DIR / DASHBOARD
    target.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(DEFAULT_NOTEBOOK_DIR / NOTEBOOKS[-1], target, parameters={"run_dir": str(run_dir)},
                               prepare_only=True, progress_bar=False)
    return target


def voila_command(notebook: str | Path, port: int = DEFAULT_PORT) -> list[str]:
    """The Voilà server for ``notebook`` on localhost: outputs only (code stripped), no browser opened."""
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--strip_sources=True", "--theme=light"]
