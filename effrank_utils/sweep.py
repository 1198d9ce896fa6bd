"""The rank sweep: one distilled student per (rank, seed), resumable and safe to run from several processes.

Every task is a function of (config, rank, seed) only; fused groups (``fuse > 1``) train several ranks of one
seed in lockstep on one batch stream and give the same rows as training them one by one. What lands where is
described in :mod:`effrank_utils.run_folder`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .config import StudyConfig
from .data import ImageData, load_data_for
from .executors import make_executor, threads_per_task, train_group
from .factorize import coverage
from .models import rank_limit
from .refine import next_ranks
from .run_folder import (
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
from .spectra import write_spectra
from .storage import write_json
from .students import run_group
from .teacher import Teacher, train_teacher

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


def _announce(rows: Sequence[dict]) -> None:
    for row in rows:
        accuracy = row.get("final_accuracy")
        tqdm.write(f"rank {row['rank']:>4} seed {row['seed']}: {row['status']}"
                   + (f", final accuracy {accuracy:.4f}" if accuracy is not None else f" ({row.get('failure')})"))


def _run_tasks(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, tasks: Sequence[Task],
               on_rows: Callable[[pd.DataFrame], None] | None, executor: cf.Executor | None) -> None:
    """Run the unfinished ``tasks`` in fused groups, here or through ``executor``."""
    identity = identity_of(config, data)
    pending = [t for t in tasks if finished_row(run_dir, t, identity) is None]
    log.info("sweep: %d of %d tasks to run in %s", len(pending), len(tasks), run_dir)
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc="students", unit="student")
    groups = _groups(pending, config.fuse)
    try:
        if executor is None:
            _run_here(config, run_dir, teacher, data, groups, on_rows, bar)
        else:
            _dispatch(executor, config, run_dir, identity, groups, on_rows, bar)
    finally:
        bar.close()


def _run_here(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, groups: list[list[Task]],
              on_rows: Callable[[pd.DataFrame], None] | None, bar: tqdm) -> None:
    """In this process; tasks another process holds are waited for, then run if it left them unfinished."""
    waiting: list[Task] = []
    for group in groups:
        rows, held = run_group(config, run_dir, teacher, data, group, blocking=False)
        waiting += held
        bar.update(len(group) - len(held))
        _announce(rows)
        if on_rows is not None and len(held) < len(group):
            on_rows(read_sweep(run_dir))
    for group in _groups(waiting, config.fuse):
        rows, _ = run_group(config, run_dir, teacher, data, group, blocking=True)
        bar.update(len(group))
        _announce(rows)
        if on_rows is not None:
            on_rows(read_sweep(run_dir))


def _dispatch(executor: cf.Executor, config: StudyConfig, run_dir: Path, identity: str, groups: list[list[Task]],
              on_rows: Callable[[pd.DataFrame], None] | None, bar: tqdm) -> None:
    """One executor task per group; rows land in ``run_dir`` from the workers. A group whose worker failed
    (after the executor's own retries) is recorded as failed; Ctrl-C cancels what has not finished."""
    threads = threads_per_task(executor)
    futures = {executor.submit(train_group, config.to_dict(), str(run_dir), [(t.rank, t.seed) for t in g],
                               threads): g for g in groups}
    try:
        for future in cf.as_completed(futures):
            group = futures[future]
            try:
                rows = future.result()
            except Exception as exc:  # a dead worker or node, after retries
                log.warning("tasks %s failed in their worker: %s", [t.name for t in group], exc)
                record_worker_failure(run_dir, group, identity, f"{type(exc).__name__}: {exc}"[:500])
                rows = [row for t in group if (row := read_row(run_dir, t)) is not None]
            bar.update(len(group))
            _announce(rows)
            if on_rows is not None:
                on_rows(read_sweep(run_dir))
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling %d outstanding task group(s); rerun to resume",
                    sum(not f.done() for f in futures))
        for future in futures:
            future.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        raise


def run_sweep(config: StudyConfig, run_dir: str | Path, *, ranks: Sequence[int] | None = None,
              on_rows: Callable[[pd.DataFrame], None] | None = None, data: ImageData | None = None,
              executor: cf.Executor | None = None) -> pd.DataFrame:
    """Distill one student per (rank, seed) into ``run_dir`` and return the sweep table.

    Finished tasks are skipped (resume); tasks that another process is training are waited for, not repeated.
    A run folder holding another study's teacher or rows is refused before anything is trained. The teacher is
    trained first if the run has none. With ``sweep_mode="adaptive"``, ``ranks`` is the coarse grid and up to
    ``refine_rounds`` rounds add ranks where the region or knee is not yet bracketed to tolerance
    (:mod:`effrank_utils.refine`). ``on_rows(table)`` is called whenever rows land.

    Students run in this process (``config.executor="local"``), on Ray (``"ray"``), in spawned processes
    (``"processes"``), or on any ``concurrent.futures.Executor`` passed as ``executor`` (Dask, submitit, ...).
    """
    if ranks is not None:
        config = config.replace(ranks=sorted(set(ranks)))  # validated like any config
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
        _sweep_rounds(config, run_dir, teacher, data, on_rows, executor)
    finally:
        if owned:
            executor.shutdown(wait=True)
    write_sweep_csv(run_dir)
    return read_sweep(run_dir)


def _sweep_rounds(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData,
                  on_rows: Callable[[pd.DataFrame], None] | None, executor: cf.Executor | None) -> None:
    """The grid, then (adaptive mode) refinement rounds, each a batch of parallel tasks."""
    _run_tasks(config, run_dir, teacher, data, [Task(r, s) for s in config.seeds for r in config.ranks], on_rows,
               executor)
    if config.sweep_mode == "adaptive":
        reference = teacher.accuracy if config.reference == "teacher" else config.reference
        limit = rank_limit(config, data.channels)
        for round_ in range(1, config.refine_rounds + 1):
            done = read_sweep(run_dir)
            done = done[done["status"] == "ok"]
            new = next_ranks(done["rank"], done["final_accuracy"], reference, config.band, limit)
            if not new:
                break
            log.info("refinement round %d: adding ranks %s", round_, new)
            _run_tasks(config, run_dir, teacher, data, [Task(r, s) for s in config.seeds for r in new], on_rows,
                       executor)
