"""Train the full-rank teacher (cross-entropy, AdamW), or load it from a run directory.

A run directory holds ``teacher.pt`` (weights + the config that built it, as JSON), ``teacher.json`` (the same
config and the final metrics, for people) and ``teacher_metrics.csv``. While training, ``teacher.state.pt``
holds a resumable checkpoint.
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

from .config import TEACHER_FIELDS, StudyConfig, diff
from .data import Batch, ImageData, load_data_for, pipeline_for
from .models import build_model, resolve_device
from .storage import file_lock, load_checkpoint, read_json, save_checkpoint, write_json, write_text
from .training import Recipe, fit

log = logging.getLogger(__name__)

TEACHER_FILE = "teacher.pt"
TEACHER_STATE_FILE = "teacher.state.pt"


@dataclass
class Teacher:
    """A trained teacher, its test accuracy and per-epoch history."""

    model: nn.Module
    accuracy: float
    history: list[dict]


def teacher_recipe(config: StudyConfig) -> Recipe:
    return Recipe(config.teacher_epochs, config.teacher_lr, config.teacher_weight_decay,
                  config.teacher_warmup_epochs, config.teacher_schedule)


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
    """Rebuild the teacher from ``run_dir/teacher.pt``; refuse a checkpoint made from another config."""
    path = Path(run_dir) / TEACHER_FILE
    payload = load_checkpoint(path)
    saved = json.loads(payload["config"])
    mismatch = diff(saved, config.to_dict(), TEACHER_FIELDS)
    if mismatch:
        details = "; ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in mismatch.items())
        raise ValueError(f"teacher checkpoint {path} was trained with a different config ({details}). "
                         "Use another run directory, or delete the checkpoint to retrain.")
    model = build_model(config.replace(pretrained=False), data.num_classes, data.channels)
    model.load_state_dict(payload["state_dict"])
    return Teacher(model.eval(), float(payload["accuracy"]), json.loads(payload["history"]))


def train_teacher(config: StudyConfig, run_dir: str | Path, data: ImageData | None = None) -> Teacher:
    """Train the teacher into ``run_dir`` (resuming an interrupted run), or load it if it is already there.

    Several processes may call this on one run directory: one trains, the others wait and then load.
    """
    run_dir = Path(run_dir)
    data = data if data is not None else load_data_for(config)
    with file_lock(run_dir / "teacher.lock"):
        if not (run_dir / TEACHER_FILE).exists():
            return _train(config, run_dir, data)
        teacher = load_teacher(config, run_dir, data)
        if not (run_dir / "teacher.json").exists() or read_json(run_dir / "teacher.json").get("status") != "done":
            _write_done(run_dir, config, teacher)  # a run killed between the two writes
        return teacher


def _write_done(run_dir: Path, config: StudyConfig, teacher: Teacher) -> None:
    write_json(run_dir / "teacher.json", {"config": config.to_dict(), "status": "done", "accuracy": teacher.accuracy,
                                          "epochs": len(teacher.history)})


def _train(config: StudyConfig, run_dir: Path, data: ImageData) -> Teacher:
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes, data.channels).to(device)
    pipeline = pipeline_for(config, data.to(device), config.teacher_batch_size)
    state_path = run_dir / TEACHER_STATE_FILE
    _check_state_matches(state_path, config)
    write_json(run_dir / "teacher.json", {"config": config.to_dict(), "status": "training"})
    (result,) = fit([model], CrossEntropy(), pipeline, teacher_recipe(config), seed=config.seed, amp=config.amp,
                    state_path=state_path, checkpoint_every=config.checkpoint_every, desc="teacher",
                    on_epoch=lambda _, results: write_text(run_dir / "teacher_metrics.csv",
                                                           history_csv(results[0].history)))
    if result.failure:
        raise FloatingPointError(f"teacher training failed: {result.failure}; lower teacher_lr")
    teacher = Teacher(model.eval(), result.final_accuracy, result.history)
    save_checkpoint(run_dir / TEACHER_FILE, {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "config": json.dumps(config.to_dict()), "accuracy": teacher.accuracy, "history": json.dumps(result.history)})
    _write_done(run_dir, config, teacher)
    state_path.unlink(missing_ok=True)
    log.info("teacher: test accuracy %.4f after %d epochs", teacher.accuracy, len(result.history))
    return teacher


def _check_state_matches(state_path: Path, config: StudyConfig) -> None:
    """A half-trained teacher from another config must not be resumed into this one."""
    meta = state_path.parent / "teacher.json"
    if state_path.exists() and meta.exists():
        saved = json.loads(meta.read_text())["config"]
        mismatch = diff(saved, config.to_dict(), TEACHER_FIELDS)
        if mismatch:
            raise ValueError(f"{state_path} is a partly trained teacher of another config "
                             f"({', '.join(mismatch)} differ); use another run directory")
