"""effrank: estimate the effective rank of Vision Transformers by low-rank factorization + distillation.

The public API (loaded on first use, so that importing the package, or its read side, loads no torch):

Study
    ``load_preset(name, overrides)``, ``make_config(values)`` -- a validated :class:`StudyConfig`;
    ``open_study(preset, overrides, run_dir)`` -- a config and its run folder.
Training
    ``load_data(dataset, ...)``, ``train_teacher(config, run_dir)``, ``factorize(teacher, rank, init, targets)``,
    ``run_sweep(config, run_dir)`` -- the resumable rank sweep; ``confirm(run_dir, factor)`` -- its deciding
    students again under a longer budget, and what moved.
Estimate
    ``effective_rank(ranks, accuracy, reference, band)`` -- region, knee and bootstrap intervals of any table;
    ``load_study(run_dir)``, ``analyze(study, band, reference)``, ``summary_text``, ``save_results``.

The layers, bottom to top (imports point down only): ``base``, ``estimate``, ``records``, ``lowrank``,
``training``, ``run`` and, beside it, the read side ``report``; the ``effrank`` command (``cli``) on top.
"""

import importlib
import logging
import sys

from .version import __version__

#: Each public name and the module that owns it.
_API = {
    "StudyConfig": "records.config", "load_preset": "run.entry", "make_config": "run.preflight",
    "open_study": "run.entry", "load_data": "training.data", "train_teacher": "run.teacher",
    "factorize": "lowrank.factorize", "run_sweep": "run.sweep", "confirm": "run.confirm",
    "effective_rank": "estimate.curves",
    "load_study": "report.study", "analyze": "report.analysis", "summary_text": "report.analysis",
    "save_results": "report.analysis",
}
__all__ = ["__version__", *_API]
COMMAND_MODULES = (f"{__name__}.__main__", f"{__name__}.cli")  # what ``python -m`` may run besides the package


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refuse_running_a_library_module() -> None:
    """``python -m effrank_utils.<module>`` of a library module would import it and do nothing: say what to run
    instead and exit non-zero. (While ``-m`` imports the package, ``sys.argv[0]`` is ``"-m"``.)"""
    argv = getattr(sys, "orig_argv", [])
    if sys.argv[:1] != ["-m"] or "-m" not in argv[1:-1]:
        return
    module = argv[argv.index("-m", 1) + 1]
    if module.startswith(f"{__name__}.") and module not in COMMAND_MODULES:
        sys.exit(f"{module} is a library module, not a command; run the effrank command instead "
                 f"(`effrank --help`, or `python -m {__name__} --help`)")


_refuse_running_a_library_module()
logging.getLogger(__name__).addHandler(logging.NullHandler())
