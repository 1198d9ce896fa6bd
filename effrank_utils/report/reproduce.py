"""Run the study's notebooks headlessly (01 -> 02 -> 03, papermill) into ``<run folder>/notebooks``; what
``effrank reproduce`` calls. A failing or stuck notebook raises :class:`NotebookFailed` naming it and the cell;
the executed notebook (with the failing cell) is kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from ..records.run_folder import NOTEBOOK_DIR

NOTEBOOKS = ("01_train_teacher.ipynb", "02_rank_sweep.ipynb", "03_effective_rank_analysis.ipynb")
DEFAULT_NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CR = "\r"  # a progress line rewritten in place: only its last state is echoed
log = logging.getLogger(__name__)


class NotebookFailed(RuntimeError):
    """A notebook of the study raised; the message names it, the cell and the error."""

    def __init__(self, notebook: Path, error: Exception) -> None:
        cell = getattr(error, "exec_count", "?")
        name = getattr(error, "ename", type(error).__name__)
        value = getattr(error, "evalue", str(error))
        tail = ANSI.sub("", "".join(getattr(error, "traceback", [])[-2:]))
        super().__init__(f"notebook {notebook.name} failed in cell {cell}: {name}: {value}\n{tail}\n"
                         f"executed copy: {notebook}")
        self.notebook = notebook


#: Per-cell limits of :func:`run_notebooks`, in seconds, by notebook: generous where one cell trains the teacher
#: (01) or every student (02) -- minutes for ``demo``, under an hour for ``cifar10-cpu``; short for the analysis (03).
#: A stuck cell fails instead of waiting forever. Multi-hour GPU runs (the ``paper`` preset) need a larger limit
#: (``effrank reproduce --cell-timeout``) or none.
CELL_TIMEOUTS = {"01_train_teacher.ipynb": 2 * 3600, "02_rank_sweep.ipynb": 2 * 3600,
                 "03_effective_rank_analysis.ipynb": 600}


class NotebookTimedOut(NotebookFailed):
    """A cell of a notebook of the study ran past the per-cell timeout; the message names the notebook and cell."""

    def __init__(self, notebook: Path, error: Exception) -> None:
        import nbformat
        from papermill.exceptions import PapermillExecutionError

        nb = nbformat.read(notebook, as_version=4)
        started = [i for i, c in enumerate(nb.cells) if c.metadata.get("papermill", {}).get("start_time")]
        index = started[-1] if started else None
        count = nb.cells[index].get("execution_count") if index is not None else None
        reason = " ".join(str(error).splitlines()[:2])  # nbclient's "A cell timed out ... after N seconds." and why
        super().__init__(notebook, PapermillExecutionError(
            cell_index=index, exec_count=count if count is not None else "?", source="", ename=type(error).__name__,
            evalue=reason, traceback=[]))


class _EchoLines(io.TextIOBase):
    """Papermill's ``stdout_file``: a notebook's printed lines, prefixed with its name, shown as they arrive
    (through ``tqdm.write``, so papermill's progress bar stays below them). Only ``print`` output: widgets,
    tables and figures, and the kernel's stderr (logging, warnings), are left to the executed notebook."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            tqdm.write(f"{self.prefix}{line.rsplit(CR, 1)[-1]}", file=sys.stdout)
        return len(text)

    def close(self) -> None:
        if self._partial and not self.closed:
            self.write("\n")
        super().close()


def check_kernel(name: str | None, notebook_dir: Path = DEFAULT_NOTEBOOK_DIR) -> None:
    """Refuse a Jupyter kernel that is not installed (``None``: the notebooks' own), naming those that are."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    name = name or nbformat.read(notebook_dir / NOTEBOOKS[0], as_version=4).metadata.kernelspec.name
    installed = KernelSpecManager().find_kernel_specs()
    if name not in installed:
        raise ValueError(f"--kernel: no Jupyter kernel named {name!r} is installed; installed: "
                         f"{', '.join(sorted(installed)) or 'none'} (make install registers 'effrank')")


def sign_notebook(path: Path) -> None:
    """Trust an executed notebook (the Jupyter notary of this user, the one JupyterLab checks), so that its widget
    state and rich outputs are shown when it is opened. A notary that cannot be written only logs a warning."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        NotebookNotary().sign(nbformat.read(path, as_version=4))
    except OSError as exc:
        log.warning("could not sign %s: %s", path, exc)


def run_notebooks(preset: str, run_dir: Path, overrides: dict[str, Any], notebook_dir: Path = DEFAULT_NOTEBOOK_DIR,
                  kernel_name: str | None = None, progress: bool = True, *, notebooks: Sequence[str] = NOTEBOOKS,
                  cell_timeout: int | None | dict[str, int | None] = CELL_TIMEOUTS, confirm_factor: int = 2
                  ) -> list[Path]:
    """Execute ``notebooks`` (default: the numbered three) in order into ``run_dir/notebooks``; returns the executed
    copies, each signed as trusted.

    ``progress`` shows papermill's per-cell bar and the notebooks' printed lines (e.g. one line per student of the
    sweep) as they happen. A cell running longer than ``cell_timeout`` seconds (``None``: no limit; a dict: by
    notebook name) is stopped. Each notebook gets the parameters it declares among ``preset``, ``run_dir``,
    ``overrides`` and ``confirm_factor`` (notebook 02 ends by confirming the verdict under that multiple of the
    students' budget; 0: not).
    Raises :class:`NotebookFailed` (naming the notebook, the cell and the error) if one fails, and
    :class:`NotebookTimedOut` (a :class:`NotebookFailed`) if a cell times out.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    out_dir = run_dir / NOTEBOOK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    offered = {"preset": preset, "run_dir": str(run_dir.resolve()), "overrides": overrides,
               "confirm_factor": confirm_factor}
    executed = []
    for name in notebooks:
        output = out_dir / name
        declared = papermill.inspect_notebook(str(notebook_dir / name))
        parameters = {k: v for k, v in offered.items() if k in declared}
        timeout = cell_timeout.get(name) if isinstance(cell_timeout, dict) else cell_timeout
        with _EchoLines(f"[{Path(name).stem}] ") if progress else contextlib.nullcontext() as echo:
            try:
                papermill.execute_notebook(str(notebook_dir / name), str(output), parameters=parameters,
                                           kernel_name=kernel_name, cwd=str(notebook_dir), progress_bar=progress,
                                           stdout_file=echo, execution_timeout=timeout)
            except PapermillExecutionError as exc:
                raise NotebookFailed(output, exc) from None
            except CellTimeoutError as exc:
                raise NotebookTimedOut(output, exc) from None
        sign_notebook(output)
        executed.append(output)
    return executed
