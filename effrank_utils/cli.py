"""The effrank command: reproduce (the notebooks), sweep (no notebooks), confirm (the deciding students under a
longer budget), analyze, compare, dashboard (the analysis as a web page), export (to MLflow), fields (every config
field) and lab.

A user error (a bad parameter, a run folder of another study, a damaged file) ends the command with one line
on stderr and exit status 2, before any compute where it can be known then; Ctrl-C ends it with one line and
status 130 (rerun the same command to resume); failed students make it end with status 1 and a list.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .estimate.curves import DEFAULT_BAND
from .records.config import ROLES
from .records.run_folder import DEFAULT_RESULTS
from .report.dashboard import DEFAULT_PORT
from .report.reproduce import DEFAULT_NOTEBOOK_DIR
from .run.presets import DEFAULT_PRESET, PRESETS, parse_assignment

if TYPE_CHECKING:
    from .records.config import StudyConfig

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _log_options(parser: argparse.ArgumentParser, default: int) -> None:
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                        default=default, help="log warnings and errors only"
                                              + (" (default: progress too)" if default < logging.WARNING else ""))
    levels.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                        help="log everything, debugging details included")


def _study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None,
                        help=f"one of: {', '.join(PRESETS)} (default: the --config file's, else {DEFAULT_PRESET})")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="config fields from a JSON or YAML file; a run folder's config.json reruns that study "
                             "(--set still overrides)")
    parser.add_argument("--results", default=DEFAULT_RESULTS, type=Path,
                        help=f"results folder (default: {DEFAULT_RESULTS})")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: <results>/<preset>)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[],
                        metavar="FIELD=VALUE", help="override a config field (repeatable), e.g. --set ranks=[1,2,4] "
                                                    "--set amp=true; effrank fields lists them all")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the run folder first (only an effrank run folder inside --results)")


def _study_input(args: argparse.Namespace) -> tuple[str, dict]:
    """The preset and the field values the options give: the --config file's, then the --set ones."""
    from .run.entry import read_config_file
    given = read_config_file(args.config) if args.config else {}
    return args.preset or given.get("preset") or DEFAULT_PRESET, given | dict(args.overrides)


def _open(args: argparse.Namespace) -> tuple["StudyConfig", Path]:
    """The validated config and run folder of the options; ``--fresh`` deletes the folder, else a folder of
    another study (or not effrank's) is refused -- all before any compute."""
    from .records.run_folder import check_config, check_folder_path, remove_run_folder
    from .run.entry import open_study
    check_folder_path(args.results, "--results")
    config, run_dir = open_study(*_study_input(args), args.run_dir, args.results)
    run_dir = run_dir.resolve()
    check_folder_path(run_dir, "run_dir")
    if args.fresh:
        remove_run_folder(run_dir, args.results, {"teacher_checkpoint": config.teacher_checkpoint,
                                                  "data_root": config.data_root})
    check_config(run_dir, config)
    return config, run_dir


def _report_failures(run_dir: Path) -> int:
    from .records.run_folder import failed_tasks, read_sweep
    failed = failed_tasks(read_sweep(run_dir))
    if not failed:
        return 0
    print(f"error: {len(failed)} student(s) failed (those whose worker died are trained again by a rerun; a "
          "non-finite loss needs other settings, e.g. a lower student_lr, in a new run folder):", file=sys.stderr)
    for line in failed:
        print(f"  {line}", file=sys.stderr)
    return EXIT_FAILED


def _reproduce(args: argparse.Namespace) -> int:
    from .report.analysis import headline
    from .report.reproduce import CELL_TIMEOUTS, NotebookFailed, check_kernel, run_notebooks
    check_kernel(args.kernel)
    if args.confirm_factor:
        from .run.confirm import check_factor
        check_factor(args.confirm_factor, "--confirm-factor")
    config, run_dir = _open(args)
    print(f"effrank: preset {config.preset!r} -> {run_dir}", flush=True)
    try:
        timeout = CELL_TIMEOUTS if args.cell_timeout is None else (args.cell_timeout or None)
        preset, overrides = _study_input(args)
        run_notebooks(preset, run_dir, overrides, kernel_name=args.kernel, cell_timeout=timeout,
                      confirm_factor=args.confirm_factor)
    except NotebookFailed as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nresults: {run_dir}\n  notebooks/  executed notebooks\n  teacher.pt  teacher checkpoint\n"
          f"  sweep.csv   one row per student\n  figures/    PNG and SVG figures\n  summary.json\n"
          f"{headline(run_dir)}")
    _print_curves_hint(run_dir)
    return _report_failures(run_dir)


def _sweep(args: argparse.Namespace) -> int:
    from .run.sweep import run_sweep
    config, run_dir = _open(args)
    table = run_sweep(config, run_dir)
    print(table.drop(columns=["failure"]).to_string(index=False))
    _print_curves_hint(run_dir)
    return _report_failures(run_dir)


def _confirm(args: argparse.Namespace) -> int:
    from .records.run_folder import confirm_paths
    from .run.confirm import confirm
    print(confirm(args.run_dir, args.factor)["verdict"])
    print("saved:", *confirm_paths(args.run_dir, args.factor), sep="\n  ")
    return 0


def _print_curves_hint(run_dir: Path) -> None:
    from .records.run_folder import TENSORBOARD_DIR
    if (run_dir / TENSORBOARD_DIR).is_dir():
        print(f"curves: tensorboard --logdir {run_dir / TENSORBOARD_DIR}")


def _analyze(args: argparse.Namespace) -> int:
    from .report.analysis import analyze, save_results, study_convergence, study_settings, summary_text, training_free
    from .report.study import load_study
    study = load_study(args.run_dir)
    band, reference = study_settings(study, args.band, args.reference)
    result = analyze(study, band, reference)
    paths = save_results(study, result, reference)
    print(summary_text(study, result, study_convergence(study, band, reference)))
    print("\nTraining-free estimates beside the distilled one:")
    print(training_free(study, result).to_string(index=False, na_rep="", float_format=lambda x: f"{x:.2f}"))
    print("saved:", *paths, sep="\n  ")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report.compare import (
        budget_checks,
        check_out_dir,
        comparison_table,
        comparison_warnings,
        load_studies,
        save_comparison,
    )
    check_out_dir(args.out, args.run_dirs)
    compared = load_studies(args.run_dirs, args.labels)
    table = comparison_table(compared)
    shown = ["study", "model", "teacher_accuracy", "teacher_params", "r_lo", "r_hi", "knee", "converged", "init",
             "loss", "targets", "student_epochs", "student_patience"]
    print(table[shown].to_string(index=False))
    for line in comparison_warnings(compared):
        print(f"warning: {line}")
    for check in budget_checks(compared):
        print(f"budget: {check['verdict']}")
    print("saved:", *save_comparison(compared, args.out), sep="\n  ")
    return 0


def _reference(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _dashboard(args: argparse.Namespace) -> int:
    import secrets

    from .report.dashboard import HOST, TOKEN_ENV, check_port, dashboard_notebook, voila_command
    from .report.study import load_finished_study
    load_finished_study(args.run_dir)  # a finished study, or a one-line error before any server starts
    check_port(args.port)
    token = secrets.token_hex(24)
    with dashboard_notebook(args.run_dir) as notebook:
        print(f"serving the analysis of {args.run_dir} on http://{HOST}:{args.port}/?token={token} (Ctrl-C stops it)",
              flush=True)
        return subprocess.call(voila_command(notebook, args.port), env={**os.environ, TOKEN_ENV: token})


def _export(args: argparse.Namespace) -> int:
    from .report.export import export_mlflow, tracking_uri
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ValueError("--mlflow: MLflow is not installed: pip install -e '.[tracking]'") from None
    uri = tracking_uri(args.mlflow or None)
    run_id = export_mlflow(args.run_dir, uri, args.experiment)
    print(f"exported {args.run_dir} as MLflow run {run_id} (experiment {args.experiment!r}) at {uri}\n"
          f"  view it: mlflow ui --backend-store-uri {uri}")
    return 0


def _fields(args: argparse.Namespace) -> int:
    from .run.preflight import field_table
    table = field_table()
    if args.role:
        table = table[table["role"] == args.role]
    widths = {c: max(len(c), *(len(str(v)) for v in table[c])) for c in table.columns}
    for row in [dict(zip(table.columns, table.columns)), *table.to_dict(orient="records")]:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in table.columns).rstrip())
    return 0


WIDGETS_PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"


def write_lab_settings(prefix: str | Path = sys.prefix) -> Path:
    """Make JupyterLab (in the environment at ``prefix``) save widget state with the notebook, autosaves
    included, so that a reopened notebook shows its last panel instead of "Error displaying widget: model not
    found". Other overrides in the file are kept."""
    import json
    path = Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings.setdefault(WIDGETS_PLUGIN, {})["saveState"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def _lab(args: argparse.Namespace) -> int:
    write_lab_settings()
    print("live curves of a study: tensorboard --logdir results/<run>/tensorboard", flush=True)
    command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={args.notebook_dir}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return subprocess.call(command + list(args.jupyter_args))


def build_parser() -> argparse.ArgumentParser:
    """The effrank argument parser with its subcommands."""
    from .version import __version__
    parser = argparse.ArgumentParser(prog="effrank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"effrank {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reproduce = commands.add_parser("reproduce", help="run the study's notebooks headlessly (papermill)",
                                    description="Run notebooks 01 -> 02 -> 03 into <run folder>/notebooks; "
                                                "rerunning resumes.")
    _study_options(reproduce)
    reproduce.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebooks' own, 'effrank')")
    reproduce.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                           help="stop a notebook cell that runs longer (0: no limit; default: 2 h for the teacher "
                                "and sweep notebooks, 10 min for the analysis)")
    reproduce.add_argument("--confirm-factor", type=int, default=2, metavar="FACTOR",
                           help="train the students deciding r_lo, r_hi and the knee again under FACTOR times the "
                                "budget (effrank confirm) before the analysis; 0: skip (default: 2)")
    reproduce.set_defaults(run=_reproduce)

    sweep = commands.add_parser("sweep", help="train the teacher (if needed) and the students, without notebooks",
                                description="Several may run on one run folder at once: they share the work.")
    _study_options(sweep)
    sweep.set_defaults(run=_sweep)

    confirm = commands.add_parser("confirm", help="train the students deciding r_lo, r_hi and the knee again under a "
                                  "longer budget and check what moved",
                                  description="The students that bracket r_lo, r_hi and the knee of a finished study "
                                              "are trained again with FACTOR times its patience and epoch cap (in "
                                              "RUN_DIR/confirm/xFACTOR/, with the study's teacher); r_lo, r_hi and "
                                              "the knee are held to the convergence tolerance. Rerunning resumes.")
    confirm.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    confirm.add_argument("--factor", type=int, default=2, help="multiple of the students' budget (default: 2)")
    confirm.set_defaults(run=_confirm)

    analyze = commands.add_parser("analyze", help="region, knee, summary.json and figure of a run folder")
    analyze.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    analyze.add_argument("--band", type=float, nargs=2, metavar=("LO", "HI"),
                         help="fractions of the reference accuracy (default: the study's, e.g. %s %s)" % DEFAULT_BAND)
    analyze.add_argument("--reference", type=_reference, default=None,
                         help="teacher, best_student or a number (default: the study's)")
    analyze.set_defaults(run=_analyze)

    compare = commands.add_parser("compare", help="several run folders side by side: table, figure, warnings",
                                  description="Overlaid normalized curves with regions and knees, a table, and a "
                                              "warning for every estimator setting the studies do not share.")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument("--labels", nargs="+", default=None, help="one per run folder (default: folder names)")
    compare.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "comparison",
                         help=f"where comparison.json and figures/ go (default: {DEFAULT_RESULTS / 'comparison'})")
    compare.set_defaults(run=_compare)

    dashboard = commands.add_parser("dashboard", help="serve a run folder's interactive analysis as a web page",
                                    description="Notebook 03 for RUN_DIR as a standalone page (Voila): outputs and "
                                                "the interactive panel, no code cells, on localhost, at the printed "
                                                "URL (it holds the access token). The page only reads RUN_DIR.")
    dashboard.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    dashboard.add_argument("--port", type=int, default=DEFAULT_PORT,
                           help=f"default: {DEFAULT_PORT}; a port in use is refused, not replaced")
    dashboard.set_defaults(run=_dashboard)

    export = commands.add_parser("export", help="file a run folder's study in an experiment tracker (MLflow)",
                                 description="One MLflow run per study: config as parameters and tags, region, knee "
                                             "and convergence as metrics, accuracy against rank as a series, "
                                             "summary.json, sweep.csv and the figures as artifacts. Exporting again "
                                             "updates the same run.")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--mlflow", nargs="?", const="", required=True, metavar="TRACKING_URI",
                        help="an MLflow tracking URI (e.g. sqlite:///mlflow.db) or a local folder (default: mlruns/)")
    export.add_argument("--experiment", default="effrank", help="the MLflow experiment (default: effrank)")
    export.set_defaults(run=_export)

    fields = commands.add_parser("fields", help="every config field: role, type, default, allowed values, meaning",
                                 description="The fields --set, --config and the notebooks' overrides accept, from "
                                             "the schema the validation uses.")
    fields.add_argument("--role", choices=sorted(ROLES), help="only the fields of this role")
    fields.set_defaults(run=_fields)

    lab = commands.add_parser("lab", help="open JupyterLab on the notebooks")
    lab.add_argument("--notebook-dir", type=Path, default=DEFAULT_NOTEBOOK_DIR, help=f"default: {DEFAULT_NOTEBOOK_DIR}")
    lab.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="passed on to jupyter lab")
    lab.set_defaults(run=_lab)
    for name, command in commands.choices.items():
        _log_options(command, logging.INFO if name in ("reproduce", "sweep", "confirm") else logging.WARNING)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .training.data import DatasetNotAvailable
    from .training.models import WeightsNotAvailable
    return ValueError, FileNotFoundError, DatasetNotAvailable, WeightsNotAvailable


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``effrank`` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        if isinstance(exc, FloatingPointError):  # training diverged: the message says which setting to change
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = Path(exc.filename).parent if exc.filename else "the run folder"
            print(f"error: no space left on the device while writing in {where}; free some space and rerun the "
                  "same command: it resumes where it stopped", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
