"""The checks a config passes before any compute, beyond its own field checks: the names of the extension points
against their implementations (registries), then this machine, the data source and the architecture (built on
the meta device, no weights). Same messages as the config's own: the field, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from ..estimate.curves import REFERENCE_CHOICES
from ..lowrank.factorize import INITS, TARGET_ALIASES, TARGETS, resolve_targets
from ..records.config import BOOLEAN_FIELDS, CUSTOM_PRESET, FIXED_CHOICES, StudyConfig, config_from_dict
from ..training.data import DATASETS, check_source, dataset_spec
from ..training.distill import LOSSES
from ..training.loop import SCHEDULES
from ..training.models import check_model, check_teacher_checkpoint, rank_limit
from ..training.preprocessing import model_data_config
from .executors import EXECUTORS
from .presets import PRESETS
from .tensorboard import enabled as tensorboard_enabled


def _registries() -> dict[str, tuple[str, ...]]:
    """The names each extension point accepts, from the modules that implement them."""
    return {"dataset": tuple(DATASETS), "loss": tuple(LOSSES), "executor": tuple(EXECUTORS), "init": tuple(INITS),
            "preset": (*PRESETS, CUSTOM_PRESET), "teacher_schedule": tuple(SCHEDULES),
            "student_schedule": tuple(SCHEDULES)}


def check_registries(config: StudyConfig) -> None:
    """Refuse a name no implementation answers to (dataset, loss, init, schedules, executor, preset, targets),
    and settings an implementation cannot honour together."""
    for name, allowed in _registries().items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name}: unknown value {getattr(config, name)!r}; allowed: {', '.join(allowed)}")
    resolve_targets(list(config.targets))
    if config.cache_teacher and LOSSES[config.loss].needs_block_outputs:
        raise ValueError(f"cache_teacher: the teacher cache holds logits only; the {config.loss} loss needs block "
                         "outputs (use loss kd or logits, or cache_teacher=False)")


def check_runnable(config: StudyConfig) -> None:
    """Checks against this machine and the architecture, before any compute: the data source, the device, the
    model (built on the meta device, no weights) and the ranks against its layer widths."""
    classes, channels = check_source(config.dataset, config.data_root, config.download)
    for name in ("train_subset", "test_subset"):
        size = getattr(config, name)
        if size is not None and classes is not None and size < classes:
            raise ValueError(f"{name}: {size} is smaller than the number of classes ({classes}); "
                             "a class-balanced subset needs at least one image per class")
    if config.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    if config.data_loading == "stream" and not dataset_spec(config.dataset).image_files:
        raise ValueError(f"data_loading: 'stream' reads and decodes image files per batch; {config.dataset} is "
                         "not read from image files (use memory or auto, or an image folder)")
    check_model(config, channels)
    if config.normalization == "model":
        model_data_config(config.model, config.image_size)  # the model has one, and it can be read
    tensorboard_enabled(config)  # asked for but not installed: refused now, not after the teacher trained
    if config.teacher_checkpoint is not None:
        check_teacher_checkpoint(config, classes, channels)
    limit = rank_limit(config, channels)
    bad = [r for r in config.ranks if r > limit]
    if len(bad) == 1:
        raise ValueError(f"ranks: {bad[0]} exceeds the layer dimension; allowed: 1..{limit} (the smallest "
                         f"targeted layer of {config.model})")
    if bad:
        raise ValueError(f"ranks: {bad} exceed the layer dimension; allowed: 1..{limit} (the smallest targeted "
                         f"layer of {config.model})")


def preflight(config: StudyConfig, check_environment: bool = True) -> StudyConfig:
    """``config`` once it passed :func:`check_registries` and (``check_environment``) :func:`check_runnable`."""
    check_registries(config)
    if check_environment:
        check_runnable(config)
    return config


def field_table() -> pd.DataFrame:
    """Every config field: name, role, type, default, allowed values and its meaning, from the schema and the
    registries the checks use (what ``effrank fields`` prints)."""
    choices = FIXED_CHOICES | _registries() | {name: ("true", "false") for name in BOOLEAN_FIELDS}
    choices["targets"] = (*TARGETS, *TARGET_ALIASES)
    choices["reference"] = (*REFERENCE_CHOICES, "a number")
    return pd.DataFrame([{"field": f.name, "role": f.metadata["role"], "type": str(f.type),
                          "default": json.dumps(list(f.default) if isinstance(f.default, tuple) else f.default),
                          "allowed": ", ".join(choices.get(f.name, ())), "meaning": f.metadata["help"]}
                         for f in dataclasses.fields(StudyConfig)])


def make_config(values: dict, check_environment: bool = True) -> StudyConfig:
    """A :class:`StudyConfig` from a dict, checked field by field, against the registries and (``check_environment``)
    against this machine, the data source and the architecture; unknown keys are refused by name."""
    return preflight(config_from_dict(values), check_environment)
