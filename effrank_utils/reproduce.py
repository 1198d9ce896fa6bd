"""Run the whole study headlessly: notebooks 01 -> 02 -> 03 with papermill into ``results/<preset>/``.

    python -m effrank_utils.reproduce --preset demo [--set student_epochs=5 --set ranks=[1,2,4]] [--fresh]

The config is validated before anything runs. A failing notebook stops the run with a non-zero exit status and
its error; the executed notebook (with the failing cell) is kept in ``<run_dir>/notebooks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from .presets import PRESETS, load_preset, parse_assignment

NOTEBOOKS = ("01_train_teacher.ipynb", "02_rank_sweep.ipynb", "03_effective_rank_analysis.ipynb")
DEFAULT_NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
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


#: Per-cell limit of :func:`run_notebooks`: generous, since notebook 01 trains the teacher and notebook 02 all the
#: students in one cell each (minutes for ``demo``, under an hour for ``cifar10-cpu``); a stuck cell fails instead of
#: waiting forever. Multi-hour GPU runs (the ``paper`` preset) need ``cell_timeout=None``.
DEFAULT_CELL_TIMEOUT = 2 * 3600


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
                  cell_timeout: int | None = DEFAULT_CELL_TIMEOUT) -> list[Path]:
    """Execute ``notebooks`` (default: the numbered three) in order into ``run_dir/notebooks``; returns the executed
    copies, each signed as trusted.

    ``progress`` shows papermill's per-cell bar and the notebooks' printed lines (e.g. one line per student of the
    sweep) as they happen. A cell running longer than ``cell_timeout`` seconds (``None``: no limit) is stopped.
    Raises :class:`NotebookFailed` (naming the notebook, the cell and the error) if one fails, and
    :class:`NotebookTimedOut` (a :class:`NotebookFailed`) if a cell times out.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"preset": preset, "run_dir": str(run_dir.resolve()), "overrides": overrides}
    executed = []
    for name in notebooks:
        output = out_dir / name
        with _EchoLines(f"[{Path(name).stem}] ") if progress else contextlib.nullcontext() as echo:
            try:
                papermill.execute_notebook(str(notebook_dir / name), str(output), parameters=parameters,
                                           kernel_name=kernel_name, cwd=str(notebook_dir), progress_bar=progress,
                                           stdout_file=echo, execution_timeout=cell_timeout)
            except PapermillExecutionError as exc:
                raise NotebookFailed(output, exc) from None
            except CellTimeoutError as exc:
                raise NotebookTimedOut(output, exc) from None
        sign_notebook(output)
        executed.append(output)
    return executed


def headline(run_dir: Path) -> str:
    """The result in one line, from ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    facts = summary["facts"]
    lo, hi = summary["band"]
    return (f"effective-rank region [{facts['region_low']}, {facts['region_high']}] "
            f"({lo:.0%}-{hi:.0%} of {summary['reference']['kind']} accuracy {summary['reference']['accuracy']:.4f}), "
            f"knee {summary['knee']:.2f}; estimator: {summary['estimator']['init']} init, "
            f"{summary['estimator']['loss']} loss, {summary['estimator']['student_epochs']} epochs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effrank_utils.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help=f"one of: {', '.join(PRESETS)} (default: demo)")
    parser.add_argument("--results", default="results", type=Path, help="results root (default: results)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: <results>/<preset>)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[],
                        metavar="FIELD=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete the run directory first instead of resuming")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebooks' own, 'effrank')")
    args = parser.parse_args(argv)

    overrides = dict(args.overrides)
    try:
        config = load_preset(args.preset, overrides)  # validate everything before any compute
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = (args.run_dir or args.results / config.preset).resolve()
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"effrank: preset {config.preset!r} -> {run_dir}", flush=True)
    try:
        run_notebooks(args.preset, run_dir, overrides, kernel_name=args.kernel)
    except NotebookFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print(f"\nresults: {run_dir}\n  notebooks/  executed notebooks\n  teacher.pt  teacher checkpoint\n"
          f"  sweep.csv   one row per student\n  figures/    PNG and SVG figures\n  summary.json\n"
          f"{headline(run_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
