"""Stress test (not a CI test): execute notebook 03 (the interactive panel) headlessly under papermill N times.

    python bench/stress_notebooks.py [--runs 50] [--run-dir DIR] [--guard 120] [--jobs 1]
                                     [--out bench/stress_notebooks.json]

One small finished run is prepared first (the ``smoke`` preset through
:func:`effrank_utils.report.reproduce.run_notebooks`), or an existing run directory is reused. Each execution is a
``papermill`` process with its kernel in its own process group and no cell timeout; one that outlives the
wall-clock guard is killed and counted as a hang, one that exits non-zero or leaves no panel output as a failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import nbformat

from effrank_utils.report.reproduce import DEFAULT_NOTEBOOK_DIR, NOTEBOOKS, run_notebooks

log = logging.getLogger("stress_notebooks")

NOTEBOOK = NOTEBOOKS[-1]
KERNEL = "effrank"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PACKAGES = ("nbclient", "ipywidgets", "papermill", "ipykernel", "jupyter_client", "pyzmq", "nbformat")


@dataclass
class Outcome:
    """One execution of the notebook: ``ok``, ``failed`` or ``hung``, its wall time and why it failed."""

    index: int
    status: str
    seconds: float
    detail: str = ""


def register_kernel(jupyter_path: Path) -> None:
    """An ``effrank`` kernelspec under ``jupyter_path`` that runs this interpreter (what `make install` does)."""
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (effrank)", "language": "python"}))


def panel_shown(path: Path) -> bool:
    """Whether the executed notebook's last code cell displayed a widget (the panel)."""
    nb = nbformat.read(path, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    return any(WIDGET_VIEW in o.get("data", {}) for o in last.outputs)


def execute_once(index: int, run_dir: Path, out_dir: Path, guard: float) -> Outcome:
    """Execute the notebook once in a new process group; kill the group if it outlives ``guard`` seconds."""
    output = out_dir / f"run{index:03d}_{NOTEBOOK}"
    parameters = json.dumps({"preset": "smoke", "run_dir": str(run_dir), "overrides": {}})
    command = [sys.executable, "-m", "papermill", str(DEFAULT_NOTEBOOK_DIR / NOTEBOOK), str(output),
               "-y", parameters, "-k", KERNEL, "--cwd", str(DEFAULT_NOTEBOOK_DIR), "--no-progress-bar"]
    tic = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=guard)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # papermill and its kernel
        proc.communicate()
        return Outcome(index, "hung", time.perf_counter() - tic, f"killed after {guard:.0f} s")
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        return Outcome(index, "failed", seconds, text[-2000:])
    if not panel_shown(output):
        return Outcome(index, "failed", seconds, "the panel cell has no widget output")
    return Outcome(index, "ok", seconds)


def prepare_run(run_dir: Path | None, scratch: Path) -> Path:
    """A finished smoke run: ``run_dir`` if it holds a summary already, else a fresh one (all three notebooks)."""
    if run_dir is not None and (run_dir / "summary.json").exists():
        log.info("reusing the finished run %s", run_dir)
        return run_dir.resolve()
    run_dir = (run_dir or scratch / "run").resolve()
    log.info("preparing a smoke run in %s", run_dir)
    run_notebooks("smoke", run_dir, {}, progress=False)
    return run_dir


def summarize(outcomes: list[Outcome], guard: float) -> dict:
    """The JSON record: counts, wall time per run, failures and the versions of the execution stack."""
    seconds = [o.seconds for o in outcomes if o.status == "ok"]
    return {
        "notebook": NOTEBOOK, "runs": len(outcomes), "completed": len(seconds),
        "failures": sum(o.status == "failed" for o in outcomes), "hangs": sum(o.status == "hung" for o in outcomes),
        "guard_s": guard,
        "seconds_per_run": {"mean": statistics.fmean(seconds), "median": statistics.median(seconds),
                            "max": max(seconds)} if seconds else None,
        "seconds": [round(o.seconds, 2) for o in outcomes],
        "problems": [asdict(o) for o in outcomes if o.status != "ok"],
        "versions": {name: version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="executions of notebook 03 (default: 50)")
    parser.add_argument("--run-dir", type=Path, help="a finished run to reuse (default: a fresh smoke run)")
    parser.add_argument("--guard", type=float, default=120.0, help="seconds before a run counts as hung")
    parser.add_argument("--jobs", type=int, default=1, help="executions at a time (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/stress_notebooks.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="stress_notebooks_") as tmp:
        scratch = Path(tmp)
        register_kernel(scratch / "jupyter")
        os.environ["JUPYTER_PATH"] = str(scratch / "jupyter")  # this process's papermill and the children's
        run_dir = prepare_run(args.run_dir, scratch)
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(execute_once, i, run_dir, scratch, args.guard) for i in range(args.runs)]
            outcomes = []
            for future in cf.as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                log.info("run %3d: %-6s %6.1f s %s", outcome.index, outcome.status, outcome.seconds,
                         outcome.detail.splitlines()[-1] if outcome.detail else "")
    outcomes.sort(key=lambda o: o.index)
    record = summarize(outcomes, args.guard)
    timing = record["seconds_per_run"]
    print(f"\n{NOTEBOOK}: {record['runs']} runs, {record['completed']} completed, {record['failures']} failed, "
          f"{record['hangs']} hung (guard {args.guard:.0f} s)"
          + (f"; {timing['median']:.1f} s median, {timing['max']:.1f} s max per run" if timing else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
