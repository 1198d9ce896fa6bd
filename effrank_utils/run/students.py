"""Train the students of one group (a seed and some ranks) and land their rows in the run folder.

This is the unit of work of a sweep, run in the sweep's process or in a worker
(:mod:`effrank_utils.run.executors`): tasks another process holds are left to it, finished ones are skipped, and each
finished row is written atomically, stamped with the study's identity.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from ..base.seeds import derive_seed
from ..base.storage import fault_point, file_lock
from ..lowrank.factorize import count_parameters, factorize
from ..records.config import StudyConfig
from ..records.run_folder import (
    EPOCH_FIELDS,
    TASK_DIR,
    TEACHER_CACHE_DIR,
    Task,
    finished_row,
    identity_of,
    write_row,
    write_sweep_csv,
)
from ..training.data import ImageData, pipeline_for
from ..training.distill import DistillationLoss
from ..training.loop import FitResult, correct_predictions, evaluate, fit, recipe_for, share
from ..training.models import resolve_device
from ..training.teacher_cache import TeacherLogitCache, cache_key
from .band_stop import band_stop_rule
from .teacher import Teacher
from .tensorboard import Curves, curve_folder
from .tensorboard import enabled as tensorboard_enabled

log = logging.getLogger(__name__)


def _row(task: Task, config: StudyConfig, teacher_params: int, params: int, zero_shot: float, result: FitResult,
         seconds: float) -> dict:
    best = max(result.history, key=lambda h: h["test_accuracy"], default=None)
    return {"rank": task.rank, "seed": task.seed, "status": "failed" if result.failure else "ok",
            "params": params, "teacher_params": teacher_params, "compression": teacher_params / params,
            "final_accuracy": result.final_accuracy, "best_accuracy": result.best_accuracy,
            "best_epoch": best["epoch"] if best else None, "zero_shot_accuracy": zero_shot,
            "epochs": len(result.history), "stop_reason": result.stop_reason,
            "val_accuracy": result.history[-1].get("val_accuracy") if result.history else None,
            "init": config.init, "loss": config.loss, "seconds": round(seconds, 3), "failure": result.failure,
            "history": [{k: h[k] for k in EPOCH_FIELDS if k in h} for h in result.history]}


def train_students(config: StudyConfig, teacher: torch.nn.Module, data: ImageData, tasks: Sequence[Task],
                   state_path: Path | None = None, cache_dir: Path | None = None,
                   curves: Sequence[Curves] | None = None) -> list[dict]:
    """Build, distill and evaluate the students of ``tasks`` (one seed) in lockstep; one row per task.

    The result for a task depends only on (config, rank, seed): the batch stream is seeded by the task seed
    and random student parts by (seed, rank). With ``config.cache_teacher``, the teacher's logits are read
    from (or written to) ``cache_dir``. With ``config.band_stop``, students clearly outside the band stop early
    (:mod:`effrank_utils.run.band_stop`).
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
                          seed=derive_seed(seed, t.rank)).to(device) for t in tasks]
    zero_shot = [evaluate(s, pipeline, config.amp) for s in students]
    tic = time.perf_counter()
    cache = None
    if config.cache_teacher:
        if cache_dir is None:
            raise ValueError("cache_teacher: needs a cache directory (the sweep uses <run_dir>/teacher_cache)")
        cache = TeacherLogitCache(cache_dir, cache_key(teacher, pipeline, seed), data.train_labels.numel())
    loss = DistillationLoss(teacher, config.loss, config.kd_temperature, config.kd_alpha, cache)
    recipe = recipe_for(config, "student")
    stop_rule = teacher_val = None
    if config.band_stop:  # students are judged against the teacher image by image (a paired comparison)
        teacher_val = correct_predictions(teacher, pipeline, config.amp, split="val")
        stop_rule = band_stop_rule(share(teacher_val), config.band, config.band_stop, recipe,
                                   validation_size=teacher_val.numel())
    label = ",".join(str(t.rank) for t in tasks)
    def on_epoch(_: int, results: list[FitResult]) -> None:
        for model_curves, result in zip(curves or (), results):
            model_curves.update(result.history)

    results = fit(students, loss, pipeline, recipe, seed=seed, amp=config.amp, state_path=state_path,
                  state_tag=identity_of(config, data), on_epoch=on_epoch, checkpoint_every=config.checkpoint_every,
                  desc=f"rank {label} seed {seed}", compile=config.compile, stop_rule=stop_rule,
                  val_reference=teacher_val)
    seconds = (time.perf_counter() - tic) / len(tasks)
    teacher_params = count_parameters(teacher)
    return [_row(t, config, teacher_params, count_parameters(s), z, r, seconds)
            for t, s, z, r in zip(tasks, students, zero_shot, results)]


def run_group(config: StudyConfig, run_dir: Path, teacher: Teacher, data: ImageData, group: list[Task],
              blocking: bool) -> tuple[list[dict], list[Task]]:
    """Train the tasks of ``group`` that no other process holds and that are not finished. Returns the rows of
    the group's finished tasks that were not held elsewhere, and those held elsewhere (to be waited for)."""
    task_dir = run_dir / TASK_DIR
    identity = identity_of(config, data)
    with contextlib.ExitStack() as stack:
        mine, elsewhere = [], []
        for task in group:
            if stack.enter_context(file_lock(task_dir / f"{task.name}.lock", blocking=blocking)):
                if finished_row(run_dir, task, identity) is None:
                    mine.append(task)
            else:
                elsewhere.append(task)
        if mine:
            log.info("training %s", ", ".join(t.name for t in mine))
            state = task_dir / ("state_" + "-".join(t.name for t in mine) + ".pt")
            curves = [Curves(curve_folder(run_dir, t)) for t in mine] if tensorboard_enabled(config) else []
            try:
                rows = train_students(config, teacher.model, data, mine, state_path=state,
                                      cache_dir=run_dir / TEACHER_CACHE_DIR, curves=curves)
            finally:
                for model_curves in curves:
                    model_curves.close()
            for task, row in zip(mine, rows):
                write_row(run_dir, task, row | {"identity": identity})
            write_sweep_csv(run_dir)
            state.unlink(missing_ok=True)
            fault_point("between_tasks")
    rows = [finished_row(run_dir, t, identity) for t in group if t not in elsewhere]
    return [r for r in rows if r is not None], elsewhere
