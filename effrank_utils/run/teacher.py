"""Train the full-rank teacher (cross-entropy, AdamW) -- or take one the user trained (``teacher_checkpoint``)
-- or load it from a run directory.

The run folder (:mod:`effrank_utils.records.run_folder`) holds ``teacher.pt`` (weights + the config and the data
fingerprint that made them), ``teacher.json`` (status and accuracy, for people) and ``teacher_metrics.csv``.
While training, ``teacher.state.pt`` holds a resumable checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base.storage import CorruptFile, file_lock, load_checkpoint, read_json, save_checkpoint, write_json, write_text
from ..records.config import TEACHER_FIELDS, StudyConfig
from ..records.run_folder import (
    TEACHER_FILE,
    TEACHER_JSON,
    TEACHER_LOCK,
    TEACHER_METRICS_CSV,
    TEACHER_STATE_FILE,
    check_same_study,
    identity_of,
    inputs_fingerprint,
    prepare_run,
)
from ..training.checkpoints import load_checkpoint_into
from ..training.data import Batch, ImageData, pipeline_for
from ..training.loading import load_data_for
from ..training.loop import evaluate, fit, recipe_for
from ..training.models import build_model, resolve_device
from ..training.preprocessing import preprocessing_for
from .provenance import environment
from .tensorboard import Curves, curve_folder
from .tensorboard import enabled as tensorboard_enabled

log = logging.getLogger(__name__)


LOADED = "loaded from teacher_checkpoint, not trained"


@dataclass
class Teacher:
    """A teacher, its test accuracy, its per-epoch history (empty when loaded) and where it came from."""

    model: nn.Module
    accuracy: float
    history: list[dict]
    source: str = "trained"  # or LOADED

    def describe(self) -> str:
        """``test accuracy 93.06% (trained, 60 epochs)`` / ``(loaded from teacher_checkpoint, not trained)``."""
        how = f"trained, {len(self.history)} epochs" if self.source == "trained" else self.source
        return f"test accuracy {self.accuracy:.2%} ({how})"


class CrossEntropy:
    """Objective for :func:`~effrank_utils.training.fit`: cross-entropy on the labels (nothing shared)."""

    def shared(self, batch: Batch) -> None:
        return None

    def loss(self, model: nn.Module, batch: Batch, shared: None) -> torch.Tensor:
        return F.cross_entropy(model(batch.x), batch.y)


def history_csv(history: list[dict]) -> str:
    """Per-epoch metrics as CSV text."""
    out = io.StringIO()
    if history:
        writer = csv.DictWriter(out, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return out.getvalue()


def load_teacher(config: StudyConfig, run_dir: str | Path, data: ImageData) -> Teacher:
    """Rebuild the teacher from ``run_dir/teacher.pt``; refuse a checkpoint made from another config or data,
    and name a damaged one."""
    path = Path(run_dir) / TEACHER_FILE
    payload = load_checkpoint(path, what_to_do="delete it (and teacher.json) to train the teacher again")
    try:
        saved = json.loads(payload["config"])
        state_dict, accuracy, history = payload["state_dict"], float(payload["accuracy"]), json.loads(
            payload["history"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f"{path}: not an effrank teacher checkpoint ({type(exc).__name__}: {exc}); delete it "
                          "(and teacher.json) to train the teacher again") from None
    check_same_study(f"teacher checkpoint {path}", saved, payload.get("data_fingerprint"), config,
                     inputs_fingerprint(config, data), TEACHER_FIELDS)
    model = build_model(config.replace(pretrained=False), data.num_classes, data.channels)
    model.load_state_dict(state_dict)
    return Teacher(model.eval(), accuracy, history, payload.get("source", "trained"))


def train_teacher(config: StudyConfig, run_dir: str | Path, data: ImageData | None = None) -> Teacher:
    """Train the teacher into ``run_dir`` (resuming an interrupted run) -- or, with ``teacher_checkpoint``, load
    the user's trained teacher and evaluate it --, or load it from ``run_dir`` if it is already there.

    The run folder is prepared first (refused if it holds another study). Several processes may call this on
    one run directory: one trains, the others wait and then load.
    """
    data = data if data is not None else load_data_for(config)
    run_dir = prepare_run(config, run_dir, inputs_fingerprint(config, data),
                          environment(resolve_device(config.device)), preprocessing_for(config, data).to_dict())
    with file_lock(run_dir / TEACHER_LOCK):
        if not (run_dir / TEACHER_FILE).exists():
            make = _load_given if config.teacher_checkpoint is not None else _train
            return make(config, run_dir, data)
        teacher = load_teacher(config, run_dir, data)
        if not (run_dir / TEACHER_JSON).exists() or read_json(run_dir / TEACHER_JSON).get("status") != "done":
            _write_status(run_dir, config, data, "done", teacher)  # a run killed between the two writes
        return teacher


def _write_status(run_dir: Path, config: StudyConfig, data: ImageData, status: str,
                  teacher: Teacher | None = None) -> None:
    record = {"config": config.to_dict(), "data_fingerprint": inputs_fingerprint(config, data), "status": status}
    if teacher is not None:
        record |= {"accuracy": teacher.accuracy, "epochs": len(teacher.history), "source": teacher.source}
    write_json(run_dir / TEACHER_JSON, record)


def _save(config: StudyConfig, run_dir: Path, data: ImageData, teacher: Teacher) -> None:
    save_checkpoint(run_dir / TEACHER_FILE, {
        "state_dict": {k: v.cpu() for k, v in teacher.model.state_dict().items()},
        "config": json.dumps(config.to_dict()), "data_fingerprint": inputs_fingerprint(config, data),
        "accuracy": teacher.accuracy, "history": json.dumps(teacher.history), "source": teacher.source})
    _write_status(run_dir, config, data, "done", teacher)


def _load_given(config: StudyConfig, run_dir: Path, data: ImageData) -> Teacher:
    """The user's trained teacher (``teacher_checkpoint``), checked against the architecture and evaluated on
    the test split: its accuracy is the reference."""
    device = resolve_device(config.device)
    model = build_model(config.replace(pretrained=False), data.num_classes, data.channels)
    load_checkpoint_into(model, config.teacher_checkpoint, f"the {config.model} model")
    model = model.to(device).eval()
    accuracy = evaluate(model, pipeline_for(config, data.to(device), config.eval_batch_size), config.amp)
    teacher = Teacher(model, accuracy, [], LOADED)
    _save(config, run_dir, data, teacher)
    log.info("teacher: %s", teacher.describe())
    return teacher


def _train(config: StudyConfig, run_dir: Path, data: ImageData) -> Teacher:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes, data.channels).to(device)
    pipeline = pipeline_for(config, data.to(device), config.teacher_batch_size)
    state_path = run_dir / TEACHER_STATE_FILE
    _write_status(run_dir, config, data, "training")
    curves = Curves(curve_folder(run_dir)) if tensorboard_enabled(config) else None

    def on_epoch(_: int, results: list) -> None:
        write_text(run_dir / TEACHER_METRICS_CSV, history_csv(results[0].history))
        if curves is not None:
            curves.update(results[0].history)

    try:
        (result,) = fit([model], CrossEntropy(), pipeline, recipe_for(config, "teacher"), seed=config.seed,
                        amp=config.amp, state_path=state_path, state_tag=identity_of(config, data, TEACHER_FIELDS),
                        checkpoint_every=config.checkpoint_every, desc="teacher", on_epoch=on_epoch,
                        compile=config.compile)
    finally:
        if curves is not None:
            curves.close()
    if result.failure:
        raise FloatingPointError(f"teacher training failed: {result.failure}; lower teacher_lr")
    teacher = Teacher(model.eval(), result.final_accuracy, result.history)
    _save(config, run_dir, data, teacher)
    state_path.unlink(missing_ok=True)
    log.info("teacher: test accuracy %.4f after %d epochs", teacher.accuracy, len(result.history))
    return teacher
