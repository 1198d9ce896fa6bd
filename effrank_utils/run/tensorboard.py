"""Live curves in TensorBoard: the teacher and every student write their loss, learning rate, validation and test
accuracy per epoch to ``<run>/tensorboard/<teacher|rank-R_seed-S>/`` through the training loop's per-epoch hook,
and a finished sweep writes its accuracy-vs-rank curve, region and knee to ``<run>/tensorboard/study/``. Watch
them with ``tensorboard --logdir <run>/tensorboard``.

A resumed model continues the same curves without duplicated steps: the first write of a process purges what an
interrupted run left (TensorBoard's ``purge_step``) and writes the whole restored history again, so the curves
always equal the model's records (``epochs.csv``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..estimate.curves import QUANTITY_LABELS, effective_rank
from ..records.config import StudyConfig
from ..records.run_folder import TENSORBOARD_DIR, Task

log = logging.getLogger(__name__)

SCALARS = ("loss", "lr", "val_accuracy", "test_accuracy")  # of each epoch's record
STUDY = "study"


def enabled(config: StudyConfig) -> bool:
    """``config.tensorboard``, or (None) whether the tensorboard package is installed."""
    if config.tensorboard is not None:
        if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard: the tensorboard package is not installed: pip install -e '.[tracking]' "
                             "(or set tensorboard=false)")
        return config.tensorboard
    return importlib.util.find_spec("tensorboard") is not None


def curve_folder(run_dir: str | Path, task: Task | None = None) -> Path:
    """``<run>/tensorboard/teacher`` (``task`` None) or ``<run>/tensorboard/rank-R_seed-S``."""
    name = "teacher" if task is None else f"rank-{task.rank}_seed-{task.seed}"
    return Path(run_dir) / TENSORBOARD_DIR / name


def _writer(folder: Path, purge_step: int):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(folder), purge_step=purge_step)


class Curves:
    """One model's curves: the history so far at the first :meth:`update` (after purging what an interrupted run
    left), then each new epoch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writer = None
        self.written = 0  # epochs of the history written by this process

    def update(self, history: Sequence[dict]) -> None:
        if len(history) == self.written:
            return
        if self.writer is None:
            self.writer = _writer(self.folder, purge_step=1)
        for record in history[self.written:]:
            for key in SCALARS:
                if record.get(key) is not None:
                    self.writer.add_scalar(key, record[key], record["epoch"])
        self.written = len(history)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_study_curve(run_dir: str | Path, table, reference: float | str, band: Sequence[float], *,
                      teacher_accuracy: float | None = None) -> None:
    """The sweep's accuracy against rank (mean over seeds; the step is the rank), and its region and knee, in
    ``<run>/tensorboard/study/`` (rewritten whole: a later sweep may add ranks). ``reference`` and
    ``teacher_accuracy`` are :func:`~effrank_utils.estimate.curves.effective_rank`'s."""
    ok = table[table["status"] == "ok"]
    if ok["rank"].nunique() < 2:
        return
    result = effective_rank(ok["rank"], ok["final_accuracy"], reference, band, teacher_accuracy=teacher_accuracy,
                            n_bootstrap=0)
    writer = _writer(Path(run_dir) / TENSORBOARD_DIR / STUDY, purge_step=0)
    try:
        for rank, accuracy in ok.groupby("rank")["final_accuracy"].mean().items():
            writer.add_scalar("accuracy_vs_rank", float(accuracy), int(rank))
            writer.add_scalar("normalized_accuracy_vs_rank", float(accuracy) / result.reference, int(rank))
        for name, value in (("region_low", result.region_low), ("region_high", result.region_high),
                            ("knee", result.knee)):
            if value is not None and np.isfinite(value):
                writer.add_scalar(QUANTITY_LABELS[name], value, 0)
    finally:
        writer.close()
