"""The rank sweep: one distilled student per (rank, seed), resumable and safe to run from several processes.

Layout of a run directory::

    config.json            the study's config (a rerun with a different one is refused)
    teacher.pt ...         see :mod:`effrank_utils.teacher`
    tasks/<task>.json      one finished task's row, written atomically (the source of truth)
    tasks/<task>.lock      held while a process trains that task (released by the kernel if it dies)
    tasks/<group>.state.pt resumable checkpoint of a group of students being trained
    teacher_cache/         fp16 teacher logits per epoch (``cache_teacher``; kd and logits losses)
    sweep.csv              all finished rows, sorted by (rank, seed), rebuilt atomically after every task

Every task is a function of (config, rank, seed) only; fused groups (``fuse > 1``) train several ranks of one
seed in lockstep on one batch stream and give the same rows as training them one by one.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import csv
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import STUDENT_FIELDS, TEACHER_FIELDS, StudyConfig, config_from_json, diff
from .data import ImageData, load_data_for, pipeline_for
from .distill import DistillationLoss
from .executors import make_executor, threads_per_task, train_group
from .factorize import count_parameters, factorize, max_rank, target_layers
from .models import build_model, resolve_device
from .presets import PRESETS, load_preset, parse_assignment
from .refine import next_ranks
from .storage import ensure_writable_dir, fault_point, file_lock, read_json, write_json, write_text
from .teacher import Teacher, train_teacher
from .teacher_cache import TeacherLogitCache, cache_key
from .training import Recipe, evaluate, fit

log = logging.getLogger(__name__)

SWEEP_CSV = "sweep.csv"
CONFIG_JSON = "config.json"
TASK_DIR = "tasks"
TEACHER_CACHE_DIR = "teacher_cache"
WORKER_FAILURE = "worker failed"
COLUMNS = ("rank", "seed", "status", "params", "teacher_params", "compression", "final_accuracy",
           "best_accuracy", "best_epoch", "zero_shot_accuracy", "epochs", "init", "loss", "seconds", "failure")
IDENTITY_FIELDS = TEACHER_FIELDS + STUDENT_FIELDS


@dataclass(frozen=True, order=True)
class Task:
    """One student: a rank and a seed."""

    rank: int
    seed: int

    @property
    def name(self) -> str:
        return f"r{self.rank:05d}_s{self.seed}"


def student_recipe(config: StudyConfig) -> Recipe:
    return Recipe(config.student_epochs, config.student_lr, config.student_weight_decay,
                  config.student_warmup_epochs, config.student_schedule)


# ----------------------------------------------------------------------------------------- run directory
def prepare_run(config: StudyConfig, run_dir: str | Path) -> Path:
    """Check that ``run_dir`` is writable and either new or made by the same study; save ``config.json``.

    Ranks, seeds, band, reference and execution settings may change between runs of one study (a sweep can be
    extended); the fields that define the teacher and the students may not.
    """
    run_dir = ensure_writable_dir(run_dir)
    path = run_dir / CONFIG_JSON
    if path.exists():
        saved = read_json(path)
        mismatch = diff(saved, config.to_dict(), IDENTITY_FIELDS)
        if mismatch:
            details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatch.items())
            raise ValueError(f"run_dir: {run_dir} holds a study with a different config ({details}). "
                             "Use a new run directory (or delete this one) instead of mixing results.")
    write_json(path, config.to_dict())
    return run_dir


def load_run_config(run_dir: str | Path) -> StudyConfig:
    """The config saved in a run directory."""
    return config_from_json(read_json(Path(run_dir) / CONFIG_JSON))


def finished_rows(run_dir: str | Path) -> list[dict]:
    """Rows of every finished task, sorted by (rank, seed)."""
    rows = [read_json(p) for p in sorted((Path(run_dir) / TASK_DIR).glob("r*_s*.json"))]
    return sorted(rows, key=lambda r: (r["rank"], r["seed"]))


def write_sweep_csv(run_dir: str | Path) -> Path:
    """Rebuild ``sweep.csv`` from the finished tasks (atomic; serialized between processes)."""
    run_dir = Path(run_dir)
    with file_lock(run_dir / TASK_DIR / "sweep.lock"):
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in finished_rows(run_dir):
            writer.writerow({k: row.get(k) for k in COLUMNS})
        return write_text(run_dir / SWEEP_CSV, out.getvalue())


def read_sweep(run_dir: str | Path) -> pd.DataFrame:
    """``sweep.csv`` as a DataFrame (empty with the right columns if nothing has finished)."""
    path = Path(run_dir) / SWEEP_CSV
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.read_csv(path)


# ---------------------------------------------------------------------------------------------- students
def _row(task: Task, config: StudyConfig, teacher_params: int, params: int, zero_shot: float, result,
         seconds: float) -> dict:
    best = max(result.history, key=lambda h: h["test_accuracy"], default=None)
    return {"rank": task.rank, "seed": task.seed, "status": "failed" if result.failure else "ok",
            "params": params, "teacher_params": teacher_params, "compression": teacher_params / params,
            "final_accuracy": result.final_accuracy, "best_accuracy": result.best_accuracy,
            "best_epoch": best["epoch"] if best else None, "zero_shot_accuracy": zero_shot,
            "epochs": len(result.history), "init": config.init, "loss": config.loss,
            "seconds": round(seconds, 3), "failure": result.failure}


def train_students(config: StudyConfig, teacher: torch.nn.Module, data: ImageData, tasks: Sequence[Task],
                   state_path: Path | None = None, cache_dir: Path | None = None) -> list[dict]:
    """Build, distill and evaluate the students of ``tasks`` (one seed) in lockstep; one row per task.

    The result for a task depends only on (config, rank, seed): the batch stream is seeded by the task seed
    and random student parts by (rank, seed). With ``config.cache_teacher``, the teacher's logits are read
    from (or written to) ``cache_dir``.
    """
    seeds = {t.seed for t in tasks}
    if len(seeds) != 1:
        raise ValueError(f"tasks: a fused group shares one batch stream, so one seed; got {sorted(seeds)}")
    (seed,) = seeds
    device = resolve_device(config.device)
    data = data.to(device)
    teacher = teacher.to(device).eval()
    pipeline = pipeline_for(config, data, config.student_batch_size)
    students = [factorize(teacher, t.rank, init=config.init, targets=config.targets,
                          seed=seed * 100_003 + t.rank).to(device) for t in tasks]
    zero_shot = [evaluate(s, pipeline, config.amp) for s in students]
    tic = time.perf_counter()
    cache = None
    if config.cache_teacher:
        if cache_dir is None:
            raise ValueError("cache_teacher: needs a cache directory (the sweep uses <run_dir>/teacher_cache)")
        cache = TeacherLogitCache(cache_dir, cache_key(teacher, pipeline, seed), data.train_labels.numel())
    loss = DistillationLoss(teacher, config.loss, config.kd_temperature, config.kd_alpha, cache)
    label = ",".join(str(t.rank) for t in tasks)
    results = fit(students, loss, pipeline, student_recipe(config), seed=seed, amp=config.amp,
                  state_path=state_path, checkpoint_every=config.checkpoint_every,
                  desc=f"rank {label} seed {seed}")
    seconds = (time.perf_counter() - tic) / len(tasks)
    teacher_params = count_parameters(teacher)
    return [_row(t, config, teacher_params, count_parameters(s), z, r, seconds)
            for t, s, z, r in zip(tasks, students, zero_shot, results)]


def validate_ranks(config: StudyConfig, teacher: torch.nn.Module, ranks: Iterable[int]) -> int:
    """Refuse ranks above the smallest targeted layer dimension before any student is trained; returns that
    dimension (the largest allowed rank)."""
    layers = target_layers(teacher, config.targets)
    if not layers:
        raise ValueError(f"targets: no {list(config.targets)} layers in the {config.model} teacher")
    limit = max_rank(layers)
    bad = [r for r in ranks if r > limit]
    if bad:
        raise ValueError(f"ranks: {bad} exceed the smallest targeted layer dimension; allowed: 1..{limit}")
    return limit


# ------------------------------------------------------------------------------------------------- sweep
def _groups(tasks: Sequence[Task], size: int) -> list[list[Task]]:
    """Tasks grouped by seed, then in chunks of ``size`` ranks."""
    groups = []
    for seed in sorted({t.seed for t in tasks}):
        same = sorted(t for t in tasks if t.seed == seed)
        groups += [same[i:i + size] for i in range(0, len(same), size)]
    return groups


def _result_path(run_dir: Path, task: Task) -> Path:
    return run_dir / TASK_DIR / f"{task.name}.json"


def is_finished(run_dir: Path, task: Task) -> bool:
    """A task is finished when its row exists, unless the row only says that its worker died."""
    path = _result_path(run_dir, task)
    return path.exists() and not str(read_json(path).get("failure") or "").startswith(WORKER_FAILURE)


def record_worker_failure(run_dir: Path, tasks: Sequence[Task], reason: str) -> None:
    """Rows for tasks whose worker died (after the executor's retries); a rerun trains them again."""
    for task in tasks:
        if not is_finished(run_dir, task):
            write_json(_result_path(run_dir, task), {"rank": task.rank, "seed": task.seed, "status": "failed",
                                                     "failure": f"{WORKER_FAILURE}: {reason}"})
    write_sweep_csv(run_dir)


def run_group(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, group: list[Task],
              blocking: bool) -> tuple[list[dict], list[Task]]:
    """Train the tasks of ``group`` that no other process holds and that are not finished. Returns the rows of
    the group's finished tasks that were not held elsewhere, and those held elsewhere (to be waited for)."""
    task_dir = run_dir / TASK_DIR
    with contextlib.ExitStack() as stack:
        mine, elsewhere = [], []
        for task in group:
            if stack.enter_context(file_lock(task_dir / f"{task.name}.lock", blocking=blocking)):
                if not is_finished(run_dir, task):
                    mine.append(task)
            else:
                elsewhere.append(task)
        if mine:
            log.info("training %s", ", ".join(t.name for t in mine))
            state = task_dir / ("state_" + "-".join(t.name for t in mine) + ".pt")
            rows = train_students(config, teacher.model, data, mine, state_path=state,
                                  cache_dir=run_dir / TEACHER_CACHE_DIR)
            for task, row in zip(mine, rows):
                write_json(_result_path(run_dir, task), row)
            write_sweep_csv(run_dir)
            state.unlink(missing_ok=True)
            fault_point("between_tasks")
    rows = [read_json(_result_path(run_dir, t)) for t in group
            if t not in elsewhere and _result_path(run_dir, t).exists()]
    return rows, elsewhere


def _announce(rows: Sequence[dict]) -> None:
    for row in rows:
        accuracy = row.get("final_accuracy")
        tqdm.write(f"rank {row['rank']:>4} seed {row['seed']}: {row['status']}"
                   + (f", final accuracy {accuracy:.4f}" if accuracy is not None else f" ({row.get('failure')})"))


def _run_tasks(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, tasks: Sequence[Task],
               on_rows: Callable[[pd.DataFrame], None] | None, executor: cf.Executor | None) -> None:
    """Run the unfinished ``tasks`` in fused groups, here or through ``executor``."""
    pending = [t for t in tasks if not is_finished(run_dir, t)]
    log.info("sweep: %d of %d tasks to run in %s", len(pending), len(tasks), run_dir)
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc="students", unit="student")
    groups = _groups(pending, config.fuse)
    try:
        if executor is None:
            _run_here(config, run_dir, teacher, data, groups, on_rows, bar)
        else:
            _dispatch(executor, config, run_dir, groups, on_rows, bar)
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


def _dispatch(executor: cf.Executor, config: StudyConfig, run_dir: Path, groups: list[list[Task]],
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
                record_worker_failure(run_dir, group, f"{type(exc).__name__}: {exc}"[:500])
                rows = [read_json(_result_path(run_dir, t)) for t in group]
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
    The teacher is trained first if the run has none. With ``sweep_mode="adaptive"``, ``ranks`` is the coarse
    grid and up to ``refine_rounds`` rounds add ranks where the region or knee is not yet bracketed to
    tolerance (:mod:`effrank_utils.refine`). ``on_rows(table)`` is called whenever rows land.

    Students run in this process (``config.executor="local"``), on Ray (``"ray"``), in spawned processes
    (``"processes"``), or on any ``concurrent.futures.Executor`` passed as ``executor`` (Dask, submitit, ...).
    """
    run_dir = prepare_run(config, run_dir)
    ranks = tuple(sorted(set(ranks if ranks is not None else config.ranks)))
    data = data if data is not None else load_data_for(config)
    with torch.device("meta"):  # the architecture alone, to check ranks before any training
        skeleton = build_model(config.replace(pretrained=False), data.num_classes, data.channels)
    max_rank = validate_ranks(config, skeleton, ranks)
    teacher = train_teacher(config, run_dir, data)
    (run_dir / TASK_DIR).mkdir(exist_ok=True)
    write_sweep_csv(run_dir)
    owned = executor is None and config.executor != "local"
    if owned:
        executor = make_executor(config.executor, config.workers, config.ray_address)
    try:
        _sweep_rounds(config, run_dir, teacher, data, ranks, max_rank, on_rows, executor)
    finally:
        if owned:
            executor.shutdown(wait=True)
    write_sweep_csv(run_dir)
    return read_sweep(run_dir)


def _sweep_rounds(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, ranks: Sequence[int],
                  max_rank: int, on_rows: Callable[[pd.DataFrame], None] | None, executor: cf.Executor | None
                  ) -> None:
    """The grid, then (adaptive mode) refinement rounds, each a batch of parallel tasks."""
    _run_tasks(config, run_dir, teacher, data, [Task(r, s) for s in config.seeds for r in ranks], on_rows,
               executor)
    if config.sweep_mode == "adaptive":
        reference = teacher.accuracy if config.reference == "teacher" else config.reference
        for round_ in range(1, config.refine_rounds + 1):
            done = read_sweep(run_dir)
            done = done[done["status"] == "ok"]
            new = next_ranks(done["rank"], done["final_accuracy"], reference, config.band, max_rank)
            if not new:
                break
            log.info("refinement round %d: adding ranks %s", round_, new)
            _run_tasks(config, run_dir, teacher, data, [Task(r, s) for s in config.seeds for r in new], on_rows,
                       executor)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m effrank_utils.sweep --preset demo --run-dir results/demo [--set field=value ...]``: the
    teacher (if needed) and the sweep, without notebooks. Several may run on one run directory at once."""
    parser = argparse.ArgumentParser(prog="python -m effrank_utils.sweep", description=main.__doc__)
    parser.add_argument("--preset", default="demo", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", type=parse_assignment, default=[],
                        metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_preset(args.preset, dict(args.overrides))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = run_sweep(config, args.run_dir)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
