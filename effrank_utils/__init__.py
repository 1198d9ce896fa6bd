"""effrank: estimate the effective rank of Vision Transformers by low-rank factorization + distillation."""

import logging
import sys

__version__ = "0.1.0"

COMMAND_MODULES = (f"{__name__}.__main__", f"{__name__}.cli")  # what ``python -m`` may run besides the package


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
