"""The rank sweep: one distilled student per (rank, seed), resumable and safe to run from several processes.

Every task is a function of (config, rank, seed) only; fused groups (``fuse > 1``) train several ranks of one
seed in lockstep on one batch stream and give the same rows as training them one by one. What lands where is
described in :mod:`effrank_utils.records.run_folder`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from ..base.storage import write_json
from ..estimate.refine import next_ranks
from ..lowrank.factorize import coverage
from ..lowrank.weight_spectra import write_spectra
from ..records.config import StudyConfig
from ..records.run_folder import (
    COVERAGE_JSON,
    TASK_DIR,
    WORKER_FAILURE,
    Task,
    finished_row,
    identity_of,
    read_row,
    read_sweep,
    write_row,
    write_sweep_csv,
)
from ..training.data import ImageData
from ..training.loading import load_data_for
from ..training.models import rank_limit
from .executors import make_executor, threads_per_task, train_group
from .preflight import preflight
from .students import run_group
from .teacher import Teacher, train_teacher
from .tensorboard import enabled as tensorboard_enabled
from .tensorboard import write_study_curve

log = logging.getLogger(__name__)


def _groups(tasks: Sequence[Task], size: int) -> list[list[Task]]:
    """Tasks grouped by seed, then in chunks of ``size`` ranks."""
    groups = []
    for seed in sorted({t.seed for t in tasks}):
        same = sorted(t for t in tasks if t.seed == seed)
        groups += [same[i:i + size] for i in range(0, len(same), size)]
    return groups


def record_worker_failure(run_dir: Path, tasks: Sequence[Task], identity: str, reason: str) -> None:
    """Rows for tasks whose worker died (after the executor's retries); a rerun trains them again."""
    for task in tasks:
        if finished_row(run_dir, task, identity) is None:
            write_row(run_dir, task, {"rank": task.rank, "seed": task.seed, "status": "failed",
                                      "failure": f"{WORKER_FAILURE}: {reason}"})
    write_sweep_csv(run_dir)


@dataclass
class SweepRun:
    """A sweep in flight: what every step of it needs, passed once. ``land`` is where finished rows arrive."""

    config: StudyConfig
    run_dir: Path
    teacher: Teacher
    data: ImageData
    executor: cf.Executor | None = None  # None: in this process
    on_rows: Callable[[pd.DataFrame], None] | None = None
    identity: str = field(init=False)
    bar: tqdm | None = field(default=None, init=False)  # the students' progress bar of the current round

    def __post_init__(self) -> None:
        self.identity = identity_of(self.config, self.data)

    def land(self, rows: Sequence[dict], done: int) -> None:
        """``done`` more tasks are over: count them, print their rows, tell ``on_rows``."""
        self.bar.update(done)
        for row in rows:
            accuracy = row.get("final_accuracy")
            tqdm.write(f"rank {row['rank']:>4} seed {row['seed']}: {row['status']}"
                       + (f", final accuracy {accuracy:.4f}" if accuracy is not None else f" ({row.get('failure')})"))
        if self.on_rows is not None and done:
            self.on_rows(read_sweep(self.run_dir))


def _run_tasks(run: SweepRun, tasks: Sequence[Task]) -> None:
    """Run the unfinished ``tasks`` in fused groups, here or through the run's executor."""
    pending = [t for t in tasks if finished_row(run.run_dir, t, run.identity) is None]
    log.info("sweep: %d of %d tasks to run in %s", len(pending), len(tasks), run.run_dir)
    groups = _groups(pending, run.config.fuse)
    with tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc="students", unit="student") as run.bar:
        (_run_here if run.executor is None else _dispatch)(run, groups)


def _run_here(run: SweepRun, groups: list[list[Task]]) -> None:
    """In this process; tasks another process holds are waited for, then run if it left them unfinished."""
    waiting: list[Task] = []
    for group in groups:
        rows, held = run_group(run.config, run.run_dir, run.teacher, run.data, group, blocking=False)
        waiting += held
        run.land(rows, len(group) - len(held))
    for group in _groups(waiting, run.config.fuse):
        rows, _ = run_group(run.config, run.run_dir, run.teacher, run.data, group, blocking=True)
        run.land(rows, len(group))


def _dispatch(run: SweepRun, groups: list[list[Task]]) -> None:
    """One executor task per group; rows land in the run folder from the workers. A group whose worker failed
    (after the executor's own retries) is recorded as failed; Ctrl-C cancels what has not finished."""
    threads = threads_per_task(run.executor)
    futures = {run.executor.submit(train_group, run.config.to_dict(), str(run.run_dir),
                                   [(t.rank, t.seed) for t in g], threads): g for g in groups}
    try:
        for future in cf.as_completed(futures):
            group = futures[future]
            try:
                rows = future.result()
            except Exception as exc:  # a dead worker or node, after retries
                log.warning("tasks %s failed in their worker: %s", [t.name for t in group], exc)
                record_worker_failure(run.run_dir, group, run.identity, f"{type(exc).__name__}: {exc}"[:500])
                rows = [row for t in group if (row := read_row(run.run_dir, t)) is not None]
            run.land(rows, len(group))
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling %d outstanding task group(s); rerun to resume",
                    sum(not f.done() for f in futures))
        for future in futures:
            future.cancel()
        run.executor.shutdown(wait=False, cancel_futures=True)
        raise


def run_sweep(config: StudyConfig, run_dir: str | Path, *, ranks: Sequence[int] | None = None,
              on_rows: Callable[[pd.DataFrame], None] | None = None, data: ImageData | None = None,
              executor: cf.Executor | None = None) -> pd.DataFrame:
    """Distill one student per (rank, seed) into ``run_dir`` and return the sweep table.

    Finished tasks are skipped (resume); tasks that another process is training are waited for, not repeated.
    The config passes the preflight checks and a run folder holding another study's teacher or rows is refused,
    both before anything is trained. The teacher is trained first if the run has none. With
    ``sweep_mode="adaptive"``, ``ranks`` is the coarse grid and up to ``refine_rounds`` rounds add ranks where the
    region or knee is not yet bracketed to tolerance (:mod:`effrank_utils.estimate.refine`). ``on_rows(table)``
    is called whenever rows land.

    Students run in this process (``config.executor="local"``), on Ray (``"ray"``), in spawned processes
    (``"processes"``), or on any ``concurrent.futures.Executor`` passed as ``executor`` (Dask, submitit, ...).
    """
    config = preflight(config if ranks is None else config.replace(ranks=sorted(set(ranks))))
    data = data if data is not None else load_data_for(config)
    teacher = train_teacher(config, run_dir, data)  # prepares the run folder first
    run_dir = Path(run_dir)
    write_json(run_dir / COVERAGE_JSON, coverage(teacher.model, config.targets))
    write_spectra(run_dir, teacher.model, config.targets)
    (run_dir / TASK_DIR).mkdir(exist_ok=True)
    write_sweep_csv(run_dir)
    owned = executor is None and config.executor != "local"
    if owned:
        executor = make_executor(config.executor, config.workers, config.ray_address)
    try:
        _sweep_rounds(SweepRun(config, run_dir, teacher, data, executor, on_rows))
    finally:
        if owned:
            executor.shutdown(wait=True)
    write_sweep_csv(run_dir)
    table = read_sweep(run_dir)
    if tensorboard_enabled(config):
        write_study_curve(run_dir, table, config.reference, config.band, teacher_accuracy=teacher.accuracy)
    return table


def _sweep_rounds(run: SweepRun) -> None:
    """The grid, then (adaptive mode) refinement rounds, each a batch of parallel tasks."""
    config = run.config
    _run_tasks(run, [Task(r, s) for s in config.seeds for r in config.ranks])
    if config.sweep_mode == "adaptive":
        limit = rank_limit(config, run.data.channels)
        for round_ in range(1, config.refine_rounds + 1):
            done = read_sweep(run.run_dir)
            done = done[done["status"] == "ok"]
            if done["rank"].nunique() < 2:  # the failures are in sweep.csv; a rerun trains them again
                log.warning("refinement stopped: %d rank(s) trained successfully and a curve needs 2; rerun the "
                            "sweep to train the failed students again", done["rank"].nunique())
                break
            new = next_ranks(done["rank"], done["final_accuracy"], config.reference, config.band, limit,
                             teacher_accuracy=run.teacher.accuracy)
            if not new:
                break
            log.info("refinement round %d: adding ranks %s", round_, new)
            _run_tasks(run, [Task(r, s) for s in config.seeds for r in new])
