"""Run the whole study headlessly: notebooks 01 -> 02 -> 03 with papermill into ``results/<preset>/``.

    python -m effrank_utils.reproduce --preset demo [--set student_epochs=5 --set ranks=[1,2,4]] [--fresh]

The config is validated before anything runs. A failing notebook stops the run with a non-zero exit status and
its error; the executed notebook (with the failing cell) is kept in ``<run_dir>/notebooks/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from .presets import PRESETS, load_preset, parse_assignment

NOTEBOOKS = ("01_train_teacher.ipynb", "02_rank_sweep.ipynb", "03_effective_rank_analysis.ipynb")
DEFAULT_NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


def run_notebooks(preset: str, run_dir: Path, overrides: dict[str, Any], notebook_dir: Path = DEFAULT_NOTEBOOK_DIR,
                  kernel_name: str | None = None, progress: bool = True) -> list[Path]:
    """Execute the numbered notebooks in order into ``run_dir/notebooks``; returns the executed copies.

    Raises :class:`NotebookFailed` (naming the notebook, the cell and the error) if one fails.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"preset": preset, "run_dir": str(run_dir.resolve()), "overrides": overrides}
    executed = []
    for name in NOTEBOOKS:
        output = out_dir / name
        try:
            papermill.execute_notebook(str(notebook_dir / name), str(output), parameters=parameters,
                                       kernel_name=kernel_name, cwd=str(notebook_dir), progress_bar=progress)
        except PapermillExecutionError as exc:
            raise NotebookFailed(output, exc) from None
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
