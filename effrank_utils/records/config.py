"""The study's configuration: one flat, frozen record, validated field by field (a leaf: it imports nothing from
the implementations; :mod:`effrank_utils.run.preflight` checks the rest before any compute).

Every field declares its *role* where it is declared, and the study identity is derived from the roles: a field
that defines the teacher or the students is part of it, so a new field cannot be forgotten there.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from ..estimate.curves import DEFAULT_BAND, REFERENCE_CHOICES, validate_band

NORMALIZATIONS = ("dataset", "imagenet", "model")
DATA_LOADINGS = ("auto", "memory", "stream")
DEVICES = ("auto", "cpu", "cuda")
SWEEP_MODES = ("grid", "adaptive")
CUSTOM_PRESET = "custom"

#: What a field is for. ``teacher`` and ``student`` fields define the results: they make the study's identity.
ROLES = {
    "teacher": "defines the teacher (and so every student): part of the study identity",
    "student": "defines how each student is made and trained: part of the study identity",
    "input": "where the inputs come from; their content (data fingerprint, checkpoint digest) is identified instead",
    "sweep": "which students are trained (may grow between runs of one study)",
    "execution": "how and where it runs (results are the same up to floating-point order)",
    "analysis": "how the accuracy table is read (band and reference)",
}


def _field(role: str, default: Any, help: str) -> Any:
    """A config field with its role and one line of meaning."""
    return dataclasses.field(default=default, metadata={"role": role, "help": help})


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study. Presets fill it; any field can be overridden by name."""

    preset: str = _field("sweep", "custom", "the preset it started from (names the default run folder)")
    # data
    dataset: str = _field("teacher", "digits", "digits, cifar10, cifar100 or imagefolder")
    data_root: str | None = _field("input", None, "cifar10/cifar100: torchvision root; imagefolder: folder with "
                                                  "train/ and test/ (or val/)")
    download: bool = _field("input", False, "cifar10/cifar100: download the files if missing")
    train_subset: int | None = _field("teacher", None, "a class-balanced subset of the training split")
    test_subset: int | None = _field("teacher", None, "a class-balanced subset of the test split (evaluated after "
                                                      "every epoch: a large test split costs as much as training)")
    crop_padding: int = _field("teacher", 0, "random crop with this zero padding (0: off)")
    hflip: bool = _field("teacher", False, "random horizontal flips")
    normalization: str = _field("teacher", "dataset", "dataset: per-channel statistics of the training split; "
                                                      "imagenet: ImageNet's; model: the model's own data config "
                                                      "(mean, std, interpolation, crop; the default when pretrained)")
    validation_fraction: float = _field("teacher", 0.0, "of the training split, held out to decide early stopping "
                                                        "(0: none)")
    # model
    model: str = _field("teacher", "small_vit", "small_vit, vit_b_32 (torchvision) or any timm model name")
    pretrained: bool = _field("teacher", False, "start the teacher from pretrained weights")
    teacher_checkpoint: str | None = _field("input", None, "a trained teacher's weights (state_dict): loaded, not "
                                                           "trained")
    image_size: int = _field("teacher", 8, "model input size; batches are resized to it when it differs")
    patch_size: int = _field("teacher", 2, "small_vit: patch size in pixels")
    embed_dim: int = _field("teacher", 64, "small_vit: token width")
    depth: int = _field("teacher", 4, "small_vit: transformer blocks")
    num_heads: int = _field("teacher", 4, "small_vit: attention heads")
    mlp_ratio: float = _field("teacher", 4.0, "small_vit: MLP width over token width")
    # teacher
    teacher_epochs: int = _field("teacher", 60, "teacher training epochs (the cap with patience)")
    teacher_lr: float = _field("teacher", 1e-3, "teacher AdamW learning rate")
    teacher_weight_decay: float = _field("teacher", 0.05, "teacher AdamW weight decay")
    teacher_batch_size: int = _field("teacher", 64, "teacher batch size")
    teacher_warmup_epochs: int = _field("teacher", 5, "linear warmup epochs of the teacher")
    teacher_schedule: str = _field("teacher", "cosine", "cosine, constant or plateau")
    teacher_patience: int = _field("teacher", 0, "stop after this many epochs without a better validation "
                                                 "accuracy (0: never)")
    # students
    ranks: tuple[int, ...] = _field("sweep", (1, 2, 4, 8, 16, 32, 64), "the ranks swept")
    seeds: tuple[int, ...] = _field("sweep", (0,), "one student per rank and seed")
    init: str = _field("student", "svd", "svd, random or paper")
    loss: str = _field("student", "kd", "kd, geometric or logits")
    kd_temperature: float = _field("student", 4.0, "kd: softmax temperature")
    kd_alpha: float = _field("student", 0.5, "kd: alpha * KD + (1 - alpha) * CE")
    targets: tuple[str, ...] = _field("student", ("all",), "the linear maps of each block that are factorized")
    student_epochs: int = _field("student", 20, "student training epochs (the cap with patience)")
    student_lr: float = _field("student", 1e-3, "student AdamW learning rate")
    student_weight_decay: float = _field("student", 0.01, "student AdamW weight decay")
    student_batch_size: int = _field("student", 64, "student batch size")
    student_warmup_epochs: int = _field("student", 0, "linear warmup epochs of each student")
    student_schedule: str = _field("student", "cosine", "cosine, constant or plateau")
    student_patience: int = _field("student", 0, "as teacher_patience; student_epochs is then the cap")
    band_stop: float = _field("student", 0.0, "stop a student once its validation accuracy is this far (a fraction "
                                              "of the teacher's) above the band, or below it at a plateau (0: off)")
    # execution
    seed: int = _field("teacher", 0, "data split and teacher")
    device: str = _field("execution", "auto", "auto, cpu or cuda")
    amp: bool = _field("execution", False, "bf16 autocast (CUDA only)")
    checkpoint_every: int = _field("execution", 1, "epochs between resumable checkpoints (0: only at the end)")
    eval_batch_size: int = _field("execution", 512, "evaluation batch size")
    fuse: int = _field("execution", 1, "students trained in lockstep per group (1: one at a time)")
    cache_teacher: bool = _field("execution", False, "kd/logits: keep the teacher's logits per (epoch, sample) on "
                                                     "disk")
    executor: str = _field("execution", "local", "local, ray (a Ray cluster or a local Ray), processes (spawned)")
    workers: int | None = _field("execution", None, "processes, or CPUs of a local Ray (default: all cores)")
    ray_address: str | None = _field("execution", None, "an existing Ray cluster (default: $RAY_ADDRESS, else "
                                                        "start one)")
    sweep_mode: str = _field("sweep", "grid", "grid: the listed ranks; adaptive: refine crossings and knee")
    refine_rounds: int = _field("sweep", 4, "adaptive: rounds of added ranks at most")
    data_loading: str = _field("execution", "auto", "memory: decode every image once and keep them; stream: read "
                                                    "and decode per batch in worker processes (imagefolder); "
                                                    "auto: stream when the decoded images (both splits) would exceed "
                                                    "memory_budget")
    memory_budget: float = _field("execution", 8.0, "auto: GiB the decoded images (both splits) may take in memory")
    data_workers: int | None = _field("execution", None, "stream: decoding processes (0: in the training process; "
                                                         "default: the CPU cores, at most 8)")
    compile: bool = _field("execution", False, "run teacher and students through torch.compile (CUDA; a no-op "
                                               "on the CPU)")
    tensorboard: bool | None = _field("execution", None, "per-epoch curves in <run>/tensorboard/ (default: on when "
                                                         "the tensorboard package is installed)")
    # analysis
    band: tuple[float, float] = _field("analysis", DEFAULT_BAND, "fractions of the reference accuracy")
    reference: str | float = _field("analysis", "teacher", "teacher, best_student or an accuracy")

    def replace(self, **overrides: Any) -> "StudyConfig":
        """A copy with some fields changed, checked field by field (:func:`effrank_utils.run.preflight.preflight`
        checks the rest)."""
        return config_from_dict(dataclasses.asdict(self) | overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_roles(cls: type = StudyConfig) -> dict[str, str]:
    """Each field's role; a field without a known role is refused by name (so the identity cannot miss it)."""
    roles = {f.name: f.metadata.get("role") for f in fields(cls)}
    unknown = [name for name, role in roles.items() if role not in ROLES]
    if unknown:
        raise ValueError(f"{cls.__name__}: field(s) {', '.join(unknown)} declare no role; give each one of "
                         f"{', '.join(ROLES)}")
    return roles


def fields_with_role(role: str, cls: type = StudyConfig) -> tuple[str, ...]:
    """The names of the fields of ``role``, in declaration order."""
    return tuple(name for name, r in field_roles(cls).items() if r == role)


FIELD_NAMES = tuple(f.name for f in fields(StudyConfig))
BOOLEAN_FIELDS = tuple(f.name for f in fields(StudyConfig) if f.type == "bool")
TEACHER_FIELDS = fields_with_role("teacher")
STUDENT_FIELDS = fields_with_role("student")
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


BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _boolean(name: str, value: Any) -> bool:
    """``True``/``False``, or one of :data:`BOOLEAN_WORDS` (any case) as typed on a command line or in a file."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in BOOLEAN_WORDS:
        raise ValueError(f"{name}: must be true or false (or yes/no, 1/0), got {value!r}")
    return BOOLEAN_WORDS[word]


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


FIXED_CHOICES = {"normalization": NORMALIZATIONS, "device": DEVICES, "sweep_mode": SWEEP_MODES,
                 "data_loading": DATA_LOADINGS}


def _validate_fields(values: dict) -> dict:
    """Check each field on its own; returns normalized values (tuples, floats). The names of the extension points
    (dataset, loss, init, targets, ...) are checked against their implementations by the preflight."""
    v = dict(values)
    for name, allowed in FIXED_CHOICES.items():
        _choice(name, v[name], allowed)
    if v["workers"] is not None:
        v["workers"] = _positive_int("workers", v["workers"])
    if v["data_workers"] is not None:
        v["data_workers"] = _positive_int("data_workers", v["data_workers"], allow_zero=True)
    v["memory_budget"] = _positive_float("memory_budget", v["memory_budget"])
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
    for name in ("train_subset", "test_subset"):
        if v[name] is not None:
            v[name] = _positive_int(name, v[name])
    for name in ("teacher_lr", "student_lr", "kd_temperature", "mlp_ratio"):
        v[name] = _positive_float(name, v[name])
    for name in ("teacher_weight_decay", "student_weight_decay"):
        v[name] = _positive_float(name, v[name], allow_zero=True)
    v["kd_alpha"] = _positive_float("kd_alpha", v["kd_alpha"], allow_zero=True)
    v["band_stop"] = _positive_float("band_stop", v["band_stop"], allow_zero=True)
    if v["band_stop"] >= 0.5:
        raise ValueError(f"band_stop: must lie in [0, 0.5) (a fraction of the teacher's accuracy), "
                         f"got {v['band_stop']!r}")
    v["validation_fraction"] = _positive_float("validation_fraction", v["validation_fraction"], allow_zero=True)
    if v["validation_fraction"] >= 0.5:
        raise ValueError(f"validation_fraction: must lie in [0, 0.5), got {v['validation_fraction']!r}")
    if v["kd_alpha"] > 1:
        raise ValueError(f"kd_alpha: must lie in [0, 1], got {v['kd_alpha']!r}")
    for name in BOOLEAN_FIELDS:
        v[name] = _boolean(name, v[name])
    if v["tensorboard"] is not None:
        v["tensorboard"] = _boolean("tensorboard", v["tensorboard"])
    v["ranks"] = _int_list("ranks", v["ranks"])
    if len(v["ranks"]) < 2:
        raise ValueError(f"ranks: at least 2 ranks are needed for a curve, got {list(v['ranks'])}")
    v["seeds"] = _int_list("seeds", v["seeds"], allow_zero=True)
    v["targets"] = (v["targets"],) if isinstance(v["targets"], str) else tuple(v["targets"])
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
    if config.band_stop and (config.validation_fraction == 0 or config.reference != "teacher"):
        raise ValueError("band_stop: judged on the validation split against the teacher; set validation_fraction > 0 "
                         "and reference='teacher', or band_stop=0")
    if config.teacher_checkpoint is not None and config.pretrained:
        raise ValueError("teacher_checkpoint: a teacher loaded from a checkpoint replaces pretrained weights; set "
                         "pretrained=False (or drop teacher_checkpoint)")
    if config.pretrained and config.normalization == "dataset":
        raise ValueError("normalization: pretrained weights expect the statistics they were trained with; use "
                         "'model' (the weights' own data config, the default with pretrained=True) or 'imagenet', "
                         "not 'dataset'")


def config_from_dict(values: dict) -> StudyConfig:
    """A :class:`StudyConfig` from a dict, checked field by field and in combination; unknown names are refused.
    Nothing is loaded or imported: :func:`effrank_utils.run.preflight.make_config` adds the checks against the
    registries, the machine, the data source and the architecture."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(map(repr, unknown))}"
                         + "".join(f"; did you mean {near!r}?" for near in nearest(unknown[0], FIELD_NAMES))
                         + " (effrank fields lists every field)")
    merged = {f.name: f.default for f in fields(StudyConfig)} | dict(values)
    if "normalization" not in values and _boolean("pretrained", merged["pretrained"]):
        merged["normalization"] = "model"  # pretrained weights: their own preprocessing unless told otherwise
    config = StudyConfig(**_validate_fields(merged))
    _validate_combination(config)
    return config


def config_from_json(data: dict) -> StudyConfig:
    """Rebuild a config that effrank validated and saved (:meth:`StudyConfig.to_dict`): lists become tuples
    again and fields are checked; names, the machine and the data source are not (a finished study can be
    analyzed anywhere, without loading the training side)."""
    return config_from_dict(data)


def nearest(name: str, known: Sequence[str]) -> list[str]:
    """The known name closest to a mistyped ``name``, if one is close (at most one)."""
    return difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)


def diff(saved: dict, current: dict, names: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """Fields among ``names`` whose saved and current values differ (JSON round-trip aware)."""
    def norm(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return {n: (saved.get(n), current.get(n)) for n in names if norm(saved.get(n)) != norm(current.get(n))}
