"""The study's configuration: one flat, frozen record, validated before any compute starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .curves import REFERENCE_CHOICES, validate_band

NORMALIZATIONS = ("dataset", "imagenet")
DEVICES = ("auto", "cpu", "cuda")
SWEEP_MODES = ("grid", "adaptive")
CUSTOM_PRESET = "custom"


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study. Presets fill it; any field can be overridden by name."""

    preset: str = "custom"
    # data
    dataset: str = "digits"
    data_root: str | None = None       # cifar10/cifar100: torchvision root; imagefolder: folder with train/ test/
    download: bool = False
    train_subset: int | None = None    # stratified subset of the training split
    crop_padding: int = 0              # random crop with this zero padding (0: off)
    hflip: bool = False
    normalization: str = "dataset"     # per-channel stats of the training split, or ImageNet's
    validation_fraction: float = 0.0  # of the training split, held out to decide early stopping (0: none)
    # model
    model: str = "small_vit"            # small_vit, vit_b_32 (torchvision) or any timm model name
    pretrained: bool = False
    teacher_checkpoint: str | None = None  # a trained teacher's weights (state_dict): loaded, not trained
    image_size: int = 8                # model input size; batches are resized to it when it differs
    patch_size: int = 2                # small_vit only, as are the next four
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # teacher
    teacher_epochs: int = 60
    teacher_lr: float = 1e-3
    teacher_weight_decay: float = 0.05
    teacher_batch_size: int = 64
    teacher_warmup_epochs: int = 5
    teacher_schedule: str = "cosine"
    teacher_patience: int = 0          # stop after this many epochs without a better validation accuracy (0: never)
    # students
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seeds: tuple[int, ...] = (0,)
    init: str = "svd"
    loss: str = "kd"
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5              # kd: alpha * KD + (1 - alpha) * CE
    targets: tuple[str, ...] = ("all",)
    student_epochs: int = 20
    student_lr: float = 1e-3
    student_weight_decay: float = 0.01
    student_batch_size: int = 64
    student_warmup_epochs: int = 0
    student_schedule: str = "cosine"
    student_patience: int = 0          # as teacher_patience; student_epochs is then the cap
    # execution
    seed: int = 0                      # data split and teacher
    device: str = "auto"
    amp: bool = False                  # bf16 autocast (CUDA only)
    checkpoint_every: int = 1          # epochs between resumable checkpoints (0: only at the end)
    eval_batch_size: int = 512
    fuse: int = 1                      # students trained in lockstep per group (1: one at a time)
    cache_teacher: bool = False        # kd/logits: keep the teacher's logits per (epoch, sample) on disk
    executor: str = "local"            # local, ray (a Ray cluster or a local Ray), processes (spawned)
    workers: int | None = None         # processes, or CPUs of a local Ray (default: all cores)
    ray_address: str | None = None     # an existing Ray cluster (default: $RAY_ADDRESS, else start one)
    sweep_mode: str = "grid"           # grid: the listed ranks; adaptive: refine crossings and knee
    refine_rounds: int = 4
    # analysis
    band: tuple[float, float] = (0.85, 0.95)
    reference: str | float = "teacher"

    def replace(self, **overrides: Any) -> "StudyConfig":
        """A validated copy with some fields changed."""
        return make_config(dataclasses.asdict(self) | overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(StudyConfig))
TEACHER_FIELDS = ("dataset", "train_subset", "crop_padding", "hflip", "normalization", "validation_fraction",
                  "model", "pretrained", "image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                  "teacher_epochs", "teacher_lr", "teacher_weight_decay", "teacher_batch_size",
                  "teacher_warmup_epochs", "teacher_schedule", "teacher_patience", "seed")
STUDENT_FIELDS = ("init", "loss", "kd_temperature", "kd_alpha", "targets", "student_epochs", "student_lr",
                  "student_weight_decay", "student_batch_size", "student_warmup_epochs", "student_schedule",
                  "student_patience")
STUDY_FIELDS = TEACHER_FIELDS + STUDENT_FIELDS  # what a study's results depend on (with the data's content)


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name}: must be an integer {bound}, got {value!r}")
    return value


def _positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def _int_list(name: str, value: Any, allow_zero: bool = False) -> tuple[int, ...]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"{name}: expected a list of integers, got {value!r}") from None
    if not items:
        raise ValueError(f"{name}: empty; give at least one value")
    out = tuple(_positive_int(name, v, allow_zero) for v in items)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: duplicated values in {list(out)}")
    return tuple(sorted(out))


def _registries() -> dict[str, tuple[str, ...]]:
    """The names each extension point accepts, from the modules that implement them (imported on first use:
    reading back a saved config does not use them, so the analysis side never loads the training side)."""
    from .data import DATASETS
    from .distill import LOSSES
    from .executors import EXECUTORS
    from .factorize import INITS
    from .presets import PRESETS
    from .training import SCHEDULES
    return {"dataset": tuple(DATASETS), "loss": tuple(LOSSES), "executor": tuple(EXECUTORS), "init": tuple(INITS),
            "preset": (*PRESETS, CUSTOM_PRESET), "teacher_schedule": tuple(SCHEDULES),
            "student_schedule": tuple(SCHEDULES), "normalization": NORMALIZATIONS, "device": DEVICES,
            "sweep_mode": SWEEP_MODES}


def _validate_fields(values: dict, registries: bool = True) -> dict:
    """Check each field on its own; returns normalized values (tuples, floats). ``registries``: also check the
    names of the extension points (dataset, loss, init, targets, ...) against their implementations."""
    v = dict(values)
    for name, allowed in _registries().items() if registries else ():
        _choice(name, v[name], allowed)
    if v["workers"] is not None:
        v["workers"] = _positive_int("workers", v["workers"])
    if not isinstance(v["model"], str) or not v["model"]:
        raise ValueError(f"model: expected a model name, got {v['model']!r}")
    for name in ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "teacher_epochs",
                 "teacher_batch_size", "student_epochs", "student_batch_size", "eval_batch_size", "fuse",
                 "refine_rounds"):
        v[name] = _positive_int(name, v[name])
    for name in ("crop_padding", "teacher_warmup_epochs", "student_warmup_epochs", "checkpoint_every", "seed",
                 "teacher_patience", "student_patience"):
        v[name] = _positive_int(name, v[name], allow_zero=True)
    if v["teacher_checkpoint"] is not None and (not isinstance(v["teacher_checkpoint"], str)
                                                or not v["teacher_checkpoint"]):
        raise ValueError(f"teacher_checkpoint: expected the path of a checkpoint file, got {v['teacher_checkpoint']!r}")
    if v["teacher_checkpoint"] is not None:  # absolute: the notebooks run in another folder than the command line
        v["teacher_checkpoint"] = str(Path(v["teacher_checkpoint"]).expanduser().absolute())
    if v["train_subset"] is not None:
        v["train_subset"] = _positive_int("train_subset", v["train_subset"])
    for name in ("teacher_lr", "student_lr", "kd_temperature", "mlp_ratio"):
        v[name] = _positive_float(name, v[name])
    for name in ("teacher_weight_decay", "student_weight_decay"):
        v[name] = _positive_float(name, v[name], allow_zero=True)
    v["kd_alpha"] = _positive_float("kd_alpha", v["kd_alpha"], allow_zero=True)
    v["validation_fraction"] = _positive_float("validation_fraction", v["validation_fraction"], allow_zero=True)
    if v["validation_fraction"] >= 0.5:
        raise ValueError(f"validation_fraction: must lie in [0, 0.5), got {v['validation_fraction']!r}")
    if v["kd_alpha"] > 1:
        raise ValueError(f"kd_alpha: must lie in [0, 1], got {v['kd_alpha']!r}")
    for name in ("download", "hflip", "pretrained", "amp", "cache_teacher"):
        if not isinstance(v[name], bool):
            raise ValueError(f"{name}: must be true or false, got {v[name]!r}")
    v["ranks"] = _int_list("ranks", v["ranks"])
    if len(v["ranks"]) < 2:
        raise ValueError(f"ranks: at least 2 ranks are needed for a curve, got {list(v['ranks'])}")
    v["seeds"] = _int_list("seeds", v["seeds"], allow_zero=True)
    targets = [v["targets"]] if isinstance(v["targets"], str) else list(v["targets"])
    if registries:
        from .factorize import resolve_targets
        resolve_targets(targets)
    v["targets"] = tuple(targets)
    v["band"] = validate_band(v["band"])
    reference = v["reference"]
    if isinstance(reference, str):
        if reference not in REFERENCE_CHOICES:
            raise ValueError(f"reference: {reference!r} is not a number or one of {', '.join(REFERENCE_CHOICES)}")
    else:
        v["reference"] = _positive_float("reference", reference)
    return v


def _validate_combination(config: StudyConfig) -> None:
    """Checks that involve several fields (nothing is loaded or built)."""
    from .distill import LOSSES
    if config.cache_teacher and LOSSES[config.loss].needs_block_outputs:
        raise ValueError(f"cache_teacher: the teacher cache holds logits only; the {config.loss} loss needs block "
                         "outputs (use loss kd or logits, or cache_teacher=False)")
    for role in ("teacher", "student"):
        if getattr(config, f"{role}_patience") == 0:
            if getattr(config, f"{role}_schedule") == "plateau":
                raise ValueError(f"{role}_schedule: 'plateau' cuts the learning rate at validation plateaus; set "
                                 f"{role}_patience > 0 (with validation_fraction > 0), or use 'constant'")
            continue
        if config.validation_fraction == 0:
            raise ValueError(f"{role}_patience: early stopping is judged on a validation split; set "
                             "validation_fraction > 0 (e.g. 0.1) or the patience to 0")
        if getattr(config, f"{role}_schedule") == "cosine":
            raise ValueError(f"{role}_patience: a cosine schedule is tied to {role}_epochs, so stopping early cuts "
                             f"it short; use {role}_schedule='constant' or 'plateau' with early stopping, or the "
                             "patience to 0")
    if config.teacher_checkpoint is not None and config.pretrained:
        raise ValueError("teacher_checkpoint: a teacher loaded from a checkpoint replaces pretrained weights; set "
                         "pretrained=False (or drop teacher_checkpoint)")
    if config.pretrained and config.normalization != "imagenet":
        raise ValueError("normalization: pretrained weights expect 'imagenet' normalization, got "
                         f"{config.normalization!r}")


def check_runnable(config: StudyConfig) -> None:
    """Checks against this machine and the architecture, before any compute: the data source, the device, the
    model (built on the meta device, no weights) and the ranks against its layer widths."""
    from .data import check_source
    from .models import check_model, rank_limit
    classes, channels = check_source(config.dataset, config.data_root, config.download)
    if config.train_subset is not None and classes is not None and config.train_subset < classes:
        raise ValueError(f"train_subset: {config.train_subset} is smaller than the number of classes ({classes}); "
                         "a class-balanced subset needs at least one image per class")
    if config.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    check_model(config, channels)
    if config.teacher_checkpoint is not None:
        from .models import check_teacher_checkpoint
        check_teacher_checkpoint(config, classes, channels)
    limit = rank_limit(config, channels)
    bad = [r for r in config.ranks if r > limit]
    if len(bad) == 1:
        raise ValueError(f"ranks: {bad[0]} exceeds the layer dimension; allowed: 1..{limit} (the smallest "
                         f"targeted layer of {config.model})")
    if bad:
        raise ValueError(f"ranks: {bad} exceed the layer dimension; allowed: 1..{limit} (the smallest targeted "
                         f"layer of {config.model})")


def _from_dict(values: dict, registries: bool) -> StudyConfig:
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(map(repr, unknown))}; known fields: "
                         + ", ".join(FIELD_NAMES))
    merged = {f.name: f.default for f in fields(StudyConfig)} | dict(values)
    return StudyConfig(**_validate_fields(merged, registries))


def make_config(values: dict, check_environment: bool = True) -> StudyConfig:
    """Build a validated :class:`StudyConfig` from a dict; unknown keys are refused by name.

    ``check_environment`` also runs :func:`check_runnable` (data source, device, architecture and ranks).
    """
    config = _from_dict(values, registries=True)
    _validate_combination(config)
    if check_environment:
        check_runnable(config)
    return config


def config_from_json(data: dict) -> StudyConfig:
    """Rebuild a config that effrank validated and saved (:meth:`StudyConfig.to_dict`): lists become tuples
    again and field types are checked; names, combinations, the machine and the data source are not (a
    finished study can be analyzed anywhere, without loading the training side)."""
    return _from_dict(data, registries=False)


def diff(saved: dict, current: dict, names: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """Fields among ``names`` whose saved and current values differ (JSON round-trip aware)."""
    def norm(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return {n: (saved.get(n), current.get(n)) for n in names if norm(saved.get(n)) != norm(current.get(n))}
